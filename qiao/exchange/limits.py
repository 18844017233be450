"""Per-agreement rate limits and daily quotas, exact under concurrency and across restarts.

Each node keeps its own limiter (the consumer's node refuses early, the provider's is
authoritative). Check-and-reserve is one synchronous call: on a single asyncio event loop no
other request runs between the check and the reservation, so 64 callers racing for the last
50 calls of a quota get exactly 50. Only admitted calls are counted.

The counts live in memory, but every admitted call is also an exchange record naming its
agreement (qiao.exchange.records). When the node starts, or first sees an agreement, the
limiter seeds today's count and the current window from those records (an indexed query on
(agreement, started_at)), so a restart does not hand out a fresh quota.

The counts are per node, not per organization: an organization that runs several provider
nodes for a resource (docs/agreements.md, "Enforcement at both nodes") hands out up to N times
an agreement's rate limit and daily quota, one full allowance per node, because each node
counts only the calls it admitted. Exact counting across nodes needs a shared counter, which
the design leaves out (a node must decide without another node or the hub being up).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import ColumnElement, Engine, func, select

from qiao import problems
from qiao.agreements.document import CST, Agreement
from qiao.exchange.models import ExchangeRecord
from qiao.problems import Problem

log = logging.getLogger("qiao.exchange.limits")

# Calls the limiter itself refused are recorded (naming the agreement) but never counted.
NOT_COUNTED = (problems.RATE_LIMITED.uri, problems.QUOTA_EXHAUSTED.uri)


@dataclass(frozen=True)
class Reservation:
    """One call admitted under an agreement, as counted: what ``Limiter.release`` gives back."""

    agreement: str
    at: datetime  # its place in the rate limit's window
    day: date | None  # the CST day whose quota it was counted against; None: no quota


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
        not_refused: ColumnElement[bool] = t.c.problem_type.not_in(NOT_COUNTED)
        if self._role == "provider":
            # A backend may answer 429 with a limiter's problem type itself; this node had
            # admitted (and counted) that call. Its own refusals come before it hashes the
            # request, so they alone have no request hash (qiao.exchange.provider). At the
            # consumer's node every forwarded call has one, so there the type decides.
            not_refused = not_refused | (t.c.request_hash != "")
        counted = (t.c.agreement == a.id) & (t.c.role == self._role) & not_refused
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

    def admit(self, a: Agreement, now: datetime) -> Reservation | None:
        """Reserve one call under ``a`` at ``now`` or raise the 429 Problem (RATE_LIMITED or
        QUOTA_EXHAUSTED, with ``retry_after`` seconds). Synchronous on purpose: see above.
        Returns what was counted (None when ``a`` has no limits)."""
        rate, quota = a.rate_limit, a.daily_quota
        if rate is None and quota is None:
            return None
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
        counted: date | None = None
        if quota is not None:
            day = now.astimezone(CST).date()
            # The count moves only forward. Calls are stamped when they arrive and admitted
            # in whatever order the event loop runs them, so around CST midnight a call
            # stamped 23:59:59.995 can follow one stamped 00:00:00.005: resetting then for
            # the earlier day (and again for the later one) would hand out a fresh quota each
            # time. A call stamped before the counted day counts against that day instead.
            if usage.day is None or day > usage.day:
                usage.day, usage.today = day, 0
            if usage.today >= quota:
                # The quota is per day in China Standard Time: it renews at CST midnight
                # (the one ending the counted day, also for a call stamped the day before).
                renews = datetime.combine(usage.day + timedelta(days=1), time(0), CST)
                seconds = max(1, math.ceil((renews - now).total_seconds()))
                raise Problem(
                    problems.QUOTA_EXHAUSTED,
                    f"agreement {a.id} allows {quota} calls a day (China Standard Time); "
                    f"retry after {seconds} s, at the next midnight",
                    {"retry_after": seconds, "agreement": a.id},
                )
            usage.today += 1
            counted = usage.day
        if rate is not None:
            window.append(now)
        return Reservation(a.id, now, counted)

    def release(self, reservation: Reservation) -> None:
        """Give back a call the other node refused as over its limit (the consumer's node
        then does not count what the provider did not admit)."""
        usage = self._usage.get(reservation.agreement)
        if usage is None:
            return
        # A reservation of a day already over was counted against that day's quota, which
        # no longer matters; the current day's count must not shrink for it.
        if reservation.day is not None and usage.day == reservation.day:
            usage.today = max(0, usage.today - 1)
        with contextlib.suppress(ValueError):  # already slid out of the window (or none)
            usage.window.remove(reservation.at)

    def used(self, agreement_id: str) -> tuple[int, int]:
        """(calls in the current window, calls today) as counted now — for health and tests."""
        usage = self._usage.get(agreement_id)
        return (len(usage.window), usage.today) if usage else (0, 0)


def _midnight(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(CST).date(), time(0), CST)
