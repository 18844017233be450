"""A bounded soak (issue 9, part 5): mixed traffic through a city on loopback for 30 s (short
profile) or 10 minutes (full), sampled every few seconds. What must stay bounded once warm:

- memory: each process's resident set grows by no more than a stated slope (MiB/min);
- file descriptors: no more open at the end than after warm-up, give or take a few pooled
  connections;
- the event broker's storage: retention (docs/events.md#retention) keeps the hub's event log to
  what the last retention period published, however long the run;
- exchange records and ledger entries grow with traffic by design (every exchange is on record
  at both nodes and in the ledger, docs/exchange-protocol.md#exchange-records): their bytes per
  exchange are measured and bounded instead;
- latency: the last window's p50 and p99 are not worse than the first window's by more than a
  stated factor.

The samples go to ``test-artifacts/reliability/soak-<profile>.csv``.
"""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from dataclasses import dataclass, field

from reliability.conftest_soak import (
    EVENT_RETENTION_SECONDS,
    EVENT_TRIM_SECONDS,
    NODES,
    SoakCity,
    soak_city,
)
from reliability.figures import ARTIFACTS, PROFILE, record
from reliability.loadgen import EXCHANGES, Traffic, summary, window_latency

__all__ = ["soak_city"]

DURATION = PROFILE.pick(30.0, 600.0)
WARM_UP = PROFILE.pick(8.0, 60.0)  # caches, pools, SQLite's page cache fill up first
SAMPLE_EVERY = PROFILE.pick(2.0, 10.0)
WINDOW = PROFILE.pick(6.0, 60.0)  # latency windows: the first after warm-up, the last

# Memory: a Python process's heap settles in steps (arenas, caches, SQLite's page cache of
# 2 MiB per connection), so a short run cannot tell a step from a leak: the short profile bounds
# the growth after warm-up; the full one the slope over the last half of ten minutes, which at
# 2 MiB/min would be under 3 GiB a day, the bound we can defend for a process restarted daily
# at worst — anything leaking per request at ~40 requests/s grows much faster than that.
RSS_GROWTH_MIB = 48.0  # short profile: after warm-up, per process
RSS_SLOPE_MIB_PER_MIN = 2.0  # full profile: last half, per process
FD_SLACK = 12  # pooled keep-alive connections and a stream or two may be open at any sample
LATENCY_P50_FACTOR, LATENCY_P50_FLOOR = 3.0, 0.050  # seconds
LATENCY_P99_FACTOR, LATENCY_P99_FLOOR = 4.0, 0.250
# Bytes an exchange adds to the consumer's and the provider's databases together (two records
# of ~30 columns and their indexes, never a payload): a payload recorded by mistake or an index
# that grows per request would pass this.
NODE_BYTES_PER_EXCHANGE = 4096


# Pages in use (not on the free list) times the page size: the data the database holds, what
# the file grows to once the WAL is checkpointed; deleted rows' pages are reused.
STORED = (
    "SELECT (p.page_count - f.freelist_count) * s.page_size"
    " FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
)


@dataclass
class Sample:
    t: float
    rss: dict[str, int]
    fds: dict[str, int]
    db: dict[str, int]
    wal: dict[str, int]
    stored: dict[str, int]  # bytes in use in the database's pages (WAL content included)
    event_log_rows: int
    records: dict[str, int]


@dataclass
class Sampler:
    city: SoakCity
    every: float
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def take(self, t0: float) -> Sample:
        rss, fds = {}, {}
        for name in ("hub", *NODES):
            rss[name], fds[name] = self.city.resources(name)
        return Sample(
            t=time.monotonic() - t0,
            rss=rss,
            fds=fds,
            db={n: self.city.database_bytes(n) for n in ("hub", *NODES)},
            wal={n: self.city.wal_bytes(n) for n in ("hub", *NODES)},
            stored={n: self.city.count(n, STORED) for n in ("hub", *NODES)},
            event_log_rows=self.city.count("hub", "SELECT count(*) FROM event_log"),
            records={n: self.city.count(n, "SELECT count(*) FROM exchange_records") for n in NODES},
        )

    def run(self, t0: float) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self.samples.append(self.take(t0))
                self.stop.wait(max(0.0, self.every - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def _write_csv(samples: list[Sample], windows: list[tuple[float, float, float, int]]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    names = ("hub", *NODES)
    path = ARTIFACTS / f"soak-{PROFILE.name}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["seconds"]
            + [f"{n}_rss_mib" for n in names]
            + [f"{n}_fds" for n in names]
            + [f"{n}_db_bytes" for n in names]
            + [f"{n}_wal_bytes" for n in names]
            + [f"{n}_stored_bytes" for n in names]
            + ["event_log_rows"]
            + [f"{n}_records" for n in NODES]
            + ["exchanges_in_window", "p50_ms", "p99_ms"]
        )
        for s in samples:
            p50, p99, n = next(
                ((a, b, c) for (start, a, b, c) in windows if start <= s.t < start + WINDOW),
                (0.0, 0.0, 0),
            )
            w.writerow(
                [round(s.t, 1)]
                + [round(s.rss[n] / 2**20, 1) for n in names]
                + [s.fds[n] for n in names]
                + [s.db[n] for n in names]
                + [s.wal[n] for n in names]
                + [s.stored[n] for n in names]
                + [s.event_log_rows]
                + [s.records[n] for n in NODES]
                + [n, round(p50 * 1000, 1), round(p99 * 1000, 1)]
            )


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if sxx == 0 else 60 * sum((x - mx) * (y - my) for x, y in points) / sxx


def test_a_bounded_soak_of_mixed_traffic(soak_city: SoakCity) -> None:
    city = soak_city
    city.healthy()
    sampler = Sampler(city, SAMPLE_EVERY)
    traffic = Traffic(city)
    t0 = time.monotonic()
    thread = threading.Thread(target=sampler.run, args=(t0,), daemon=True)
    thread.start()
    try:
        results = asyncio.run(traffic.run(DURATION))
    finally:
        sampler.stop.set()
        thread.join(30)
    assert sampler.error is None, f"sampling failed: {sampler.error!r}"
    samples = sampler.samples
    assert len(samples) >= 5, f"only {len(samples)} samples"
    end = max(s.t for s in samples)

    # Latency windows over the whole run, on the exchanges (relative times).
    windows: list[tuple[float, float, float, int]] = []
    start = 0.0
    while start < DURATION:
        p50, p99, n = window_latency(results, t0 + start, t0 + start + WINDOW)
        windows.append((start, p50, p99, n))
        start += WINDOW
    _write_csv(samples, windows)

    # --- errors ----------------------------------------------------------------------------
    kinds = summary(results)
    requests = len(results)
    errors = [r for r in results if not r.ok]
    record("soak", "duration", round(end, 1), "s", note=f"{PROFILE.name} profile")
    record("soak", "city start-up (hub and 4 nodes)", round(city.started_in, 1), "s")
    record(
        "soak",
        "requests",
        requests,
        note=", ".join(f"{k} {v['requests']}" for k, v in kinds.items()),
    )
    record("soak", "errors", len(errors), target="0", ok=not errors)
    record("soak", "events published / received", f"{traffic.published} / {traffic.received}")
    record("soak", "event streams opened", traffic.sse_opened)

    # --- memory and descriptors, after warm-up ----------------------------------------------
    warm = [s for s in samples if s.t >= WARM_UP]
    assert len(warm) >= 3, "the soak ended before it warmed up"
    first, last = warm[0], warm[-1]
    memory_ok: dict[str, bool] = {}
    for name in ("hub", *NODES):
        growth = (last.rss[name] - first.rss[name]) / 2**20
        if PROFILE.full:
            half = [s for s in warm if s.t >= (WARM_UP + end) / 2]
            slope = _slope([(s.t, s.rss[name] / 2**20) for s in half])
            memory_ok[name] = slope <= RSS_SLOPE_MIB_PER_MIN
            record(
                "soak",
                f"RSS slope, last half: {name}",
                round(slope, 2),
                "MiB/min",
                target=f"<= {RSS_SLOPE_MIB_PER_MIN}",
                ok=memory_ok[name],
                note=f"grew {growth:.1f} MiB after warm-up, to {last.rss[name] / 2**20:.0f} MiB",
            )
        else:
            memory_ok[name] = growth <= RSS_GROWTH_MIB
            record(
                "soak",
                f"RSS growth after warm-up: {name}",
                round(growth, 1),
                "MiB",
                target=f"<= {RSS_GROWTH_MIB:.0f}",
                ok=memory_ok[name],
                note=f"{first.rss[name] / 2**20:.0f} -> {last.rss[name] / 2**20:.0f} MiB",
            )
    fds_ok = {n: last.fds[n] <= first.fds[n] + FD_SLACK for n in ("hub", *NODES)}
    record(
        "soak",
        "open fds after warm-up -> end",
        ", ".join(f"{n} {first.fds[n]}->{last.fds[n]}" for n in ("hub", *NODES)),
        target=f"end <= start + {FD_SLACK}",
        ok=all(fds_ok.values()),
    )

    # --- storage -------------------------------------------------------------------------------
    # Retention keeps the event log to what the last period published (plus one trim interval
    # and a batch in flight); the rate is what this run published per second.
    rate = traffic.published / DURATION
    bound = (
        int(1.5 * rate * (EVENT_RETENTION_SECONDS + EVENT_TRIM_SECONDS)) + 2 * traffic.publish_batch
    )
    held = max(
        s.event_log_rows for s in samples if s.t >= EVENT_RETENTION_SECONDS + 2 * EVENT_TRIM_SECONDS
    )
    retention_ok = held <= bound and last.event_log_rows < traffic.published
    record(
        "soak",
        "event log rows held (most, once retention runs)",
        held,
        target=f"<= {bound} ({EVENT_RETENTION_SECONDS:.0f} s retention)",
        ok=retention_ok,
        note=f"{traffic.published} published in all",
    )
    exchanges = sum(v["requests"] for k, v in kinds.items() if k in EXCHANGES)
    s0, s1 = samples[0], samples[-1]
    added = {n: s1.records[n] - s0.records[n] for n in NODES}
    node_bytes = sum(s1.stored[n] - s0.stored[n] for n in NODES)
    per_exchange = node_bytes / max(1, exchanges)
    hub_per_exchange = (s1.stored["hub"] - s0.stored["hub"]) / max(1, exchanges)
    record(
        "soak",
        "database bytes start -> end",
        ", ".join(f"{n} {s0.db[n] // 1024}->{s1.db[n] // 1024} KiB" for n in ("hub", *NODES)),
        note="SQLite files with their -wal on disk",
    )
    record(
        "soak",
        "node database bytes per exchange (both nodes)",
        round(per_exchange),
        "B",
        target=f"<= {NODE_BYTES_PER_EXCHANGE}",
        ok=per_exchange <= NODE_BYTES_PER_EXCHANGE,
        note="exchange records grow with traffic by design; "
        f"records added {sum(added.values())} for {exchanges} exchanges",
    )
    record(
        "soak",
        "hub database bytes per exchange",
        round(hub_per_exchange),
        "B",
        note="ledger entries (two per exchange) and checkpoints, by design; events are trimmed",
    )
    record("soak", "largest -wal", max(max(s.wal.values()) for s in samples) // 1024, "KiB")

    # --- latency ---------------------------------------------------------------------------
    measured = [w for w in windows if w[0] >= WARM_UP and w[3] >= 10]
    assert len(measured) >= 2, f"too few latency windows: {windows}"
    (_, p50_a, p99_a, _), (_, p50_b, p99_b, _) = measured[0], measured[-1]
    p50_ok = p50_b <= LATENCY_P50_FACTOR * p50_a + LATENCY_P50_FLOOR
    p99_ok = p99_b <= LATENCY_P99_FACTOR * p99_a + LATENCY_P99_FLOOR
    record(
        "soak",
        "exchange p50 first -> last window",
        f"{p50_a * 1000:.0f} -> {p50_b * 1000:.0f}",
        "ms",
        target=f"last <= {LATENCY_P50_FACTOR:g} x first + {LATENCY_P50_FLOOR * 1000:.0f} ms",
        ok=p50_ok,
    )
    record(
        "soak",
        "exchange p99 first -> last window",
        f"{p99_a * 1000:.0f} -> {p99_b * 1000:.0f}",
        "ms",
        target=f"last <= {LATENCY_P99_FACTOR:g} x first + {LATENCY_P99_FLOOR * 1000:.0f} ms",
        ok=p99_ok,
    )

    # --- the verdict ----------------------------------------------------------------------------
    assert not errors, f"{len(errors)} errors, e.g. {errors[:5]}"
    assert all(memory_ok.values()), f"memory grew: {memory_ok}"
    assert all(fds_ok.values()), (
        f"descriptors grew: {[(n, first.fds[n], last.fds[n]) for n in fds_ok]}"
    )
    assert retention_ok, (
        f"event log held {held} rows (bound {bound}), {traffic.published} published"
    )
    assert per_exchange <= NODE_BYTES_PER_EXCHANGE, f"{per_exchange:.0f} B per exchange"
    assert p50_ok and p99_ok, f"latency drifted: {windows}"
    # Traffic of every kind really ran.
    for kind in (*EXCHANGES, "publish", "pull", "sse", "console", "hub-api", "ledger", "receipt"):
        assert kinds.get(kind, {}).get("requests", 0) > 0, f"no {kind} traffic: {kinds}"
    assert traffic.received > 0
