"""Per-agreement rate limits and daily quotas: exact under concurrency, sliding, per China
Standard Time day, and seeded from the node's records after a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qiao import problems
from qiao.agreements.document import Agreement
from qiao.db import make_engine, migrate
from qiao.exchange.limits import Limiter, retry_after
from qiao.exchange.records import Record, RecordWriter
from qiao.problems import Problem
from tests.agreements.test_policy import agreement

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # Monday 10:00 CST


def limited(**change: Any) -> Agreement:
    return agreement(**change)


def test_64_concurrent_callers_against_a_quota_of_50_get_exactly_50() -> None:
    a = limited(daily_quota=50)
    limiter = Limiter(None, "provider")
    outcomes: list[int] = []

    async def caller() -> None:
        await asyncio.sleep(0)  # interleave: all 64 are in flight together
        try:
            limiter.admit(a, NOW)
            outcomes.append(200)
        except Problem as p:
            assert p.kind is problems.QUOTA_EXHAUSTED
            outcomes.append(p.status)

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(64)))

    asyncio.run(main())
    assert outcomes.count(200) == 50 and outcomes.count(429) == 14
    assert limiter.used(a.id) == (0, 50)  # refused calls are not counted


def test_sliding_window() -> None:
    a = limited(rate_limit={"requests": 3, "per_seconds": 10})
    limiter = Limiter(None, "consumer")
    for s in (0, 1, 2):
        limiter.admit(a, NOW + timedelta(seconds=s))
    with pytest.raises(Problem) as caught:
        limiter.admit(a, NOW + timedelta(seconds=3))
    assert caught.value.kind is problems.RATE_LIMITED
    assert retry_after(caught.value) == 7  # the call at +0 leaves the window at +10
    assert limiter.used(a.id) == (3, 0)
    # Not a fixed window: at +10 one slot is free, the next only at +11.
    limiter.admit(a, NOW + timedelta(seconds=10))
    with pytest.raises(Problem) as caught:
        limiter.admit(a, NOW + timedelta(seconds=10.5))
    assert retry_after(caught.value) == 1
    limiter.admit(a, NOW + timedelta(seconds=11))


def test_daily_quota_renews_at_midnight_china_standard_time() -> None:
    a = limited(daily_quota=2)
    limiter = Limiter(None, "provider")
    late = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # 23:00 CST
    limiter.admit(a, late)
    limiter.admit(a, late)
    with pytest.raises(Problem) as caught:
        limiter.admit(a, late)
    assert caught.value.kind is problems.QUOTA_EXHAUSTED
    assert retry_after(caught.value) == 3600
    assert caught.value.extra["retry_after"] == 3600  # in the body as well
    # 16:00 UTC is the next day in CST, though still the same day in UTC.
    limiter.admit(a, late + timedelta(hours=1))


def test_release_gives_back_a_reservation() -> None:
    a = limited(daily_quota=1, rate_limit={"requests": 1, "per_seconds": 60})
    limiter = Limiter(None, "consumer")
    limiter.admit(a, NOW)
    limiter.release(a, NOW)
    assert limiter.used(a.id) == (0, 0)
    limiter.admit(a, NOW)


def test_agreements_without_limits_are_not_counted() -> None:
    a = limited()
    limiter = Limiter(None, "provider")
    for _ in range(1000):
        limiter.admit(a, NOW)
    assert limiter.used(a.id) == (0, 0)


def _record(agreement_id: str, at: datetime, role: str = "provider", problem: str = "") -> Record:
    return Record(
        exchange_id="x",
        role=role,
        client="test/91110000802100433B/inspector",
        provider_org="91350100M000100Y43",
        resource="vehicle-violations",
        method="GET",
        path="/r1/x",
        started_at=at,
        status=429 if problem else 200,
        problem_type=problem,
        agreement=agreement_id,
    )


async def test_a_restart_seeds_the_counts_from_the_records(db_url: str) -> None:
    migrate("node", db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine)
    a = limited(daily_quota=10, rate_limit={"requests": 5, "per_seconds": 60})
    midnight = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)  # 2026-11-30 00:00 CST
    records = [
        # Today (CST), counted: 4 of them, 2 within the last minute.
        _record(a.id, midnight + timedelta(minutes=5)),
        _record(a.id, NOW - timedelta(minutes=30)),
        _record(a.id, NOW - timedelta(seconds=50)),
        _record(a.id, NOW - timedelta(seconds=10)),
        # Not counted: yesterday in CST (today in UTC), refused by the limiter, the other
        # role's records, another agreement's.
        _record(a.id, midnight - timedelta(seconds=1)),
        _record(a.id, NOW - timedelta(seconds=5), problem=problems.QUOTA_EXHAUSTED.uri),
        _record(a.id, NOW - timedelta(seconds=5), problem=problems.RATE_LIMITED.uri),
        _record(a.id, NOW - timedelta(seconds=5), role="consumer"),
        _record("agr-other", NOW - timedelta(seconds=5)),
    ]
    try:
        await asyncio.gather(*(writer.write(r) for r in records))
        limiter = Limiter(engine, "provider")
        limiter.seed([a], NOW)
        assert limiter.used(a.id) == (2, 4)
        # 3 more fit the window of 5.
        for _ in range(3):
            limiter.admit(a, NOW)
        with pytest.raises(Problem) as caught:
            limiter.admit(a, NOW)
        assert caught.value.kind is problems.RATE_LIMITED
        assert retry_after(caught.value) == 10  # the call at -50 s leaves at +10 s
        # The quota: 7 used; 3 left, across windows.
        later = NOW + timedelta(minutes=5)
        for _ in range(3):
            limiter.admit(a, later)
        with pytest.raises(Problem) as caught:
            limiter.admit(a, later)
        assert caught.value.kind is problems.QUOTA_EXHAUSTED
        # A second seed does not count twice.
        limiter.seed([a], later)
        assert limiter.used(a.id)[1] == 10
        # An agreement first seen when used is loaded then (same answer as seeding).
        fresh = Limiter(engine, "provider")
        fresh.admit(a, NOW)
        assert fresh.used(a.id) == (3, 5)
    finally:
        writer.close()
        engine.dispose()
