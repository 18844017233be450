"""Webhook delivery at the subscriber's node (docs/events.md#webhooks).

One :class:`WebhookDispatcher` per ``[[webhooks]]`` entry of the node's settings, each a task
of its own with its own HTTP connections, so a receiver that hangs or fails stalls only its
own webhook, never another one nor the pull API. A dispatcher:

- keeps its own position in this node's log of its stream (table ``webhook_positions``), apart
  from the broker's acknowledged position, which belongs to the apps that pull;
- decides each delivery under the agreements exactly as a pull of its app is decided
  (``GET`` of the resource itself), and delivers only events the provider masked under the
  agreement that admits the app. While the decision is a refusal (agreement revoked,
  suspended, expired, or none) it pauses: the position stays and the events stay in the log;
  it checks again every second and carries on when the agreement allows again;
- POSTs each event signed as Standard Webhooks specifies (``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``), in offset order per partition key, up to ``concurrency``
  keys at a time;
- retries anything but a 2xx with exponential backoff and full jitter; after
  ``max_attempts`` the event, still sealed as the broker held it, goes to the dead-letter
  queue (``webhook_dead_letters``) and delivery moves on;
- moves its position to the end of a fetched batch only when every event of the batch was
  delivered or dead-lettered. Delivery is at least once: after a crash the batch is sent
  again, and receivers de-duplicate by ``webhook-id``.

Operators rewind a webhook and replay dead letters with ``qiao events`` (webhook_cli.py); the
dispatcher sees both through the database, so the commands work while the node runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from qiao import __version__
from qiao.config import WebhookSettings
from qiao.db import utcnow
from qiao.events.broker import Broker, StoredEvent
from qiao.events.delivery import DeliveredEvent, Delivery, lineage
from qiao.events.publisher import stream_name
from qiao.events.records import DeliveredRecord, EventRecorder
from qiao.events.webhook_models import WebhookDeadLetter, WebhookPosition
from qiao.globalconf import GlobalConf
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem

log = logging.getLogger("qiao.events.webhooks")

SECRET_PREFIX = "whsec_"
BATCH = 100  # events per fetch
POLL_WAIT = 5.0  # seconds of long poll: also how soon a replay or a rewind is noticed
CHECK_INTERVAL = 1.0  # seconds between agreement checks while paused


# --- Standard Webhooks: the secret and the signature (pure) ---------------------------------
def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64, as Standard Webhooks' secrets are written."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def parse_secret(text: str) -> bytes:
    """The HMAC key: the base64 after ``whsec_`` (Standard Webhooks, "Signature scheme")."""
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is whsec_ and base64") from exc
    if len(key) < 24:
        raise ValueError("a webhook secret must hold at least 24 bytes (Standard Webhooks)")
    return key


def load_secret(path: Path) -> bytes:
    """The secret in ``path``, created mode 0600 with a fresh one if the file is missing."""
    try:
        # O_EXCL: two processes starting at once do not overwrite each other's secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(new_secret() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("created webhook secret %s", path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # Like ssh with a private key: a secret others can read is not used.
        raise ValueError(
            f"webhook secret {path} is readable by others (mode {mode:o}); chmod 600 it"
        )
    text = path.read_text()
    if not text.strip():
        raise ValueError(
            f"webhook secret {path} is empty (a start cut short?): delete it to make a new one"
        )
    return parse_secret(text)


def _shown(url: str) -> str:
    """A URL for logs: scheme, host and path only (user info and query can hold secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}" + (
        parts.path or "/"
    )


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``"{msg_id}.{timestamp}.{body}"`` (Standard Webhooks, "Signature scheme")."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def backoff(
    attempt: int, base: float, cap: float, uniform: Callable[[float, float], float]
) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, …): exponential with full jitter,
    uniform(0, min(cap, base * 2^(attempt-1))), so receivers coming back are not hit by every
    sender at the same instant."""
    return uniform(0.0, min(cap, base * 2.0 ** min(attempt - 1, 62)))


# --- the webhook tables -------------------------------------------------------------------
PAUSED_CHARS = 500  # WebhookPosition.paused


@dataclass(frozen=True)
class Position:
    position: int
    generation: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    webhook: str
    offset: int
    event_id: str
    attempts: int
    last_error: str
    state: str
    first_attempt_at: datetime
    failed_at: datetime


@dataclass(frozen=True)
class WebhookState:
    name: str
    provider: str
    stream: str
    position: int
    paused: str
    dead_letters: int


class WebhookStore:
    """The node's webhook tables. Blocking calls: the dispatcher runs them in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def position(self, name: str, provider: str, stream: str) -> Position:
        """The webhook's position; a new webhook (or one now pointed at another stream)
        starts at the beginning of what the node's log still holds."""
        with Session(self._engine) as s, s.begin():
            row = s.get(WebhookPosition, name)
            if row is None:
                row = WebhookPosition(
                    name=name, provider=provider, stream=stream, position=0, generation=0,
                    paused="", updated_at=utcnow(),
                )  # fmt: skip
                s.add(row)
            elif (row.provider, row.stream) != (provider, stream):
                log.warning(
                    "webhook %s now delivers %s/%s instead of %s/%s: starting from the log's "
                    "beginning", name, provider, stream, row.provider, row.stream,
                )  # fmt: skip
                row.provider, row.stream, row.position = provider, stream, 0
                row.generation += 1
            return Position(row.position, row.generation)

    def advance(self, name: str, seen: Position, position: int) -> bool:
        """Move to ``position`` unless a rewind came in since ``seen`` was read."""
        with Session(self._engine) as s, s.begin():
            moved = s.execute(
                update(WebhookPosition)
                .where(
                    WebhookPosition.name == name,
                    WebhookPosition.generation == seen.generation,
                )
                .values(position=position, updated_at=utcnow())
            )
            return bool(getattr(moved, "rowcount", 0))

    def rewind(self, name: str, position: int) -> int:
        """Deliver again from after ``position``; returns the position it was at."""
        with Session(self._engine) as s, s.begin():
            row = s.get(WebhookPosition, name, with_for_update=True)
            if row is None:
                raise KeyError(name)
            before = row.position
            row.position, row.generation, row.updated_at = position, row.generation + 1, utcnow()
            return before

    def set_paused(self, name: str, reason: str) -> None:
        # Bounded to the column (a revocation's reason can be 2,000 characters; PostgreSQL
        # refuses what does not fit rather than cutting it).
        reason = reason[:PAUSED_CHARS]
        with Session(self._engine) as s, s.begin():
            s.execute(
                update(WebhookPosition).where(WebhookPosition.name == name).values(paused=reason)
            )

    def states(self) -> list[WebhookState]:
        with Session(self._engine) as s:
            dead = dict(
                s.execute(
                    select(WebhookDeadLetter.webhook, func.count()).group_by(
                        WebhookDeadLetter.webhook
                    )
                ).all()
            )
            return [
                WebhookState(
                    r.name, r.provider, r.stream, r.position, r.paused, int(dead.get(r.name, 0))
                )
                for r in s.scalars(select(WebhookPosition).order_by(WebhookPosition.name))
            ]

    def add_dead_letter(
        self,
        webhook: str,
        provider: str,
        stream: str,
        stored: StoredEvent,
        attempts: int,
        last_error: str,
        first_attempt_at: datetime,
    ) -> None:
        with Session(self._engine) as s, s.begin():
            s.add(
                WebhookDeadLetter(
                    webhook=webhook, provider=provider, stream=stream, offset=stored.offset,
                    event_id=stored.event_id, partition_key=stored.partition_key,
                    published_at=stored.published_at, envelope=bytes(stored.envelope),
                    attempts=attempts, last_error=last_error[:200], state="dead",
                    first_attempt_at=first_attempt_at, failed_at=utcnow(),
                )
            )  # fmt: skip

    def dead_letters(self, webhook: str | None = None) -> list[DeadLetter]:
        q = select(WebhookDeadLetter).order_by(WebhookDeadLetter.id)
        if webhook is not None:
            q = q.where(WebhookDeadLetter.webhook == webhook)
        with Session(self._engine) as s:
            return [
                DeadLetter(
                    r.id,
                    r.webhook,
                    r.offset,
                    r.event_id,
                    r.attempts,
                    r.last_error,
                    r.state,
                    r.first_attempt_at,
                    r.failed_at,
                )
                for r in s.scalars(q)
            ]

    def request_replay(self, webhook: str | None, dead_letter: int | None = None) -> int:
        """Mark one dead letter (or all of ``webhook``'s) for the dispatcher to deliver
        again; returns how many."""
        q = update(WebhookDeadLetter).where(WebhookDeadLetter.state == "dead")
        if webhook is not None:
            q = q.where(WebhookDeadLetter.webhook == webhook)
        if dead_letter is not None:
            q = q.where(WebhookDeadLetter.id == dead_letter)
        with Session(self._engine) as s, s.begin():
            return int(getattr(s.execute(q.values(state="replay")), "rowcount", 0))

    def discard(self, dead_letter: int) -> bool:
        with Session(self._engine) as s, s.begin():
            gone = s.execute(delete(WebhookDeadLetter).where(WebhookDeadLetter.id == dead_letter))
            return bool(getattr(gone, "rowcount", 0))

    def replays(self, webhook: str, limit: int = BATCH) -> list[tuple[int, StoredEvent]]:
        """Dead letters an operator asked to deliver again, as the broker held them."""
        with Session(self._engine) as s:
            rows = s.scalars(
                select(WebhookDeadLetter)
                .where(WebhookDeadLetter.webhook == webhook, WebhookDeadLetter.state == "replay")
                .order_by(WebhookDeadLetter.offset)
                .limit(limit)
            ).all()
            return [
                (
                    r.id,
                    StoredEvent(
                        stream_name(r.provider, r.stream),
                        "",
                        r.offset,
                        r.event_id,
                        r.partition_key,
                        r.published_at,
                        r.envelope,
                    ),
                )
                for r in rows
            ]

    def replayed(self, dead_letter: int) -> None:
        self.discard(dead_letter)

    def failed_again(self, dead_letter: int, attempts: int, last_error: str) -> None:
        with Session(self._engine) as s, s.begin():
            s.execute(
                update(WebhookDeadLetter)
                .where(WebhookDeadLetter.id == dead_letter)
                .values(
                    state="dead",
                    attempts=WebhookDeadLetter.attempts + attempts,
                    last_error=last_error[:200],
                    failed_at=utcnow(),
                )
            )


# --- the dispatcher -----------------------------------------------------------------------
class Outcome(StrEnum):
    DELIVERED = "delivered"
    DEAD = "dead"  # every attempt failed
    SKIPPED = "skipped"  # the app's agreement changed: the event is not for it any more


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    attempts: int = 0
    last_error: str = ""
    first_attempt_at: datetime | None = None


class _Envelopes:
    """The node's broker as the dispatcher's ``Delivery`` sees it: it keeps the envelopes of
    the last fetch, so a dead letter stores the event sealed as fetched. Without an inner
    broker it holds only the ``held`` events: a replay of dead letters, opened and checked by
    ``Delivery`` exactly as live events are."""

    def __init__(self, inner: Broker | None, held: Sequence[StoredEvent] = ()) -> None:
        self._inner = inner
        self.fetched: dict[int, StoredEvent] = {ev.offset: ev for ev in held}

    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        if self._inner is None:
            return [ev for ev in self.fetched.values() if ev.offset > after][:limit]
        found = await self._inner.fetch(stream, subscriber, after=after, limit=limit, wait=wait)
        self.fetched = {ev.offset: ev for ev in found}
        return found

    def _broker(self) -> Broker:
        assert self._inner is not None
        return self._inner

    async def publish(self, stream: str, subscriber: str, events: Sequence[Any]) -> list[int]:
        raise NotImplementedError("webhooks only read")

    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        raise NotImplementedError("a webhook keeps its own position")

    async def acked(self, stream: str, subscriber: str) -> int:
        return await self._broker().acked(stream, subscriber)

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        return await self._broker().offset_at(stream, subscriber, when)

    async def trim(self, stream: str, *, before: datetime) -> int:
        raise NotImplementedError("retention runs at the hub")

    async def close(self) -> None:
        pass


class WebhookDispatcher:
    """Delivers one stream to one backend (see the module doc). ``run()`` until cancelled."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        engine: Engine,
        conf_cache: ConfigurationCache,
        identity: NodeIdentity,
        broker: Broker,
        recorder: EventRecorder,
        secret: bytes,
        poll_wait: float = POLL_WAIT,
        check_interval: float = CHECK_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Callable[[float, float], float] = random.uniform,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = WebhookStore(engine)
        self._conf = conf_cache
        self._identity = identity
        self._envelopes = _Envelopes(broker)
        self._delivery = Delivery(conf_cache, identity, self._envelopes)
        self._recorder = recorder
        self._secret = secret
        self._poll_wait = poll_wait
        self._check_interval = check_interval
        self._sleep = sleep  # backoff waits (tests make them instant and watch them)
        self._uniform = uniform
        self._clock = clock
        self.client = identity.client_id_prefix + settings.app
        self.paused = ""  # the refusal while paused
        self.delivered = 0
        self.dead_lettered = 0
        self.last_error = ""
        self._session: aiohttp.ClientSession | None = None
        self._begun = False
        self._lineage: tuple[GlobalConf, str, set[str]] | None = None

    # --- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        w = self.settings
        log.info("webhook %s: delivering %s/%s to %s", w.name, w.provider, w.stream, _shown(w.url))
        failing = ""
        try:
            while True:
                try:
                    await self.step()
                    failing = ""
                except Exception as exc:  # a broker or database hiccup: try again
                    why = f"{exc.__class__.__name__}: {exc}"
                    if why != failing:
                        log.error("webhook %s: %s; retrying every second", w.name, why)
                    failing = why
                    await asyncio.sleep(1.0)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def step(self) -> int:
        """One round: replays asked for, then one batch of the log. Returns the number of
        events delivered."""
        w = self.settings
        if not self._begun:
            # A pause the last run left in the table is this run's to state again.
            await asyncio.to_thread(self.store.set_paused, w.name, "")
            self._begun = True
        done = await self._replays()
        agreement = await self._allowed()
        seen = await asyncio.to_thread(self.store.position, w.name, w.provider, w.stream)
        started = utcnow()
        pulled = await self._delivery.pull(
            w.provider, w.stream, after=seen.position, limit=BATCH, wait=self._poll_wait,
            agreement=agreement,
        )  # fmt: skip
        if pulled.next == seen.position:
            return done
        envelopes = dict(self._envelopes.fetched)

        async def dead(ev: DeliveredEvent, result: Result) -> None:
            assert result.first_attempt_at is not None
            await asyncio.to_thread(
                self.store.add_dead_letter, w.name, w.provider, w.stream, envelopes[ev.offset],
                result.attempts, result.last_error, result.first_attempt_at,
            )  # fmt: skip
            self.dead_lettered += 1
            log.error(
                "webhook %s: event %s at %d dead-lettered after %d attempts (%s)",
                w.name, ev.event_id, ev.offset, result.attempts, result.last_error,
            )  # fmt: skip

        delivered = await self._deliver_all(pulled.events, dead)
        await self._record(delivered, started)
        if not await asyncio.to_thread(self.store.advance, w.name, seen, pulled.next):
            log.info("webhook %s was rewound while a batch was out; following the rewind", w.name)
        return done + len(delivered)

    async def _replays(self) -> int:
        w = self.settings
        waiting = await asyncio.to_thread(self.store.replays, w.name)
        if not waiting:
            return 0
        agreement = await self._allowed()
        started = utcnow()
        ids: dict[int, int] = {}
        for dl, stored in waiting:
            if stored.offset in ids:  # the same event dead-lettered twice (after a rewind)
                await asyncio.to_thread(self.store.replayed, dl)
            else:
                ids[stored.offset] = dl
        # The stored envelopes, opened and checked by Delivery as live events are.
        held = Delivery(
            self._conf,
            self._identity,
            _Envelopes(None, [s for dl, s in waiting if dl in ids.values()]),
        )
        pulled = await held.pull(w.provider, w.stream, after=0, limit=len(waiting),
                                 agreement=agreement)  # fmt: skip
        opened = {ev.offset for ev in pulled.events}
        for offset, dl in ids.items():
            if offset not in opened:
                await asyncio.to_thread(
                    self.store.failed_again, dl, 0,
                    "not deliverable: does not open or is not for the app's agreement",
                )  # fmt: skip

        async def dead(ev: DeliveredEvent, result: Result) -> None:
            await asyncio.to_thread(
                self.store.failed_again, ids[ev.offset], result.attempts, result.last_error
            )

        delivered = await self._deliver_all(pulled.events, dead)
        for ev in delivered:
            await asyncio.to_thread(self.store.replayed, ids[ev.offset])
        await self._record(delivered, started)
        log.info("webhook %s: replayed %d of %d dead letters", w.name, len(delivered), len(ids))
        return len(delivered)

    async def _record(self, delivered: list[DeliveredEvent], started: datetime) -> None:
        if not delivered:
            return
        self.delivered += len(delivered)
        await self._recorder.delivered(
            client=self.client,
            provider_org=self.settings.provider,
            stream=self.settings.stream,
            events=[
                DeliveredRecord(e.offset, e.event_id, e.event, e.agreement)
                for e in sorted(delivered, key=lambda e: e.offset)
            ],
            via=f"webhook:{self.settings.name}",
            started_at=started,
        )

    # --- the agreement check ----------------------------------------------------------------
    def _admitted(self, agreement: str) -> set[str]:
        """The agreements whose events the app receives under ``agreement``
        (``qiao.events.delivery.lineage``), computed once per configuration and decision:
        this is asked before every attempt of every event."""
        conf = self._conf.usable()
        cached = self._lineage
        # The configuration object itself is kept in the cache, so identity is a safe test.
        if cached is None or cached[0] is not conf or cached[1] != agreement:
            cached = self._lineage = (conf, agreement, lineage(conf, agreement))
        return cached[2]

    def _decide(self) -> str:
        """The agreement that admits the app now, or a Problem saying why none does."""
        w = self.settings
        decision = self._conf.usable().policy.decide(
            self.client, w.provider, w.stream, "GET", "", {}, w.purpose, w.end_user, utcnow(),
            "consumer",
        )  # fmt: skip
        return decision.agreement.id

    async def _allowed(self) -> str:
        """The agreement to deliver under; while the agreements refuse, waits (paused)."""
        while True:
            try:
                agreement = self._decide()
            except Problem as refused:
                reason = f"{refused.kind.uri}: {refused.detail or refused.kind.title}"
                if reason != self.paused:
                    # Logged once per refusal, not every second.
                    log.warning("webhook %s paused: %s", self.settings.name, reason)
                    self.paused = reason
                    await asyncio.to_thread(self.store.set_paused, self.settings.name, reason)
                await asyncio.sleep(self._check_interval)
                continue
            if self.paused:
                log.info("webhook %s resumes under agreement %s", self.settings.name, agreement)
                self.paused = ""
                await asyncio.to_thread(self.store.set_paused, self.settings.name, "")
            return agreement

    # --- delivering ------------------------------------------------------------------------
    async def _deliver_all(
        self,
        events: list[DeliveredEvent],
        on_dead: Callable[[DeliveredEvent, Result], Awaitable[None]],
    ) -> list[DeliveredEvent]:
        """Each key's events one at a time in offset order, up to ``concurrency`` keys at
        once; returns the delivered ones."""
        by_key: dict[str, list[DeliveredEvent]] = {}
        for ev in events:
            by_key.setdefault(ev.partition_key, []).append(ev)
        slots = asyncio.Semaphore(self.settings.concurrency)
        delivered: list[DeliveredEvent] = []

        async def one_key(chain: list[DeliveredEvent]) -> None:
            async with slots:
                for ev in chain:
                    result = await self._deliver(ev)
                    if result.outcome is Outcome.DELIVERED:
                        delivered.append(ev)
                    elif result.outcome is Outcome.DEAD:
                        await on_dead(ev, result)

        # A TaskGroup, not gather: if one chain fails (a database error storing a dead letter),
        # the others are cancelled before the batch is retried, so no orphaned chain keeps
        # posting beside the retry (duplicates, and a key delivered out of order).
        async with asyncio.TaskGroup() as chains:
            for chain in by_key.values():
                chains.create_task(one_key(chain))
        return delivered

    async def _deliver(self, ev: DeliveredEvent) -> Result:
        """One event, attempt after attempt, until a 2xx or ``max_attempts``."""
        w = self.settings
        first = utcnow()
        error = ""
        for attempt in range(1, w.max_attempts + 1):
            # Decided again before every attempt: a revoked agreement stops delivery even
            # in the middle of a batch or a backoff.
            if ev.agreement not in self._admitted(await self._allowed()):
                return Result(Outcome.SKIPPED)
            error = await self._post(ev)
            if not error:
                return Result(Outcome.DELIVERED, attempt, "", first)
            self.last_error = error
            if attempt < w.max_attempts:
                wait = backoff(
                    attempt, w.backoff_base_seconds, w.backoff_max_seconds, self._uniform
                )
                log.info(
                    "webhook %s: event %s attempt %d failed (%s); next in %.1f s",
                    w.name, ev.event_id, attempt, error, wait,
                )  # fmt: skip
                await self._sleep(wait)
        return Result(Outcome.DEAD, w.max_attempts, error, first)

    def body(self, ev: DeliveredEvent) -> bytes:
        w = self.settings
        return orjson.dumps(
            {
                "event_id": ev.event_id,
                "offset": ev.offset,
                "provider": w.provider,
                "stream": w.stream,
                "partition_key": ev.partition_key,
                "published_at": ev.published_at.isoformat(),
                "event": ev.event,
            }
        )

    async def _post(self, ev: DeliveredEvent) -> str:
        """One attempt: "" when the receiver answered 2xx, else what went wrong (a status or
        an exception's class: never the receiver's body)."""
        if self._session is None:
            # Its own connections: a receiver that hangs holds only this webhook's.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": f"qiao/{__version__}"},
            )
        body = self.body(ev)
        ts = int(self._clock())  # a fresh timestamp per attempt: receivers check its age
        headers = {
            "Content-Type": "application/json",
            "webhook-id": ev.event_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self._secret, ev.event_id, ts, body),
        }
        try:
            async with self._session.post(
                self.settings.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return exc.__class__.__name__

    def status(self) -> dict[str, Any]:
        return {
            "name": self.settings.name,
            "stream": f"{self.settings.provider}/{self.settings.stream}",
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            # Health is unauthenticated: whether it is paused and failing, not the operator's
            # free-text reasons or receivers' errors (`qiao events webhooks` shows those).
            "paused": bool(self.paused),
            "failing": bool(self.last_error),
        }


def dispatchers(
    webhooks: Sequence[WebhookSettings],
    *,
    data_dir: Path,
    engine: Engine,
    conf_cache: ConfigurationCache,
    identity: NodeIdentity,
    broker: Broker,
    recorder: EventRecorder,
) -> list[WebhookDispatcher]:
    """One dispatcher per configured webhook, each with its secret (created if missing)."""
    return [
        WebhookDispatcher(
            w,
            engine=engine,
            conf_cache=conf_cache,
            identity=identity,
            broker=broker,
            recorder=recorder,
            secret=load_secret(data_dir / w.secret_file),
        )
        for w in webhooks
    ]
