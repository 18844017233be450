"""Per-agreement rate limits and daily quotas: exact under concurrency, sliding, per China
Standard Time day, and seeded from the node's records after a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao import problems
from qiao.agreements.document import CST, Agreement
from qiao.db import make_engine, migrate
from qiao.exchange.consumer import ProviderAnswer, provider_refused_over_limit
from qiao.exchange.limits import Limiter, Reservation, retry_after
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


# 2026-12-01 00:00 CST; the calls around it are stamped 5 ms either side.
MIDNIGHT = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
BEFORE, AFTER = MIDNIGHT - timedelta(milliseconds=5), MIDNIGHT + timedelta(milliseconds=5)


def test_interleaved_calls_around_midnight_never_exceed_the_quota() -> None:
    # Calls are stamped on arrival and admitted in the event loop's order, so stamps from
    # both sides of CST midnight interleave. Resetting on every change of day handed out a
    # fresh quota each time the stamps crossed back and forth.
    a = limited(daily_quota=5)
    limiter = Limiter(None, "provider")
    admitted = {BEFORE: 0, AFTER: 0}
    for i in range(40):
        at = (BEFORE, AFTER)[i % 2]
        try:
            limiter.admit(a, at)
            admitted[at] += 1
        except Problem as p:
            assert p.kind is problems.QUOTA_EXHAUSTED
    # One call for the old day, then the new day's five (late stamps among them).
    assert admitted[BEFORE] + admitted[AFTER] == 1 + 5
    assert limiter.used(a.id) == (0, 5)
    # A late-stamped call refused waits for the midnight ending the counted day, not the
    # one 5 ms after its stamp.
    with pytest.raises(Problem) as caught:
        limiter.admit(a, BEFORE)
    assert retry_after(caught.value) == 24 * 3600 + 1  # 24 h and 5 ms, rounded up


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=-5, max_value=5), max_size=60),
    quota=st.integers(min_value=1, max_value=8),
)
def test_calls_in_any_order_around_midnight_never_exceed_the_quota(
    offsets: list[int], quota: int
) -> None:
    a = limited(daily_quota=quota)
    limiter = Limiter(None, "consumer")
    admitted: list[datetime] = []
    for ms in offsets:
        at = MIDNIGHT + timedelta(milliseconds=ms)
        try:
            limiter.admit(a, at)
            admitted.append(at)
        except Problem as p:
            assert p.kind is problems.QUOTA_EXHAUSTED
    # Each call counts against the day of its stamp, or the later day already being
    # counted when it arrived: at most a quota for each of the two days.
    first_new_day = next((i for i, at in enumerate(admitted) if at >= MIDNIGHT), len(admitted))
    assert first_new_day <= quota
    assert len(admitted) - first_new_day <= quota


def test_release_gives_back_a_reservation() -> None:
    a = limited(daily_quota=1, rate_limit={"requests": 1, "per_seconds": 60})
    limiter = Limiter(None, "consumer")
    reservation = limiter.admit(a, NOW)
    assert reservation == Reservation(a.id, NOW, NOW.date())
    limiter.release(reservation)
    assert limiter.used(a.id) == (0, 0)
    limiter.admit(a, NOW)
    assert limiter.admit(limited(), NOW) is None  # no limits: nothing to give back


def test_release_of_a_late_stamped_call_gives_back_to_the_day_it_was_counted_against() -> None:
    a = limited(daily_quota=2)
    limiter = Limiter(None, "consumer")
    limiter.admit(a, AFTER)
    late = limiter.admit(a, BEFORE)  # counted against the new day
    assert late is not None and late.day == AFTER.astimezone(CST).date()
    assert limiter.used(a.id) == (0, 2)
    limiter.release(late)
    assert limiter.used(a.id) == (0, 1)
    # A reservation of a day that is over does not shrink the current day's count.
    old = limiter.admit(limited(id="agr-0002", daily_quota=2), BEFORE)
    assert old is not None
    limiter.admit(limited(id="agr-0002", daily_quota=2), AFTER)
    limiter.release(old)
    assert limiter.used("agr-0002") == (0, 1)


@pytest.mark.parametrize(
    ("problem_type", "request_hash", "release"),
    [
        # The provider node's own refusal: decided before it hashed the request.
        (problems.QUOTA_EXHAUSTED.uri, "", True),
        (problems.RATE_LIMITED.uri, "", True),
        # The same types from the backend, relayed with the provider node's request hash: the
        # provider node admitted and counted the call, so this node's count stands.
        (problems.QUOTA_EXHAUSTED.uri, "ab" * 32, False),
        (problems.RATE_LIMITED.uri, "ab" * 32, False),
        # Anything else the provider answers or refuses is a call it did not refuse as over
        # a limit.
        (problems.PURPOSE_NOT_ALLOWED.uri, "", False),
        ("", "ab" * 32, False),
        ("", "", False),
    ],
)
def test_the_consumer_node_gives_back_only_what_the_provider_node_refused(
    problem_type: str, request_hash: str, release: bool
) -> None:
    # Unit test of the decision: the node pair (tests/exchange/test_agreements.py) would show
    # the same through real processes; here each input is set directly.
    assert provider_refused_over_limit(problem_type, ProviderAnswer(request_hash)) is release


def test_agreements_without_limits_are_not_counted() -> None:
    a = limited()
    limiter = Limiter(None, "provider")
    for _ in range(1000):
        limiter.admit(a, NOW)
    assert limiter.used(a.id) == (0, 0)


def _record(
    agreement_id: str,
    at: datetime,
    role: str = "provider",
    problem: str = "",
    request_hash: str = "",
) -> Record:
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
        request_hash=request_hash,
    )


async def test_a_restart_seeds_the_counts_from_the_records(db_url: str) -> None:
    migrate("node", db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine)
    a = limited(daily_quota=10, rate_limit={"requests": 5, "per_seconds": 60})
    midnight = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)  # 2026-11-30 00:00 CST
    records = [
        # Today (CST), counted: 4 of them, 2 within the last minute. One is the backend's
        # own 429 with a limiter's type, relayed (so hashed): this node admitted that call.
        _record(a.id, midnight + timedelta(minutes=5)),
        _record(
            a.id,
            NOW - timedelta(minutes=30),
            problem=problems.QUOTA_EXHAUSTED.uri,
            request_hash="ab" * 32,
        ),
        _record(a.id, NOW - timedelta(seconds=50)),
        _record(a.id, NOW - timedelta(seconds=10)),
        # Not counted: yesterday in CST (today in UTC), refused by the limiter, the other
        # role's records, another agreement's.
        _record(a.id, midnight - timedelta(seconds=1)),
        _record(a.id, NOW - timedelta(seconds=5), problem=problems.QUOTA_EXHAUSTED.uri),
        _record(a.id, NOW - timedelta(seconds=5), problem=problems.RATE_LIMITED.uri),
        _record(a.id, NOW - timedelta(seconds=5), role="consumer"),
        _record("agr-other", NOW - timedelta(seconds=5)),
        # At the consumer's node every forwarded call is hashed, so there the limiter's
        # type alone means "refused" (here: by the provider node), and is not counted.
        _record(
            a.id,
            NOW - timedelta(seconds=4),
            role="consumer",
            problem=problems.RATE_LIMITED.uri,
            request_hash="cd" * 32,
        ),
    ]
    try:
        await asyncio.gather(*(writer.write(r) for r in records))
        limiter = Limiter(engine, "provider")
        limiter.seed([a], NOW)
        assert limiter.used(a.id) == (2, 4)
        consumer = Limiter(engine, "consumer")
        consumer.seed([a], NOW)
        assert consumer.used(a.id) == (1, 1)
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
