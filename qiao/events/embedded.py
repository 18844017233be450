"""The embedded broker: event logs in the hub's own database (SQLite or PostgreSQL).

Offsets under concurrent publishers (several hub replicas on one PostgreSQL): each log has a
counter row in ``event_positions``. A publisher locks that row first (``SELECT … FOR UPDATE``
on PostgreSQL; ``BEGIN IMMEDIATE`` takes SQLite's single write lock), then looks up which
event ids the log already holds, moves the counter on by the number of new events and inserts
them, all in one transaction. Publishers of one log therefore take turns and each reads what
the previous one committed (READ COMMITTED: every statement after the lock sees the latest
commit), so offsets are contiguous and an id is never appended twice; publishers of other
logs lock other rows and do not wait. Insert-and-retry on a unique conflict would also be
correct, but under contention it retries a whole batch per lost race; the row lock just queues.

The database calls are blocking and run in a worker thread (``asyncio.to_thread``). A long
poll re-reads the log every ``poll_interval`` seconds, and a publish in this process wakes
the waiting fetches of that log at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from qiao.db import utcnow
from qiao.events.broker import (
    Outgoing,
    StoredEvent,
    check_fetch,
    check_log,
    check_outgoing,
    check_stream,
    check_when,
)
from qiao.events.models import EventLogEntry, EventPosition

_LOG = cast(Table, EventLogEntry.__table__)
_POSITIONS = cast(Table, EventPosition.__table__)
# Event ids are looked up in chunks: well below SQLite's limit of 32,766 bound variables.
_LOOKUP_CHUNK = 900

LogKey = tuple[str, str]


class EmbeddedBroker:
    """:class:`qiao.events.broker.Broker` on the hub's database."""

    def __init__(self, engine: Engine, *, poll_interval: float = 0.2) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._poll = poll_interval
        # Fetches waiting on a log in this process; a publish sets their events.
        self._waiters: dict[LogKey, set[asyncio.Event]] = defaultdict(set)

    # --- publishing ---------------------------------------------------------------------------
    async def publish(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        check_log(stream, subscriber)
        check_outgoing(events)
        if not events:
            return []
        offsets = await asyncio.to_thread(self._append, stream, subscriber, events)
        for waiter in self._waiters.get((stream, subscriber), ()):
            waiter.set()
        return offsets

    def _append(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        with self._engine.connect() as conn:
            if self._dialect == "postgresql":
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                if self._dialect == "sqlite":
                    # pysqlite begins lazily, as a reader; two publishers could both read the
                    # counter. BEGIN IMMEDIATE takes the write lock before the first read.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                last = self._lock_counter(conn, stream, subscriber)
                assigned = self._existing(conn, stream, subscriber, [e.event_id for e in events])
                offsets: list[int] = []
                rows: list[dict[str, Any]] = []
                for ev in events:
                    offset = assigned.get(ev.event_id)
                    if offset is None:
                        offset = assigned[ev.event_id] = last + len(rows) + 1
                        rows.append(
                            {
                                "stream": stream,
                                "subscriber": subscriber,
                                "offset": offset,
                                "event_id": ev.event_id,
                                "partition_key": ev.partition_key,
                                "published_at": ev.published_at,
                                "envelope": bytes(ev.envelope),
                            }
                        )
                    offsets.append(offset)
                if rows:
                    conn.execute(insert(_LOG), rows)
                    conn.execute(
                        update(_POSITIONS)
                        .where(_POSITIONS.c.stream == stream, _POSITIONS.c.subscriber == subscriber)
                        .values(last_offset=last + len(rows), updated_at=utcnow())
                    )
        return offsets

    def _lock_counter(self, conn: Connection, stream: str, subscriber: str) -> int:
        """Create the log's counter row if needed, lock it, and return the last offset."""
        values = {
            "stream": stream,
            "subscriber": subscriber,
            "last_offset": 0,
            "acked": 0,
            "updated_at": utcnow(),
        }
        if self._dialect == "postgresql":
            conn.execute(pg_insert(_POSITIONS).values(values).on_conflict_do_nothing())
        else:
            conn.execute(sqlite_insert(_POSITIONS).values(values).on_conflict_do_nothing())
        query = select(_POSITIONS.c.last_offset).where(
            _POSITIONS.c.stream == stream, _POSITIONS.c.subscriber == subscriber
        )
        if self._dialect == "postgresql":
            query = query.with_for_update()
        return int(conn.execute(query).scalar_one())

    def _existing(
        self, conn: Connection, stream: str, subscriber: str, event_ids: list[str]
    ) -> dict[str, int]:
        unique = list(dict.fromkeys(event_ids))
        found: dict[str, int] = {}
        for i in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[i : i + _LOOKUP_CHUNK]
            for event_id, offset in conn.execute(
                select(_LOG.c.event_id, _LOG.c.offset).where(
                    _LOG.c.stream == stream,
                    _LOG.c.subscriber == subscriber,
                    _LOG.c.event_id.in_(chunk),
                )
            ):
                found[event_id] = int(offset)
        return found

    # --- reading ------------------------------------------------------------------------------
    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        check_log(stream, subscriber)
        check_fetch(after, limit, wait)
        found = await asyncio.to_thread(self._read, stream, subscriber, after, limit)
        if found or wait <= 0:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        woken = asyncio.Event()
        key = (stream, subscriber)
        self._waiters[key].add(woken)
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                # A publish in this process sets ``woken``; one in another process (another
                # hub replica) is seen at the next poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(self._poll, remaining))
                woken.clear()
                found = await asyncio.to_thread(self._read, stream, subscriber, after, limit)
                if found:
                    return found
        finally:
            self._waiters[key].discard(woken)
            if not self._waiters[key]:
                del self._waiters[key]

    def _read(self, stream: str, subscriber: str, after: int, limit: int) -> list[StoredEvent]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    _LOG.c.offset,
                    _LOG.c.event_id,
                    _LOG.c.partition_key,
                    _LOG.c.published_at,
                    _LOG.c.envelope,
                )
                .where(
                    _LOG.c.stream == stream,
                    _LOG.c.subscriber == subscriber,
                    _LOG.c.offset > after,
                )
                .order_by(_LOG.c.offset)
                .limit(limit)
            ).all()
        return [
            StoredEvent(
                stream=stream,
                subscriber=subscriber,
                offset=int(offset),
                event_id=event_id,
                partition_key=partition_key,
                published_at=published_at,
                envelope=bytes(envelope),
            )
            for offset, event_id, partition_key, published_at, envelope in rows
        ]

    # --- positions ----------------------------------------------------------------------------
    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        check_log(stream, subscriber)
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, not {offset}")
        await asyncio.to_thread(self._ack, stream, subscriber, offset)

    def _ack(self, stream: str, subscriber: str, offset: int) -> None:
        with self._engine.begin() as conn:
            last = conn.execute(
                select(_POSITIONS.c.last_offset).where(
                    _POSITIONS.c.stream == stream, _POSITIONS.c.subscriber == subscriber
                )
            ).scalar_one_or_none()
            if offset > (last or 0):
                raise ValueError(
                    f"offset {offset} was never published to {subscriber}'s log of {stream} "
                    f"(last offset {last or 0})"
                )
            # One conditional UPDATE: concurrent acks never move the position back.
            conn.execute(
                update(_POSITIONS)
                .where(
                    _POSITIONS.c.stream == stream,
                    _POSITIONS.c.subscriber == subscriber,
                    _POSITIONS.c.acked < offset,
                )
                .values(acked=offset, updated_at=utcnow())
            )

    async def acked(self, stream: str, subscriber: str) -> int:
        check_log(stream, subscriber)
        return await asyncio.to_thread(self._acked, stream, subscriber)

    def _acked(self, stream: str, subscriber: str) -> int:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(_POSITIONS.c.acked).where(
                    _POSITIONS.c.stream == stream, _POSITIONS.c.subscriber == subscriber
                )
            ).scalar_one_or_none()
        return int(value or 0)

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        check_log(stream, subscriber)
        check_when(when)
        return await asyncio.to_thread(self._offset_at, stream, subscriber, when)

    def _offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(func.max(_LOG.c.offset)).where(
                    _LOG.c.stream == stream,
                    _LOG.c.subscriber == subscriber,
                    _LOG.c.published_at < when,
                )
            ).scalar_one_or_none()
            if value is not None:
                return int(value)
            # Nothing before ``when`` is left: everything still held is at or after it, so
            # replay starts just before the first one held (or at the log's end if empty).
            first = conn.execute(
                select(func.min(_LOG.c.offset)).where(
                    _LOG.c.stream == stream, _LOG.c.subscriber == subscriber
                )
            ).scalar_one_or_none()
            if first is not None:
                return int(first) - 1
            last = conn.execute(
                select(_POSITIONS.c.last_offset).where(
                    _POSITIONS.c.stream == stream, _POSITIONS.c.subscriber == subscriber
                )
            ).scalar_one_or_none()
        return int(last or 0)

    # --- retention ----------------------------------------------------------------------------
    async def trim(self, stream: str, *, before: datetime) -> int:
        check_stream(stream)
        check_when(before)
        return await asyncio.to_thread(self._trim, stream, before)

    def _trim(self, stream: str, before: datetime) -> int:
        # The counters in event_positions stay: offsets removed here are never handed out again.
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(_LOG).where(_LOG.c.stream == stream, _LOG.c.published_at < before)
            )
        return int(result.rowcount)

    async def close(self) -> None:
        # The engine belongs to the hub: it is disposed of there, not here.
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()
