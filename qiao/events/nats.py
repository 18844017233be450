"""The NATS JetStream broker: one JetStream stream per (stream, subscriber) log.

Layout, under a configurable ``prefix`` (default ``QIAO``):

- each log is the JetStream stream ``{prefix}_EV_<s>_<n>`` on the subject
  ``{prefix}.ev.<s>.<n>``, where ``<s>`` and ``<n>`` are the first 16 hex digits of the
  SHA-256 of the stream and the subscriber name (names may not fit NATS's token rules; the
  stream's description keeps them readable). File storage, ``allow_direct``.
- an offset IS the JetStream stream sequence: one subject per stream makes it contiguous
  (1, 2, 3 …) and JetStream never reuses a sequence, not even after a purge.
- the event id travels as ``Nats-Msg-Id``: within the stream's duplicate window JetStream
  stores a republished id once and acknowledges it with the original sequence. Outside the
  window (default 10 minutes) a republish would be appended again; delivery is at-least-once
  with event ids, so a consumer node de-duplicates anyway. The window is kept short on
  purpose: the server holds every id of the window in memory.
- publish waits for every PubAck: JetStream has written the message to its file store (it
  survives a kill -9 of the server; R1 streams are fsynced on the server's sync interval).
- fetch reads through a *cursor*: an ephemeral pull consumer of the log (no acks, memory
  storage, deleted by the server after ``_CURSOR_IDLE`` seconds unused) that starts at
  ``after + 1`` and answers one ``MSG.NEXT`` request with a whole batch. A subscriber pulls
  where its last pull ended, so the cursor is reused call after call; a fetch from anywhere
  else (a replay, another app of the node) moves it by making a new one. One DIRECT.GET per
  event (server 2.9 has no batched direct get) measured about 5,600 events/s; the cursor
  several times that (BENCHMARKS.md). The cursor's delivery count must go up by one per
  message: a gap (a batch answered after its request timed out) retires the cursor, and that
  fetch, like one made while the cursor is busy, reads by DIRECT.GET as before.
- the long poll subscribes (plain NATS) to the log's subject: JetStream publishes are ordinary
  messages, so the first one published wakes the waiting fetch at once.
- acknowledged positions are in the KV bucket ``{prefix}_EVENT_POSITIONS`` (file storage),
  key ``<s>.<n>``, moved forward only, by compare-and-set on the key's revision.
- offset_at and trim find a time by binary search over sequences on JetStream's own storage
  timestamps (monotonic in the sequence): "published" here means "stored by the broker",
  which is the embedded broker's ``published_at`` when the node stamps events at hand-off.
  trim purges each log of the stream up to that sequence.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from qiao.events.broker import (
    Outgoing,
    StoredEvent,
    check_fetch,
    check_log,
    check_outgoing,
    check_stream,
    check_when,
)

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")
_HEADER_PARTITION = "Qiao-Partition-Key"
_HEADER_PUBLISHED = "Qiao-Published-At"
PUBLISH_ACK_TIMEOUT = 10.0  # seconds for a batch's PubAcks (JetStream's own default is 5 per ack)
# Compare-and-set attempts for one ack; each lost race means another ack moved the position.
_ACK_ATTEMPTS = 50
# A cursor unused this long is deleted by the server (a node that went away leaves nothing).
_CURSOR_IDLE = 60.0
# How long one batch may take to arrive before the cursor is given up for DIRECT.GET.
_BATCH_TIMEOUT = 5.0


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _parse_time(value: str) -> datetime:
    """RFC 3339 with up to nanoseconds, as JetStream writes it; Python keeps microseconds."""
    value = value.replace("Z", "+00:00")
    if "." in value:
        head, rest = value.split(".", 1)
        cut = next((i for i, c in enumerate(rest) if not c.isdigit()), len(rest))
        value = f"{head}.{rest[:cut][:6].ljust(6, '0')}{rest[cut:]}"
    return datetime.fromisoformat(value).astimezone(UTC)


@dataclass(slots=True)
class _Cursor:
    """An ephemeral pull consumer of one log, positioned where the last batch ended."""

    consumer: str
    next_seq: int  # the stream sequence it delivers next (or the first one after it)
    delivered: int = 0  # the consumer's delivery count so far: contiguous, 1, 2, 3 …
    busy: bool = False


def _stored(
    stream: str, subscriber: str, headers: dict[str, str], seq: int, data: bytes
) -> StoredEvent:
    return StoredEvent(
        stream=stream,
        subscriber=subscriber,
        offset=seq,
        event_id=headers["Nats-Msg-Id"],
        partition_key=unquote(headers[_HEADER_PARTITION]),
        published_at=datetime.fromisoformat(headers[_HEADER_PUBLISHED]),
        envelope=data,
    )


class NatsBroker:
    """:class:`qiao.events.broker.Broker` on NATS JetStream."""

    def __init__(
        self, nc: Client, js: JetStreamContext, positions: KeyValue, prefix: str, window: float
    ) -> None:
        self._nc = nc
        self._js = js
        self._positions = positions
        self._prefix = prefix
        self._window = window
        self._ready: set[str] = set()  # JetStream streams known to exist
        self._cursors: dict[str, _Cursor] = {}  # JetStream stream -> its cursor

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        prefix: str = "QIAO",
        *,
        duplicate_window: float = 600.0,
        timeout: float = 5.0,
    ) -> NatsBroker:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r} must be 1-32 letters, digits, '-' or '_'")
        if duplicate_window <= 0:
            raise ValueError("duplicate_window must be a positive number of seconds")
        nc = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=-1)
        js = nc.jetstream(timeout=timeout)
        try:
            positions = await js.create_key_value(
                KeyValueConfig(
                    bucket=f"{prefix}_EVENT_POSITIONS", history=1, storage=StorageType.FILE
                )
            )
        except BaseException:
            await nc.close()
            raise
        return cls(nc, js, positions, prefix, duplicate_window)

    def log_name(self, stream: str, subscriber: str) -> tuple[str, str]:
        """The JetStream stream and subject that hold ``subscriber``'s log of ``stream``."""
        check_log(stream, subscriber)
        s, n = _digest(stream), _digest(subscriber)
        return f"{self._prefix}_EV_{s}_{n}", f"{self._prefix}.ev.{s}.{n}"

    async def _ensure(self, stream: str, subscriber: str) -> tuple[str, str]:
        name, subject = self.log_name(stream, subscriber)
        if name not in self._ready:
            # Creating a stream that exists with the same configuration succeeds: safe for
            # several hub replicas at once.
            await self._js.add_stream(
                StreamConfig(
                    name=name,
                    description=f"{subscriber}'s log of {stream}",
                    subjects=[subject],
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.OLD,
                    duplicate_window=self._window,
                    allow_direct=True,
                )
            )
            self._ready.add(name)
        return name, subject

    # --- publishing ---------------------------------------------------------------------------
    async def publish(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        check_log(stream, subscriber)
        check_outgoing(events)
        if not events:
            return []
        name, subject = await self._ensure(stream, subscriber)
        # Sent in order on one connection, so JetStream stores them in order; the PubAcks are
        # awaited together rather than one round trip each.
        pending = [
            await self._js.publish_async(
                subject,
                bytes(ev.envelope),
                stream=name,
                headers={
                    "Nats-Msg-Id": ev.event_id,
                    # Header values are one line of text: keys are percent-encoded.
                    _HEADER_PARTITION: quote(ev.partition_key, safe=""),
                    _HEADER_PUBLISHED: ev.published_at.astimezone(UTC).isoformat(),
                },
            )
            for ev in events
        ]
        # PubAcks come back in order; awaiting the futures one by one is cheaper than gather()
        # (no wrapper and callback per message) and returns at the same moment, the last ack.
        # Bounded: nats-py's futures have no timeout of their own, and the acks of messages
        # that died with the server (written to its socket, never stored) never come, which
        # would hold the publish — and its async-publish slots — for ever. Nothing is then
        # acknowledged to the backend; it retries with the same ids (Nats-Msg-Id: stored once).
        try:
            async with asyncio.timeout(PUBLISH_ACK_TIMEOUT):
                return [int((await ack).seq) for ack in pending]
        except TimeoutError:
            for ack in pending:
                ack.cancel()  # frees the client's slots
            raise nats.errors.TimeoutError from None

    # --- reading ------------------------------------------------------------------------------
    async def _bounds(self, name: str) -> tuple[int, int]:
        """(first, last) sequence of a JetStream stream; (1, 0) if it does not exist yet."""
        try:
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return 1, 0
        assert info.state is not None
        return int(info.state.first_seq), int(info.state.last_seq)

    async def _get(self, name: str, seq: int) -> Msg | None:
        msg = await self._nc.request(
            f"$JS.API.DIRECT.GET.{name}", json.dumps({"seq": seq}).encode(), timeout=5.0
        )
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None  # trimmed meanwhile
        if status is not None:
            raise nats.js.errors.APIError(code=int(status), description=str(msg.headers))
        return msg

    async def _read(
        self, stream: str, subscriber: str, name: str, after: int, limit: int
    ) -> list[StoredEvent]:
        batch = await self._read_batch(name, after, limit)
        if batch is not None:
            return [
                _stored(stream, subscriber, msg.headers or {}, seq, msg.data) for seq, msg in batch
            ]
        return await self._read_direct(stream, subscriber, name, after, limit)

    async def _read_batch(self, name: str, after: int, limit: int) -> list[tuple[int, Msg]] | None:
        """(sequence, message) of up to ``limit`` events after ``after`` through the log's
        cursor; None when the cursor cannot answer (busy, gone, a gap): read directly then."""
        cursor = self._cursors.get(name)
        if cursor is not None and cursor.busy:
            return None  # another fetch of this log is using it: do not wait for it
        if cursor is None or cursor.next_seq != after + 1:
            if cursor is not None:
                self._retire(name, cursor)
            try:
                cursor = await self._new_cursor(name, after + 1)
            except nats.js.errors.NotFoundError:
                return []  # the log does not exist yet: nothing was ever published
            except nats.js.errors.APIError:
                return None  # e.g. the account's consumer limit: read directly instead
        cursor.busy = True
        try:
            found = await self._next_batch(name, cursor, limit)
        finally:
            cursor.busy = False
        if found is None:
            self._retire(name, cursor)
        elif found:
            cursor.next_seq = found[-1][0] + 1
        return found

    async def _new_cursor(self, name: str, start: int) -> _Cursor:
        info = await self._js.add_consumer(
            name,
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                # No acks: the position is the subscriber's, kept in the KV bucket.
                ack_policy=AckPolicy.NONE,
                inactive_threshold=_CURSOR_IDLE,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        cursor = _Cursor(consumer=info.name, next_seq=start)
        self._cursors[name] = cursor
        return cursor

    def _retire(self, name: str, cursor: _Cursor) -> None:
        if self._cursors.get(name) is cursor:
            del self._cursors[name]
        # Deleting is tidiness only (the idle threshold removes it anyway): not awaited.
        task = asyncio.ensure_future(
            self._nc.publish(f"$JS.API.CONSUMER.DELETE.{name}.{cursor.consumer}", b"")
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never unretrieved

    async def _next_batch(
        self, name: str, cursor: _Cursor, limit: int
    ) -> list[tuple[int, Msg]] | None:
        """One MSG.NEXT with ``no_wait``: JetStream sends what it has, up to ``limit``, then a
        404 status if that was fewer."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()  # True: complete; False: distrust
        found: list[tuple[int, Msg]] = []

        # A callback rather than next_msg(): next_msg starts a task per message, which cost
        # more than the message itself at 1,000 a batch.
        async def arrived(msg: Msg) -> None:
            if done.done():
                return
            status = (msg.headers or {}).get("Status")
            if status is not None:
                # 404 no messages / 408 request expired end the batch; anything else
                # (503: the cursor is gone) means the cursor cannot be trusted.
                done.set_result(status in ("404", "408"))
                return
            meta = msg.metadata
            if meta.sequence.consumer != cursor.delivered + 1:
                done.set_result(False)  # a message went to an abandoned request: a gap
                return
            cursor.delivered += 1
            found.append((meta.sequence.stream, msg))
            if len(found) >= limit:
                done.set_result(True)

        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=arrived)
        try:
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{name}.{cursor.consumer}",
                json.dumps({"batch": limit, "no_wait": True}).encode(),
                reply=sub.subject,
            )
            try:
                complete = await asyncio.wait_for(done, _BATCH_TIMEOUT)
            except TimeoutError:
                return None
            return found if complete else None
        finally:
            await sub.unsubscribe()

    async def _read_direct(
        self, stream: str, subscriber: str, name: str, after: int, limit: int
    ) -> list[StoredEvent]:
        first, last = await self._bounds(name)
        start = max(after + 1, first)  # offsets before ``first`` were trimmed
        stop = min(start + limit - 1, last)
        if start > stop:
            return []
        msgs = await asyncio.gather(*(self._get(name, seq) for seq in range(start, stop + 1)))
        return [
            _stored(
                stream, subscriber, msg.headers or {}, int(msg.headers["Nats-Sequence"]), msg.data
            )
            for msg in msgs
            if msg is not None and msg.headers
        ]

    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        check_log(stream, subscriber)
        check_fetch(after, limit, wait)
        name, subject = self.log_name(stream, subscriber)
        found = await self._read(stream, subscriber, name, after, limit)
        if found or wait <= 0:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # Subscribe before reading again, so an event published in between still wakes us.
        sub = await self._nc.subscribe(subject)
        try:
            while True:
                found = await self._read(stream, subscriber, name, after, limit)
                remaining = deadline - loop.time()
                if found or remaining <= 0:
                    return found
                try:
                    await sub.next_msg(timeout=remaining)
                except nats.errors.TimeoutError:
                    return await self._read(stream, subscriber, name, after, limit)
        finally:
            await sub.unsubscribe()

    # --- positions ----------------------------------------------------------------------------
    def _position_key(self, stream: str, subscriber: str) -> str:
        check_log(stream, subscriber)
        return f"{_digest(stream)}.{_digest(subscriber)}"

    async def _position(self, key: str) -> tuple[int, int]:
        """(acked offset, KV revision); (0, 0) before the first ack."""
        try:
            entry = await self._positions.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0, 0
        return int(entry.value or b"0"), int(entry.revision or 0)

    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        key = self._position_key(stream, subscriber)
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, not {offset}")
        name, _ = self.log_name(stream, subscriber)
        _, last = await self._bounds(name)
        if offset > last:
            raise ValueError(
                f"offset {offset} was never published to {subscriber}'s log of {stream} "
                f"(last offset {last})"
            )
        for _attempt in range(_ACK_ATTEMPTS):
            current, revision = await self._position(key)
            if current >= offset:
                return
            try:
                # Expected-last-subject-sequence: fails if another ack wrote in between.
                await self._positions.update(key, str(offset).encode(), last=revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"ack of {stream} for {subscriber} lost {_ACK_ATTEMPTS} races")

    async def acked(self, stream: str, subscriber: str) -> int:
        current, _ = await self._position(self._position_key(stream, subscriber))
        return current

    async def _first_at_or_after(self, name: str, when: datetime) -> tuple[int, int, int]:
        """(first, last, seq): seq is the first sequence stored at or after ``when``
        (last + 1 if none); binary search, as storage times grow with the sequence."""
        first, last = await self._bounds(name)
        lo, hi = first, last + 1
        while lo < hi:
            mid = (lo + hi) // 2
            msg = await self._get(name, mid)
            if msg is None:  # trimmed meanwhile: everything before it is gone too
                lo = mid + 1
                continue
            stored = _parse_time((msg.headers or {})["Nats-Time-Stamp"])
            if stored < when:
                lo = mid + 1
            else:
                hi = mid
        return first, last, lo

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        check_when(when)
        name, _ = self.log_name(stream, subscriber)
        _, _, seq = await self._first_at_or_after(name, when)
        return seq - 1

    # --- retention ----------------------------------------------------------------------------
    async def _log_names(self, stream: str) -> list[str]:
        """Every JetStream stream that holds a subscriber's log of ``stream``."""
        subject = f"{self._prefix}.ev.{_digest(stream)}.*"
        names: list[str] = []
        while True:
            reply = await self._nc.request(
                "$JS.API.STREAM.NAMES",
                json.dumps({"subject": subject, "offset": len(names)}).encode(),
                timeout=5.0,
            )
            body: dict[str, Any] = json.loads(reply.data)
            if "error" in body:
                raise nats.js.errors.APIError.from_error(body["error"])
            page = body.get("streams") or []
            names.extend(page)
            if not page or len(names) >= int(body.get("total", 0)):
                return names

    async def trim(self, stream: str, *, before: datetime) -> int:
        check_stream(stream)
        check_when(before)
        removed = 0
        for name in await self._log_names(stream):
            first, last, seq = await self._first_at_or_after(name, before)
            if seq <= first:
                continue
            # A purge up to a sequence keeps the stream's sequence counter: offsets go on
            # from last + 1 even when everything is purged.
            request: dict[str, Any] = {} if seq > last else {"seq": seq}
            reply = await self._nc.request(
                f"$JS.API.STREAM.PURGE.{name}", json.dumps(request).encode(), timeout=5.0
            )
            body = json.loads(reply.data)
            if "error" in body:
                raise nats.js.errors.APIError.from_error(body["error"])
            removed += int(body.get("purged", 0))
        return removed

    async def close(self) -> None:
        for name, cursor in list(self._cursors.items()):
            self._retire(name, cursor)
        # Draining lets PubAcks and replies in flight arrive before the connection closes.
        if not (self._nc.is_closed or self._nc.is_draining):
            await self._nc.drain()
