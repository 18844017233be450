"""The agreement document's own rules (qiao/agreements/document.py) that no workflow test
reaches: values a client may send that the model must refuse, not trip over."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qiao.agreements.document import TimeWindow


@pytest.mark.parametrize(
    "window",
    [
        {"start": "08:00:00+08:00"},
        {"end": "18:00:00Z"},
        {"start": "08:00:00+08:00", "end": "18:00:00+08:00"},
        {"start": "08:00:00+08:00", "end": "06:00:00"},
    ],
)
def test_window_times_with_an_offset_are_refused(window: dict[str, str]) -> None:
    # Found by reliability/test_fuzz_hub.py: an offset-aware start beside the naive default
    # end made the order check raise TypeError (a 500 at the hub); two aware times would
    # have passed and then failed every call at the node, whose clock time has no offset.
    with pytest.raises(ValidationError, match="without an offset"):
        TimeWindow.model_validate(window)


def test_window_times_without_an_offset_are_china_standard_time() -> None:
    w = TimeWindow.model_validate({"days": [1, 2], "start": "08:00", "end": "18:00:30"})
    assert w.start.isoformat() == "08:00:00" and w.end.isoformat() == "18:00:30"
    with pytest.raises(ValidationError, match="ends after it starts"):
        TimeWindow.model_validate({"start": "18:00", "end": "08:00"})
