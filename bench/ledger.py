"""Benchmark of the hub's ledger: appending, beside the raw cost of hashing the same entries,
and proof generation from the stored tiles.

Appends ``--entries`` generated ~300-byte canonical JSON entries (RFC 8785, shaped like
exchange entries) in batches of ``--batch`` to a fresh SQLite database and, with
``--postgres URL``, to a fresh database on that PostgreSQL server (created and dropped
here). The baseline is the same RFC 9162 leaf hashes computed in one tight loop, in the same
run. Then it times inclusion and consistency proofs at random indices and sizes, and a full
``verify()``. With ``--size N`` it also builds (or reuses, with ``--size-db``) a SQLite log of
N entries and times proofs there. Prints one JSON document.

    .venv/bin/python bench/ledger.py [--entries 200000] [--batch 2000]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
        [--size 10000000 [--size-db big.db] [--size-verify]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.canonical import canonical_json
from qiao.db import make_engine, migrate, normalize_url
from qiao.ledger import merkle, note
from qiao.ledger.store import LedgerStore

ORIGIN = "bench.qiao.example/ledger"
_RESOURCES = ("vehicle-violations", "enterprise-credit", "bicycle-stations", "epidemic-daily")


def make_entry(i: int) -> bytes:
    """An exchange entry as the hub appends it (docs/ledger.md), about 300 bytes once the
    hashes are in; deterministic, so runs compare."""
    digest = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    return canonical_json(
        {
            "type": "exchange",
            "instance": "CN-DEMO",
            "node": f"node-{i % 5}",
            "record_id": i,
            "exchange_id": str(uuid.UUID(digest[:32])),
            "role": "provider" if i % 2 else "consumer",
            "resource": _RESOURCES[i % 4],
            "status": 200,
            "started_at": f"2026-11-29T03:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
            "duration_ms": round((i % 997) / 7, 3),
            "request_hash": digest,
        }
    )


def batches(start: int, end: int, size: int) -> Iterator[list[tuple[str, bytes]]]:
    for first in range(start, end, size):
        yield [(f"bench:{i}", make_entry(i)) for i in range(first, min(end, first + size))]


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    return {
        "p50_us": round(statistics.median(samples) / 1000, 1),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000, 1),
    }


def timed(calls: list[Callable[[], object]]) -> dict[str, float]:
    samples = []
    for call in calls:
        t0 = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t0)
    return percentiles(samples)


def proof_timings(store: LedgerStore, size: int, count: int, seed: int = 1) -> dict[str, Any]:
    """Proofs against the whole log and against random older sizes, each one checked once
    (outside the timing) so the benchmark cannot be fooled by wrong answers."""
    rng = random.Random(seed)
    root = store.root(size)
    check = rng.randrange(size)
    merkle.verify_inclusion(
        check,
        size,
        merkle.leaf_hash(store.entry(check)),
        store.inclusion_proof(check, size),
        root,
    )
    if size > 1:
        old = rng.randrange(1, size)
        merkle.verify_consistency(
            old, size, store.consistency_proof(old, size), store.root(old), root
        )
    inclusion = [rng.randrange(size) for _ in range(count)]
    sizes = [rng.randrange(1, size + 1) for _ in range(count)]
    olds = [rng.randrange(1, size + 1) for _ in range(count)]
    return {
        "tree_size": size,
        "samples": count,
        "inclusion_at_tree_size": timed(
            [lambda i=i: store.inclusion_proof(i, size) for i in inclusion]
        ),
        "inclusion_at_random_size": timed(
            [
                lambda i=i, n=n: store.inclusion_proof(i % n, n)
                for i, n in zip(inclusion, sizes, strict=True)
            ]
        ),
        "consistency_to_tree_size": timed(
            [lambda o=o: store.consistency_proof(o, size) for o in olds]
        ),
        "root_at_random_size": timed([lambda n=n: store.root(n) for n in sizes]),
    }


def raw_hash_rate(entries: list[bytes]) -> float:
    t0 = time.perf_counter()
    sha256 = hashlib.sha256
    for e in entries:
        sha256(b"\x00" + e).digest()
    return len(entries) / (time.perf_counter() - t0)


def run_backend(url: str, entries: int, batch: int, proofs: int, raw_rate: float) -> dict[str, Any]:
    migrate("hub", url)
    engine = make_engine(url)
    store = LedgerStore(engine, note.Signer.generate(ORIGIN), ORIGIN)
    work = list(batches(0, entries, batch))  # generated before the clock starts
    t0 = time.perf_counter()
    for b in work:
        store.append(b)
    seconds = time.perf_counter() - t0
    rate = entries / seconds
    # A resubmission of the last batch: answered from the source keys, nothing appended.
    t1 = time.perf_counter()
    store.append(work[-1])
    resubmit_ms = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    store.sign_checkpoint()
    sign_ms = (time.perf_counter() - t2) * 1000
    t3 = time.perf_counter()
    findings = store.verify()
    verify_s = time.perf_counter() - t3
    result = {
        "entries": entries,
        "batch": batch,
        "append_seconds": round(seconds, 3),
        "entries_per_s": round(rate),
        "ratio_to_raw_hashing": round(rate / raw_rate, 4),
        "resubmitted_batch_ms": round(resubmit_ms, 2),
        "sign_checkpoint_ms": round(sign_ms, 2),
        "verify_seconds": round(verify_s, 2),
        "verify_entries_per_s": round(entries / verify_s),
        "verify_findings": len(findings),
        "proofs": proof_timings(store, entries, proofs),
    }
    engine.dispose()
    return result


def big_log(path: Path, size: int, batch: int, proofs: int, verify: bool) -> dict[str, Any]:
    """Grow (or reuse) a SQLite log at ``path`` to ``size`` entries, then time proofs."""
    url = f"sqlite:///{path}"
    migrate("hub", url)
    engine = make_engine(url)
    store = LedgerStore(engine, note.Signer.generate(ORIGIN), ORIGIN)
    have = store.size()
    seconds = 0.0  # appending only: generating the entries is not the store's cost
    for i, b in enumerate(batches(have, size, batch)):
        t0 = time.perf_counter()
        store.append(b)
        seconds += time.perf_counter() - t0
        if i % 500 == 0:
            print(f"… {store.size():,} entries", file=sys.stderr, flush=True)
    grown = size - have
    result: dict[str, Any] = {
        "database": str(path),
        "database_bytes": path.stat().st_size,
        "appended_now": max(0, grown),
        "appended_from_size": have,
        "append_entries_per_s": round(grown / seconds) if grown > 0 else None,
    }
    result["proofs"] = proof_timings(store, min(size, store.size()), proofs)
    if verify:
        t0 = time.perf_counter()
        findings = store.verify()
        result["verify_seconds"] = round(time.perf_counter() - t0, 1)
        result["verify_findings"] = len(findings)
    # Peak resident memory of this process over the whole run (Linux: KiB).
    result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    engine.dispose()
    return result


def fresh_postgres(url: str) -> tuple[str, Callable[[], None]]:
    """A new database on the server at ``url``, and how to drop it."""
    import psycopg

    admin = normalize_url(url).replace("+psycopg", "")
    name = f"qiao_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{normalize_url(url).rsplit('/', 1)[0]}/{name}", drop


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--proofs", type=int, default=2_000, help="proof samples per kind")
    ap.add_argument("--postgres", metavar="URL", help="also run on this PostgreSQL server")
    ap.add_argument("--size", type=int, help="also time proofs on a SQLite log this large")
    ap.add_argument("--size-db", type=Path, help="where that log lives (kept, and reused)")
    ap.add_argument("--size-verify", action="store_true", help="also verify() that log")
    args = ap.parse_args()

    raw = [make_entry(i) for i in range(args.entries)]
    raw_rate = max(raw_hash_rate(raw) for _ in range(3))
    result: dict[str, Any] = {
        "benchmark": "ledger append and proofs",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "entry_bytes_mean": round(sum(map(len, raw)) / len(raw)),
        "raw_leaf_hashes_per_s": round(raw_rate),
    }
    del raw
    with tempfile.TemporaryDirectory(prefix="qiao-bench-ledger-") as tmp:
        result["sqlite"] = run_backend(
            f"sqlite:///{Path(tmp) / 'hub.db'}", args.entries, args.batch, args.proofs, raw_rate
        )
    print(json.dumps(result["sqlite"]), file=sys.stderr, flush=True)
    if args.postgres:
        url, drop = fresh_postgres(args.postgres)
        try:
            result["postgresql"] = run_backend(url, args.entries, args.batch, args.proofs, raw_rate)
        finally:
            drop()
    if args.size:
        if args.size_db:
            result["large"] = big_log(
                args.size_db, args.size, args.batch, args.proofs, args.size_verify
            )
        else:
            with tempfile.TemporaryDirectory(prefix="qiao-bench-ledger-") as tmp:
                result["large"] = big_log(
                    Path(tmp) / "big.db", args.size, args.batch, args.proofs, args.size_verify
                )
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
