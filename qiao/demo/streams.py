"""The demo city's event streams: what is published while it runs, who receives it, and how
``qiao demo --check`` judges what arrived.

Two feeds (issue 7):

- public security publishes **traffic accidents** to its node every ~2 s — a new accident, or
  an update of an earlier one (casualties found later, the severity with them): the same
  ``accident_id``, so the order of one accident's updates matters. Transport receives them by
  webhook, the first party's plate and citizen ID masked by the agreement.
- transport publishes **bicycle station status** to its node every ~5 s (a few busy stations
  at a time, updates per ``station_id``); the Donghu district office receives it by webhook.

Everything is fictional and drawn from a seeded ``random.Random``. Each event carries an
``event_id`` (unique per run), so publishing it again is harmless: the broker keeps one copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp

from qiao.demo.people import (
    ACCIDENT_TYPES,
    CST,
    DISTRICTS,
    ROADS,
    SEED,
    DemoCity,
    generate_stations,
)

if TYPE_CHECKING:
    from qiao.demo.city import Deployment

log = logging.getLogger("qiao.demo.streams")

ACCIDENT_SECONDS = 2.0
STATION_SECONDS = 5.0
KEEP = 10_000  # published events remembered for the check


@dataclass(frozen=True)
class Feed:
    """One stream and the webhook that takes it to the subscriber's demo backend."""

    name: str  # the webhook's name on the subscriber's node
    provider: str  # department keys (qiao.demo.city.DEPARTMENTS)
    subscriber: str
    stream: str  # the provider's resource code
    publisher_app: str  # the provider's app that publishes
    app: str  # the subscriber's app the events are delivered for (its agreement decides)
    purpose: str
    path: str  # where the subscriber's demo backend receives them
    key: str  # the stream's partition key field


ACCIDENTS = Feed(
    "traffic-accidents",
    "police",
    "transport",
    "traffic-accidents",
    "police-app",
    "traffic-enforcement",
    "traffic-management",
    "/events/traffic-accidents",
    "accident_id",
)
STATIONS = Feed(
    "bike-stations",
    "transport",
    "district",
    "bike-stations",
    "traffic-enforcement",
    "bike-dispatch",
    "bike-dispatch",
    "/events/bike-stations",
    "station_id",
)
FEEDS: tuple[Feed, ...] = (ACCIDENTS, STATIONS)


def webhook_settings(feed: Feed, provider_org: str, backend_url: str) -> dict[str, Any]:
    """The subscriber node's ``[[webhooks]]`` table for ``feed`` (qiao.config.WebhookSettings);
    the secret file keeps its default name, ``webhook-{name}.secret``."""
    return {
        "name": feed.name,
        "provider": provider_org,
        "stream": feed.stream,
        "app": feed.app,
        "url": backend_url + feed.path,
        "purpose": feed.purpose,
        # The demo's backends answer at once; a short backoff keeps a hiccup short.
        "backoff_base_seconds": 0.5,
        "backoff_max_seconds": 5.0,
    }


# --- what is published --------------------------------------------------------------------
class AccidentReports:
    """Accidents as the police's 接处警 system reports them: a new one, or an update of one
    still open (three updates at most, then it is closed)."""

    def __init__(self, city: DemoCity, run: str, seed: int = SEED) -> None:
        self._rng = random.Random(seed + 11)
        self._city = city
        self._run = run
        self._open: dict[str, dict[str, Any]] = {}
        self._updates: dict[str, int] = {}
        self._count = 0

    def next(self, now: datetime) -> dict[str, Any]:
        rng = self._rng
        if self._open and rng.random() < 0.5:
            accident_id = rng.choice(sorted(self._open))
            record = dict(self._open[accident_id])
            # Casualties found later raise the count, and the severity follows them (the
            # catalog's QIAO-ACCIDENT-SEVERITY: 3 fatal, 2 injury, 1 property damage only).
            record["injuries"] = int(record["injuries"]) + rng.choice((0, 1, 1, 2))
            if rng.random() < 0.05:
                record["deaths"] = int(record["deaths"]) + 1
            record["severity"] = _severity(record)
            record["vehicles"] = max(int(record["vehicles"]), rng.choice((1, 2, 2, 3)))
            n = self._updates[accident_id] = self._updates[accident_id] + 1
            if n >= 3:
                del self._open[accident_id]
            else:
                self._open[accident_id] = record
        else:
            self._count += 1
            when = now.astimezone(CST) - timedelta(minutes=rng.randint(1, 20))
            district = rng.choice(DISTRICTS)
            a, b = rng.sample(ROADS, k=2)
            vehicle = rng.choice(self._city.vehicles)
            driver = rng.choice(self._city.people)
            accident_id = f"4403{when:%Y%m%d}{90000 + self._count:05d}"
            record = {
                "accident_id": accident_id,
                "occurred_at": when.isoformat(timespec="seconds"),
                "district": district,
                "location": f"桥城市{district}{a}与{b}交叉口",
                "accident_type": rng.choice(ACCIDENT_TYPES),
                "severity": "1",
                "deaths": 0,
                "injuries": rng.choices((0, 1, 2), weights=(60, 30, 10))[0],
                "vehicles": rng.choice((1, 2, 2, 3)),
                "party_plate": vehicle.plate,
                "party_citizen_id": driver.citizen_id,
            }
            record["severity"] = _severity(record)
            self._open[accident_id] = record
            self._updates[accident_id] = 0
            n = 0
        return {**record, "event_id": f"acc-{self._run}-{accident_id}-{n}"}


def _severity(record: Mapping[str, Any]) -> str:
    return "3" if record["deaths"] else "2" if record["injuries"] else "1"


class StationStatus:
    """The bikes available at busy stations, changing as people borrow and return them."""

    BUSY = 12  # the stations by metro exits and offices, which change all day

    def __init__(self, run: str, seed: int = SEED) -> None:
        self._rng = random.Random(seed + 13)
        self._run = run
        self._stations: dict[str, dict[str, Any]] = {
            str(s["station_id"]): dict(s) for s in generate_stations(seed=seed)
        }
        self._busy = sorted(self._stations)[: self.BUSY]
        self._count = 0

    def next(self) -> list[dict[str, Any]]:
        out = []
        for station_id in self._rng.sample(self._busy, k=4):
            s = self._stations[station_id]
            cap = int(s["capacity"])
            s["bikes_available"] = min(
                cap, max(0, int(s["bikes_available"]) + self._rng.randint(-4, 4))
            )
            self._count += 1
            out.append({**s, "event_id": f"bs-{self._run}-{station_id}-{self._count}"})
        return out


@dataclass(frozen=True)
class Published:
    feed: str
    event_id: str
    key: str
    record: dict[str, Any]  # as published (before the agreement's masking)
    at: float  # time.monotonic() when the provider's node accepted it


@dataclass
class StreamPublisher:
    """Publishes both feeds to the providers' nodes while the demo runs."""

    dep: Deployment
    city: DemoCity
    run: str = field(default_factory=lambda: f"{int(time.time()):x}")
    accident_seconds: float = ACCIDENT_SECONDS
    station_seconds: float = STATION_SECONDS
    published: deque[Published] = field(default_factory=lambda: deque(maxlen=KEEP))
    refused: int = 0
    last_refusal: str = ""

    async def run_forever(self) -> None:
        accidents = AccidentReports(self.city, self.run)
        stations = StationStatus(self.run)
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                self._every(
                    http,
                    ACCIDENTS,
                    self.accident_seconds,
                    lambda: [accidents.next(datetime.now(CST))],
                ),
                self._every(http, STATIONS, self.station_seconds, stations.next),
            )

    async def _every(
        self,
        http: aiohttp.ClientSession,
        feed: Feed,
        seconds: float,
        make: Callable[[], list[dict[str, Any]]],
    ) -> None:
        while True:
            await self.publish(http, feed, make())
            await asyncio.sleep(seconds)

    async def publish(
        self, http: aiohttp.ClientSession, feed: Feed, events: list[dict[str, Any]]
    ) -> bool:
        """One ``POST /e1/{stream}`` to the provider's node with its app's API key; a refused
        or failed publish is counted and logged, and the feed goes on."""
        node = self.dep.nodes[feed.provider]
        headers = {
            "Authorization": f"Bearer {node.api_keys[feed.publisher_app]}",
            "X-Qiao-Client": self.dep.client(feed.provider, feed.publisher_app),
        }
        try:
            async with http.post(
                f"{node.url}/e1/{feed.stream}",
                json={"events": events},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                if r.status != 202:
                    self._refused(f"{feed.stream}: {r.status} {(await r.text())[:300]}")
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._refused(f"{feed.stream}: {exc!r}")
            return False
        at = time.monotonic()
        for e in events:
            record = {k: v for k, v in e.items() if k != "event_id"}
            self.published.append(
                Published(feed.name, str(e["event_id"]), str(record[feed.key]), record, at)
            )
        return True

    def _refused(self, why: str) -> None:
        self.refused += 1
        self.last_refusal = why
        log.warning("publishing failed: %s", why)

    def of(self, feed: Feed, since: float = 0.0) -> list[Published]:
        return [p for p in self.published if p.feed == feed.name and p.at >= since]


# --- judging what arrived (pure functions; ``qiao.demo.run`` turns them into outcomes) -------
def missing(published: Iterable[Published], received: Iterable[Mapping[str, Any]]) -> list[str]:
    """The published event ids that were not received."""
    got = {str(r.get("event_id")) for r in received}
    return [p.event_id for p in published if p.event_id not in got]


def duplicates(received: Iterable[Mapping[str, Any]]) -> list[str]:
    """Event ids kept more than once."""
    seen: set[str] = set()
    twice = []
    for r in received:
        event_id = str(r.get("event_id"))
        if event_id in seen:
            twice.append(event_id)
        seen.add(event_id)
    return twice


def order_problems(
    published: Iterable[Published], received: Iterable[Mapping[str, Any]]
) -> tuple[int, list[str]]:
    """Per partition key, whether the received sequence of a key's events is the published
    one (received ids that were not published in this journal are ignored). Returns the
    number of keys with more than one received event and the keys out of order."""
    want: dict[str, list[str]] = {}
    for p in published:
        want.setdefault(p.key, []).append(p.event_id)
    known = {p.event_id: p.key for p in published}
    got: dict[str, list[str]] = {}
    for r in received:
        event_id = str(r.get("event_id"))
        if event_id in known:
            got.setdefault(known[event_id], []).append(event_id)
    wrong = []
    for key, ids in got.items():
        # What arrived, in the order it was published (first arrival counts).
        expected = [i for i in want[key] if i in set(ids)]
        if list(dict.fromkeys(ids)) != expected:
            wrong.append(key)
    return sum(1 for ids in got.values() if len(set(ids)) > 1), wrong


def masking_problems(
    published: Iterable[Published],
    received: Iterable[Mapping[str, Any]],
    masked: Mapping[str, Callable[[Any], Any] | None],
) -> list[str]:
    """Where a received event differs from its published record other than by the masking
    the agreement prescribes (``masked``: field -> the rule's function; ``None`` for a rule
    whose output cannot be recomputed here, e.g. a keyed pseudonym: then it must differ)."""
    by_id = {p.event_id: p.record for p in published}
    out = []
    for r in received:
        event_id = str(r.get("event_id"))
        record, event = by_id.get(event_id), r.get("event")
        if record is None or not isinstance(event, Mapping):
            continue
        for name in sorted(set(record) | set(event)):
            if name in masked:
                rule = masked[name]
                ok = event.get(name) != record.get(name) if rule is None else (
                    event.get(name) == rule(record.get(name))
                )  # fmt: skip
                if name in record and record[name] is not None and event.get(name) == record[name]:
                    ok = False  # never in the clear
            else:
                ok = event.get(name) == record.get(name)
            if not ok:
                out.append(f"{event_id}/{name}")
    return out
