"""Per-agreement rate limits and daily quotas, exact under concurrency and across restarts.

Each node keeps its own limiter (the consumer's node refuses early, the provider's is
authoritative). Check-and-reserve is one synchronous call: on a single asyncio event loop no
other request runs between the check and the reservation, so 64 callers racing for the last
50 calls of a quota get exactly 50. Only admitted calls are counted.

The counts live in memory, but every admitted call is also an exchange record naming its
agreement (qiao.exchange.records). When the node starts, or first sees an agreement, the
limiter seeds today's count and the current window from those records (an indexed query on
(agreement, started_at)), so a restart does not hand out a fresh quota.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import Engine, func, select

from qiao import problems
from qiao.agreements.document import CST, Agreement
from qiao.exchange.models import ExchangeRecord
from qiao.problems import Problem

log = logging.getLogger("qiao.exchange.limits")

# Calls the limiter itself refused are recorded (naming the agreement) but never counted.
NOT_COUNTED = (problems.RATE_LIMITED.uri, problems.QUOTA_EXHAUSTED.uri)


@dataclass
class _Usage:
    window: deque[datetime] = field(default_factory=deque)  # admitted calls, oldest first
    day: date | None = None  # the CST day ``today`` counts
    today: int = 0


def retry_after(problem: Problem) -> int | None:
    """The Retry-After seconds a limiter refusal carries (None for any other problem)."""
    value = problem.extra.get("retry_after")
    return value if isinstance(value, int) else None


class Limiter:
    """Counts the calls of each agreement that has a rate limit or a daily quota."""

    def __init__(self, engine: Engine | None, role: str) -> None:
        self._engine = engine
        self._role = role
        self._usage: dict[str, _Usage] = {}

    def seed(self, agreements: Iterable[Agreement], now: datetime) -> None:
        """Load the counts of agreements not seen before from this node's records."""
        for a in agreements:
            if a.id in self._usage or (a.rate_limit is None and a.daily_quota is None):
                continue
            self._usage[a.id] = self._load(a, now)

    def _load(self, a: Agreement, now: datetime) -> _Usage:
        usage = _Usage(day=now.astimezone(CST).date())
        if self._engine is None:
            return usage
        t = ExchangeRecord.__table__
        counted = (
            (t.c.agreement == a.id)
            & (t.c.role == self._role)
            & t.c.problem_type.not_in(NOT_COUNTED)
        )
        midnight = _midnight(now)
        with self._engine.connect() as conn:
            if a.daily_quota is not None:
                usage.today = int(
                    conn.execute(
                        select(func.count()).where(counted & (t.c.started_at >= midnight))
                    ).scalar_one()
                )
            if a.rate_limit is not None:
                since = now - timedelta(seconds=a.rate_limit.per_seconds)
                rows = conn.execute(
                    select(t.c.started_at)
                    .where(counted & (t.c.started_at > since))
                    .order_by(t.c.started_at)
                )
                usage.window.extend(r[0] for r in rows)
        return usage

    def admit(self, a: Agreement, now: datetime) -> None:
        """Reserve one call under ``a`` at ``now`` or raise the 429 Problem (RATE_LIMITED or
        QUOTA_EXHAUSTED, with ``retry_after`` seconds). Synchronous on purpose: see above."""
        rate, quota = a.rate_limit, a.daily_quota
        if rate is None and quota is None:
            return
        usage = self._usage.get(a.id)
        if usage is None:
            usage = self._usage[a.id] = self._load(a, now)
        window = usage.window
        if rate is not None:
            # A sliding log of the admitted calls: exact, and bounded by ``requests``.
            horizon = now - timedelta(seconds=rate.per_seconds)
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= rate.requests:
                wait = (window[0] - horizon).total_seconds()
                seconds = max(1, math.ceil(wait))
                raise Problem(
                    problems.RATE_LIMITED,
                    f"agreement {a.id} allows {rate.requests} calls per {rate.per_seconds} s; "
                    f"retry after {seconds} s",
                    {"retry_after": seconds, "agreement": a.id},
                )
        if quota is not None:
            day = now.astimezone(CST).date()
            if usage.day != day:
                usage.day, usage.today = day, 0
            if usage.today >= quota:
                # The quota is per day in China Standard Time: it renews at CST midnight.
                seconds = max(1, math.ceil((_next_midnight(now) - now).total_seconds()))
                raise Problem(
                    problems.QUOTA_EXHAUSTED,
                    f"agreement {a.id} allows {quota} calls a day (China Standard Time); "
                    f"retry after {seconds} s, at the next midnight",
                    {"retry_after": seconds, "agreement": a.id},
                )
            usage.today += 1
        if rate is not None:
            window.append(now)

    def release(self, a: Agreement, now: datetime) -> None:
        """Give back a call reserved at ``now`` that the other node refused as over its
        limit (the consumer's node then does not count what the provider did not admit)."""
        usage = self._usage.get(a.id)
        if usage is None:
            return
        if a.daily_quota is not None and usage.day == now.astimezone(CST).date():
            usage.today = max(0, usage.today - 1)
        if a.rate_limit is not None:
            with contextlib.suppress(ValueError):  # already slid out of the window
                usage.window.remove(now)

    def used(self, agreement_id: str) -> tuple[int, int]:
        """(calls in the current window, calls today) as counted now — for health and tests."""
        usage = self._usage.get(agreement_id)
        return (len(usage.window), usage.today) if usage else (0, 0)


def _midnight(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(CST).date(), time(0), CST)


def _next_midnight(now: datetime) -> datetime:
    return _midnight(now) + timedelta(days=1)
