"""The dashboard's figures and charts (docs/console.md, "Dashboard").

Exchanges per hour (last 24 hours) and per day (last 14 days) by department, the error rate
and latency p50/p99 per hour, events per stream, one's pending requests with their
deadlines, the ledger's size and last cosigned checkpoint with each witness's state, and
alerts. The charts are SVG drawn here on the server (no script: the console's CSP allows
none) with colours from console.css classes; each has a visually hidden table for screen
readers (WCAG 2.2 §1.1.1, text alternatives).

Every figure comes from a time-windowed query on an index (qiao/ledger/exchanges.py):
the last 24 hours are read once from the covering time index and bucketed here; each of
the 14 days is one grouped count over an index range. A page stays fast with a million
exchanges recorded; the figures are kept for ``CACHE_SECONDS`` per scope so that a room of
people reloading the page asks the database once a minute.
"""

from __future__ import annotations

import math
import threading
import time as monotonic
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qiao.agreements.document import CST
from qiao.events.models import EventLogEntry
from qiao.ledger.exchanges import exchange_counts, exchange_window

HOURS = 24
DAYS = 14
CACHE_SECONDS = 60.0
# Departments drawn in their own colour; the rest are summed as "other".
MAX_SERIES = 6
OTHER = "other"
# The SVG's drawing area, in its own units (it scales to the page's width).
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 200, 44, 24, 8


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    series: int  # the colour class: s0 … s6
    title: str  # the bar's tooltip (an SVG <title>, read by screen readers too)


@dataclass(frozen=True)
class BarChart:
    """A stacked bar chart, drawn and tabulated: ``rows`` (label, value per series) is the
    fallback table, ``rects`` the bars, ``ticks`` the y-axis labels."""

    labels: list[str]
    series: list[str]
    rows: list[tuple[str, list[float]]]
    rects: list[Rect]
    ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]
    total: float
    width: int = WIDTH
    height: int = HEIGHT


@dataclass(frozen=True)
class LineChart:
    labels: list[str]
    series: list[str]
    rows: list[tuple[str, list[float | None]]]
    lines: list[tuple[int, str]]  # (series, SVG polyline points)
    ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^n at least ``value`` (an axis that reads easily)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def _ticks(top: float) -> list[tuple[float, str]]:
    plot = HEIGHT - BOTTOM - TOP
    return [(TOP + plot - plot * f, _fmt(top * f)) for f in (0.0, 0.5, 1.0)]


def _x_labels(labels: Sequence[str], every: int) -> list[tuple[float, str]]:
    step = (WIDTH - LEFT) / max(1, len(labels))
    return [(LEFT + step * i + step / 2, lab) for i, lab in enumerate(labels) if i % every == 0]


def bar_chart(
    labels: Sequence[str], series: Sequence[str], values: Sequence[Sequence[float]], every: int = 1
) -> BarChart:
    """Stacked bars: ``values[i][s]`` is series ``s`` at label ``i``."""
    totals = [sum(v) for v in values]
    top = _nice_max(max(totals, default=0))
    plot = HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(1, len(labels))
    rects: list[Rect] = []
    for i, (label, vals) in enumerate(zip(labels, values, strict=True)):
        y: float = TOP + plot
        for s, val in enumerate(vals):
            if val <= 0:
                continue
            h = plot * val / top
            y -= h
            name = series[s]
            rects.append(
                Rect(
                    LEFT + step * i + 1, y, max(1.0, step - 2), h, s, f"{label} {name}: {_fmt(val)}"
                )
            )
    return BarChart(
        list(labels),
        list(series),
        [(lab, list(v)) for lab, v in zip(labels, values, strict=True)],
        rects,
        _ticks(top),
        _x_labels(labels, every),
        float(sum(totals)),
    )


def line_chart(
    labels: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float | None]],
    every: int = 1,
) -> LineChart:
    """Lines, one per series; a missing value (None) breaks nothing, it is just skipped."""
    top = _nice_max(max((v for row in values for v in row if v is not None), default=0))
    plot = HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(1, len(labels))
    lines = []
    for s in range(len(series)):
        points = [
            f"{LEFT + step * i + step / 2:.1f},{TOP + plot - plot * value / top:.1f}"
            for i, row in enumerate(values)
            if (value := row[s]) is not None
        ]
        lines.append((s, " ".join(points)))
    return LineChart(
        list(labels),
        list(series),
        [(lab, list(v)) for lab, v in zip(labels, values, strict=True)],
        lines,
        _ticks(top),
        _x_labels(labels, every),
    )


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class ExchangeFigures:
    hourly: BarChart
    daily: BarChart
    errors: BarChart
    latency: LineChart
    total_24h: int
    error_rate: float | None
    p50: float | None
    p99: float | None
    made_at: datetime


def _series(counts: dict[str | None, int], names: dict[str, str]) -> list[str]:
    """The departments with the most exchanges, each its own series; "other" for the rest."""
    ranked = sorted((c for c in counts if c), key=lambda c: -counts[c])
    keep = ranked[:MAX_SERIES]
    return keep + ([OTHER] if len(ranked) > MAX_SERIES or None in counts else [])


def exchange_figures(
    sessions: sessionmaker[Session],
    org: str | None,
    names: dict[str, str],
    now: datetime,
) -> ExchangeFigures:
    """The exchange charts for ``org``'s records (None: every department's)."""
    hour0 = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    local_today = now.astimezone(CST).replace(hour=0, minute=0, second=0, microsecond=0)
    day0 = local_today - timedelta(days=DAYS - 1)
    with sessions() as s:
        window = exchange_window(s, hour0, now + timedelta(seconds=1), org)
        per_day = [
            exchange_counts(
                s,
                (day0 + timedelta(days=d)).astimezone(UTC),
                (day0 + timedelta(days=d + 1)).astimezone(UTC),
                org,
            )
            for d in range(DAYS)
        ]
    totals: dict[str | None, int] = {}
    for counts in per_day:
        for k, n in counts.items():
            totals[k] = totals.get(k, 0) + n
    series = _series(totals, names)
    index = {code: i for i, code in enumerate(series)}

    def slot(code: str | None) -> int:
        return index.get(code or OTHER, index.get(OTHER, 0))

    hours = [hour0 + timedelta(hours=h) for h in range(HOURS)]
    hourly = [[0.0] * max(1, len(series)) for _ in hours]
    errors = [[0.0, 0.0] for _ in hours]  # ok, failed
    durations: list[list[float]] = [[] for _ in hours]
    everything: list[float] = []
    for started, code, status, duration in window:
        if started is None:
            continue
        h = int((started - hour0).total_seconds() // 3600)
        if not 0 <= h < HOURS:
            continue
        if series:
            hourly[h][slot(code)] += 1
        # An exchange that did not answer 2xx/3xx counts as an error, refusals included:
        # the rate says how often a call did not get its data.
        failed = status is None or status >= 400
        errors[h][1 if failed else 0] += 1
        if duration is not None:
            durations[h].append(duration)
            everything.append(duration)
    daily = [[0.0] * max(1, len(series)) for _ in range(DAYS)]
    for d, counts in enumerate(per_day):
        for code, n in counts.items():
            if series:
                daily[d][slot(code)] += n
    labels_h = [h.astimezone(CST).strftime("%H:00") for h in hours]
    labels_d = [(day0 + timedelta(days=d)).strftime("%m-%d") for d in range(DAYS)]
    shown = [names.get(c, c) for c in series] or ["-"]
    latency = []
    for ds in durations:
        ds.sort()
        latency.append([percentile(ds, 50), percentile(ds, 99)])
    everything.sort()
    total = len(window)
    failed_total = sum(e[1] for e in errors)
    return ExchangeFigures(
        hourly=bar_chart(labels_h, shown, hourly, every=3),
        daily=bar_chart(labels_d, shown, daily, every=2),
        errors=bar_chart(labels_h, ["ok", "failed"], errors, every=3),
        latency=line_chart(labels_h, ["p50", "p99"], latency, every=3),
        total_24h=total,
        error_rate=(failed_total / total) if total else None,
        p50=percentile(everything, 50),
        p99=percentile(everything, 99),
        made_at=now,
    )


def events_per_stream(
    sessions: sessionmaker[Session],
    now: datetime,
    limit: int = 12,
    max_streams: int = 200,
    org: str | None = None,
) -> BarChart:
    """Events the hub's embedded broker stored in the last 24 hours, per stream (each
    subscriber's copy counted: the deliveries). Empty with the NATS broker, whose streams
    are not in the hub's database. With ``org``, only that organization's own streams
    ("{org}/{code}"): another department's traffic is not its business.

    The streams are found by seeking the (stream, published_at) index from one stream to
    the next, and each is counted over its last 24 hours on the same index: index seeks and
    ranges only, never a scan of the whole log."""
    since = now - timedelta(hours=HOURS)
    t = EventLogEntry
    counts: list[tuple[str, int]] = []
    # "{org}/" up to "{org}0": '0' follows '/' in ASCII, so the range is the org's streams.
    low, high = (f"{org}/", f"{org}0") if org else ("", None)
    with sessions() as s:
        stream = s.scalar(select(func.min(t.stream)).where(t.stream >= low))
        while stream is not None and len(counts) < max_streams:
            if high is not None and stream >= high:
                break
            n = s.scalar(select(func.count()).where(t.stream == stream, t.published_at >= since))
            if n:
                counts.append((stream, int(n)))
            stream = s.scalar(select(func.min(t.stream)).where(t.stream > stream))
    counts.sort(key=lambda c: -c[1])
    top = counts[:limit]
    return bar_chart([c[0] for c in top], ["events"], [[float(c[1])] for c in top])


@dataclass
class FigureCache:
    """Figures per scope, kept ``CACHE_SECONDS``."""

    entries: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        now = monotonic.monotonic()
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        value = make()
        with self.lock:
            self.entries[key] = (now, value)
        return value
