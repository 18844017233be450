"""Benchmark of masking (issue 4, part 4): the provider node's per-record cost.

A vehicle-violation record of 12 fields goes through an agreement's projection (11 of them)
and 3 masking rules (plate, address, mobile), compiled once as the node does. The baseline is
what the node does to every record anyway: orjson loads and dumps of the same record.
Target: ``apply`` under 20 µs per record (the issue's budget is 50 µs for policy and masking).

Prints one JSON document.

    .venv/bin/python bench/masking.py [--records 200000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.agreements.document import Masking, MaskRule
from qiao.agreements.masking import compile_masking

TARGET_US = 20.0

RECORD: dict[str, Any] = {
    "plate": "闽A12345",
    "plate_type": "02",
    "code": "1625",
    "description": "驾驶机动车违反道路交通信号灯通行",
    "occurred_at": "2026-11-20T08:31:00+08:00",
    "at": "福建省桥城市鼓楼区闽江路与五四路交叉口",
    "division": "350102",
    "fine": 200,
    "points": 6,
    "handled": False,
    "driver_mobile": "13800138000",
    "internal_note": "backend-only field, outside the projection",
}
FIELDS = tuple(k for k in RECORD if k != "internal_note")
MASKING = {
    "plate": Masking(rule=MaskRule.PLATE),
    "at": Masking(rule=MaskRule.ADDRESS),
    "driver_mobile": Masking(rule=MaskRule.MOBILE),
}


def per_record_us(fn: Callable[[], Any], records: int, repeats: int = 5) -> float:
    """The median over ``repeats`` runs of the mean time of ``fn`` in microseconds."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(records):
            fn()
        runs.append((time.perf_counter() - start) / records * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile here")
    args = parser.parse_args()

    masker = compile_masking(FIELDS, MASKING, b"\x01" * 32)
    raw = orjson.dumps(RECORD)
    masked = masker.apply(RECORD)
    assert "internal_note" not in masked and masked["plate"] == "闽A****5", masked

    apply_us = per_record_us(lambda: masker.apply(RECORD), args.records)
    json_us = per_record_us(lambda: orjson.dumps(orjson.loads(raw)), args.records)
    document = {"total": 20, "violations": [RECORD] * 20}
    document_us = (
        per_record_us(
            lambda: masker.apply_document(document, "/violations"), max(args.records // 20, 1)
        )
        / 20
    )
    if args.profile:
        from pyinstrument import Profiler

        args.profile.mkdir(parents=True, exist_ok=True)
        with Profiler(interval=0.0001) as profiler:
            for _ in range(args.records):
                masker.apply(RECORD)
        (args.profile / "masking.html").write_text(profiler.output_html())

    print(
        json.dumps(
            {
                "benchmark": "masking",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "records": args.records,
                "fields": len(RECORD),
                "projected": len(FIELDS),
                "masked": len(MASKING),
                "apply_us_per_record": round(apply_us, 3),
                "apply_document_us_per_record": round(document_us, 3),
                "orjson_loads_dumps_us_per_record": round(json_us, 3),
                "apply_to_orjson_ratio": round(apply_us / json_us, 2),
                "target_us": TARGET_US,
                "within_target": apply_us < TARGET_US,
                "masked_record": masked,
            },
            ensure_ascii=False,
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
