"""The hub's cosigning rounds (qiao.ledger.cosigning): only a cosignature by the witness's
registered key counts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from qiao.ledger import merkle, note
from qiao.ledger.cosigning import Cosigning, WitnessStatus

ORIGIN = "hub.qiao.example/ledger"


def _ask(answering: note.Cosigner, registered: note.Cosigner) -> tuple[str, WitnessStatus]:
    log = note.Signer.generate(ORIGIN)
    signed = note.sign_note(note.Checkpoint(ORIGIN, 1, merkle.leaf_hash(b"e")).format(), [log])

    def witness(request: httpx.Request) -> httpx.Response:
        text = signed.decode()
        body = text[: text.rfind("\n\n") + 1].encode()
        return httpx.Response(200, text=answering.cosign(body, 1_700_000_000))

    status = WitnessStatus(registered.name, "http://witness.invalid")
    cosigning = Cosigning(sessions=None, store=None)  # type: ignore[arg-type]
    with httpx.Client(transport=httpx.MockTransport(witness)) as client:
        line = cosigning._ask(client, status, signed, 1, registered.verifier())
    return line, status


def test_a_cosignature_by_the_registered_key_counts() -> None:
    w = note.Cosigner.generate("witness.transport")
    line, status = _ask(w, w)
    assert line.startswith("— witness.transport ") and status.size == 1 and not status.last_error


@pytest.mark.parametrize("other", ["witness.transport", "someone.else"])
def test_a_cosignature_by_another_key_is_refused(other: Any) -> None:
    # A witness whose key was replaced on disk, or anything answering at its URL, must not
    # make a checkpoint look cosigned (reliability/test_tamper.py).
    registered = note.Cosigner.generate("witness.transport")
    line, status = _ask(note.Cosigner.generate(other), registered)
    assert line == "" and status.size == 0
    assert "does not verify with its registered key" in status.last_error


def _timed_witnesses(
    monkeypatch: pytest.MonkeyPatch, delays: dict[str, float], answers: dict[str, str]
) -> Any:
    """A round's asks, where witness ``name`` answers ``answers[name]`` after ``delays[name]``."""
    import time

    def ask(
        self: Cosigning, client: Any, w: WitnessStatus, signed: bytes, size: int, v: Any
    ) -> str:
        time.sleep(delays[w.name])
        return answers[w.name]

    monkeypatch.setattr(Cosigning, "_ask", ask)
    cosigning = Cosigning(sessions=None, store=None)  # type: ignore[arg-type]
    asks = [(WitnessStatus(n, "http://w.invalid"), None) for n in delays]

    def run(needed: int) -> tuple[list[str], float]:
        t0 = time.monotonic()
        lines = cosigning._ask_all(None, asks, b"", 1, needed)  # type: ignore[arg-type]
        return lines, time.monotonic() - t0

    return run


def test_witnesses_are_asked_at_once_and_their_lines_keep_the_registered_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first registered answers last: the note still lists the cosignatures in order.
    run = _timed_witnesses(
        monkeypatch, {"a": 0.6, "b": 0.1, "c": 0.3}, {"a": "— a\n", "b": "— b\n", "c": "— c\n"}
    )
    lines, took = run(needed=3)
    assert lines == ["— a\n", "— b\n", "— c\n"]
    assert took < 1.0  # the slowest one's time, not the sum (1.0 s)


def test_a_silent_witness_costs_a_quorum_only_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    from qiao.ledger.cosigning import QUORUM_GRACE_SECONDS

    run = _timed_witnesses(
        monkeypatch, {"a": 0.05, "b": 3.0, "c": 0.05}, {"a": "— a\n", "b": "— b\n", "c": "— c\n"}
    )
    lines, took = run(needed=2)
    assert lines == ["— a\n", "— c\n"]
    assert took < QUORUM_GRACE_SECONDS + 1.5  # not the silent witness's 3 s
    # Without a quorum, every witness is waited for (each ask is bounded by its own timeout).
    run = _timed_witnesses(
        monkeypatch, {"a": 0.05, "b": 1.2, "c": 0.05}, {"a": "— a\n", "b": "— b\n", "c": ""}
    )
    lines, took = run(needed=3)
    assert lines == ["— a\n", "— b\n"] and took >= 1.2
