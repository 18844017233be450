"""Benchmark of validation at the boundary (issue 3, part 3).

1. Records per second validating the vehicle-violation record with the node's compiled
   validator (jsonschema-rs, Qiao's validators as format checkers), side by side with the
   ``jsonschema`` reference validator (Draft202012Validator, the same format checkers).
2. What validation costs on the exchange path: a consumer node and a provider node in one
   process (mutual TLS between them, records committed to SQLite), the same backend answer
   relayed through a resource with the catalog's schema and through one without, and the cost
   of the check alone per answer.

Prints one JSON document.

    .venv/bin/python bench/validation.py [--records 20000] [--requests 3000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.catalog import schema as s
from qiao.catalog.validators import PLATE_PROVINCES
from tests.catalog.violations import VALID_RECORD, violation_catalog
from tests.exchange.test_validation import node_pair

TARGET_RECORDS_PER_S = 50_000
PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def catalog() -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    """The demo city's vehicle-violation resource (Qiao's standards plus the city's catalog)
    if they are there, else the same resource as the tests describe it."""
    try:
        from qiao.catalog.standards import standard_catalog
        from qiao.demo.catalog import demo_catalog
        from qiao.demo.city import org_codes

        std, city = standard_catalog(), demo_catalog(org_codes())
        spec = next(r for r in city.resources if r.code == "vehicle-violations")
        elements = {e.identifier: e for e in (*std.data_elements, *city.data_elements)}
        lists = {c.identifier: c for c in (*std.code_lists, *city.code_lists)}
        return spec, elements, lists, "qiao.demo.catalog"
    except (ImportError, AttributeError, StopIteration):
        spec, elements, lists = violation_catalog()
        return spec, elements, lists, "tests/catalog/violations.py"


def demo_records(n: int, source: str) -> list[dict[str, Any]]:
    """Records as the department's backend sends them: the demo city's violations when the
    demo catalog describes the resource, else generated ones for the tests' description."""
    if source != "qiao.demo.catalog":
        return sample_records(n)
    from dataclasses import asdict

    from qiao.demo.people import build_city

    rows = [orjson.loads(orjson.dumps(asdict(v))) for v in build_city().violations]
    return [dict(rows[i % len(rows)]) for i in range(n)]


def sample_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Valid, varied records (different plates, codes, times), so no cache flatters a run."""
    rnd = random.Random(seed)
    provinces = sorted(PLATE_PROVINCES)
    out = []
    for i in range(n):
        r = dict(VALID_RECORD)
        r["plate"] = rnd.choice(provinces) + "A" + "".join(rnd.choices(PLATE_CHARS, k=5))
        r["code"] = rnd.choice(["1625", "1352", "1039"])
        r["occurred_at"] = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:31:00+08:00"
        r["fine"] = rnd.choice([None, 50, 200])
        out.append(r)
    return out


def _rfc3339(value: object) -> bool:
    # jsonschema checks date-time only with rfc3339-validator installed; give it an equal check.
    if not isinstance(value, str):
        return True
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return value[10:11] in ("T", "t") and parsed.tzinfo is not None


def reference_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    checker = jsonschema.FormatChecker()
    for name, fn in s.format_checkers().items():
        checker.checks(name)(fn)
    if "date-time" not in checker.checkers:
        checker.checks("date-time")(_rfc3339)
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def rate(fn: Any, items: list[Any], min_seconds: float = 1.0) -> float:
    """Items per second, repeating the pass until it has run for ``min_seconds``."""
    done, t0 = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def records_per_second(schemas: dict[str, Any], n: int, source: str) -> dict[str, Any]:
    record_schema = {"$schema": s.DIALECT, **schemas["response"]["$defs"]["record"]}
    records = demo_records(n, source)
    compiled = s.compile_schema(record_schema)
    reference = reference_validator(record_schema)
    assert all(compiled.is_valid(r) for r in records)
    assert all(reference.is_valid(r) for r in records)
    # The reference validator is some two orders slower: give it a tenth of the records.
    few = records[: max(200, n // 10)]
    rs_valid = rate(compiled.is_valid, records)
    rs_errors = rate(compiled.errors, records)
    ref_valid = rate(reference.is_valid, few)
    # A whole answer of 100 records at records_at, as the provider node checks it, from bytes.
    response = s.compile_schema(schemas["response"])
    bodies = [
        orjson.dumps({"total": 100, "violations": records[i : i + 100]})
        for i in range(0, n - 99, 100)
    ]
    assert all(response.check_json(b) == [] for b in bodies)
    per_body = rate(response.check_json, bodies)
    corrupted = [{**r, "plate": "京I" + r["plate"][2:]} for r in records[:1000]]
    assert all(not compiled.is_valid(r) for r in corrupted)
    return {
        "records": n,
        "jsonschema_rs_records_per_s": round(rs_valid),
        "jsonschema_rs_with_error_report_records_per_s": round(rs_errors),
        "jsonschema_reference_records_per_s": round(ref_valid),
        "speedup_vs_reference": round(rs_valid / ref_valid, 1),
        "provider_check_100_record_answer_records_per_s": round(per_body * 100),
        "provider_check_100_record_answer_us": round(1e6 / per_body, 1),
        "invalid_records_with_error_report_per_s": round(rate(compiled.errors, corrupted)),
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "meets_target": rs_valid >= TARGET_RECORDS_PER_S,
    }


def backend(body: bytes) -> web.Application:
    async def answer(_r: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


async def exchange_path(
    requests: int, concurrency: int, records: int, rounds: int = 5
) -> dict[str, Any]:
    body = orjson.dumps({"total": records, "violations": sample_records(records)})
    out: dict[str, Any] = {
        "resource": "vehicle-violations as tests/catalog/violations.py describes it",
        "records_per_answer": records,
        "answer_bytes": len(body),
    }
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'provider.db'}"
        async with node_pair(Path(tmp), db, backend(body)) as pair:

            async def run(resource: str, n: int = requests) -> dict[str, Any]:
                latencies: list[float] = []
                queue = iter(range(n))

                async def worker() -> None:
                    for _ in queue:
                        t0 = time.perf_counter()
                        status, _, got = await pair.call(resource, "violations")
                        latencies.append(time.perf_counter() - t0)
                        assert status == 200 and got == body, (status, got[:200])

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.perf_counter() - t0
                latencies.sort()
                return {
                    "exchanges_per_s": round(n / elapsed, 1),
                    "p50_ms": round(statistics.median(latencies) * 1000, 3),
                    "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
                }

            for resource in ("plain", "vehicle-violations"):  # warm up both paths
                await run(resource, min(200, requests))
            # Alternate the two, several rounds, and take each one's median round: the
            # machine may be shared, and a single pair of runs is noisy.
            offs, ons = [], []
            for _ in range(rounds):
                offs.append(await run("plain"))
                ons.append(await run("vehicle-violations"))
    best_off = sorted(offs, key=lambda r: r["exchanges_per_s"])[len(offs) // 2]
    best_on = sorted(ons, key=lambda r: r["exchanges_per_s"])[len(ons) // 2]
    spec, elements, lists = violation_catalog()
    response = s.compile_schema(s.derive_schemas(spec, elements, lists)["response"])
    check = rate(response.check_json, [body])
    out.update(
        {
            "requests_per_run": requests,
            "concurrency": concurrency,
            "validation_off": best_off,
            "validation_on": best_on,
            "throughput_ratio_on_vs_off": round(
                best_on["exchanges_per_s"] / best_off["exchanges_per_s"], 3
            ),
            "p50_ratio_on_vs_off": round(best_on["p50_ms"] / best_off["p50_ms"], 3),
            "check_alone_us_per_answer": round(1e6 / check, 1),
            # The check's share of the CPU time one exchange takes through both nodes (all
            # in this one process, so this is per exchange of the pair, not per node).
            "check_share_of_exchange": round(best_off["exchanges_per_s"] / check, 3),
        }
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--answer-records", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", type=Path, help="write a pyinstrument profile of part 1 here")
    args = ap.parse_args()
    spec, elements, lists, source = catalog()
    schemas = s.derive_schemas(spec, elements, lists)
    validation = records_per_second(schemas, args.records, source)
    if args.profile:  # a separate pass: the profiler's own cost must not skew the numbers
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        records_per_second(schemas, min(args.records, 5000), source)
        profiler.stop()
        args.profile.mkdir(parents=True, exist_ok=True)
        (args.profile / "validation.html").write_text(profiler.output_html())
        (args.profile / "validation.txt").write_text(profiler.output_text(show_all=True))
    path = asyncio.run(
        exchange_path(args.requests, args.concurrency, args.answer_records, args.rounds)
    )
    print(
        json.dumps(
            {
                "benchmark": "validation",
                "catalog": source,
                "machine": {
                    "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine(),
                },
                "record_validation": validation,
                "exchange_path": path,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
