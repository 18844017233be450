"""Durable exchange records with group commit.

Each handler hands its record to the writer and awaits the commit before it finishes the
response, so an exchange the app saw completed is on disk (WAL, synchronous=NORMAL survives a
process crash). One writer thread commits whatever is queued in a single transaction, so the
cost of a commit is shared by all exchanges that arrived during the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, insert, select

from qiao.exchange.models import ExchangeRecord

log = logging.getLogger("qiao.exchange.records")


@dataclass
class Record:
    exchange_id: str
    role: str
    client: str
    provider_org: str
    resource: str
    method: str
    path: str
    started_at: datetime
    purpose: str = ""
    end_user: str = ""
    peer_node: str = ""
    duration_ms: float = 0.0
    status: int = 0
    problem_type: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    request_hash: str = ""
    response_hash: str = ""
    # The agreement the call was decided under (its id; "" if refused before one was found)
    # and the emergency that admitted it, if only one did (flagged for review afterwards).
    agreement: str = ""
    emergency: str = ""


Waiter = tuple[asyncio.AbstractEventLoop, list[asyncio.Future[None]]]
# Rows of another node table that commit in the same transaction as a record (the event
# records of a batch with the batch's exchange record, qiao.events.records).
Companions = tuple[Table, Sequence[dict[str, Any]]]


class RecordWriter:
    """Commits records in batches on a background thread; ``await write(rec)`` is durable.

    Hand-offs are batched at both ends: records written during one turn of the event loop
    cross to the writer thread together, and each commit wakes each loop once, not once per
    record (every cross-thread wake-up is a system call)."""

    _STOP = object()

    def __init__(self, engine: Engine, max_batch: int = 1000) -> None:
        self._engine = engine
        self._insert = _RawInsert(engine, ExchangeRecord.__table__)  # type: ignore[arg-type]
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[
            asyncio.AbstractEventLoop, tuple[list[Any], list[Any], list[Companions]]
        ] = {}
        self._thread = threading.Thread(target=self._run, name="qiao-records", daemon=True)
        self.written = 0
        self.commits = 0
        self._thread.start()

    @property
    def engine(self) -> Engine:
        """The node's store (the rate limiters seed their counts from its records)."""
        return self._engine

    async def write(self, record: Record, companions: Companions | None = None) -> None:
        """Commit ``record`` (and ``companions``, rows of another table, in the same
        transaction); returns once they are durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = ([], [], [])
            loop.call_soon(self._hand_over, loop)
        # A shallow copy is all a record needs (its fields are immutable values) and costs a
        # fraction of dataclasses.asdict's deep copy on the hot path.
        pending[0].append(dict(record.__dict__))
        pending[1].append(fut)
        if companions is not None:
            pending[2].append(companions)
        await fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        rows, futures, companions = self._pending.pop(loop)
        self._queue.put((rows, (loop, futures), companions))

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(self._STOP)
        self._thread.join(timeout)
        self._insert.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            rows: list[dict[str, Any]] = []
            waiters: list[Waiter] = []
            companions: list[Companions] = []
            extra = 0  # companion rows count towards a transaction's size too
            while True:
                if item is self._STOP:
                    stopping = True
                else:
                    rows.extend(item[0])
                    waiters.append(item[1])
                    companions.extend(item[2])
                    extra += sum(len(c[1]) for c in item[2])
                if stopping or len(rows) + extra >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if rows:
                self._commit(rows, waiters, companions)

    def _commit(
        self, rows: list[dict[str, Any]], waiters: list[Waiter], companions: list[Companions]
    ) -> None:
        error: BaseException | None = None
        for attempt in range(5):
            try:
                self._insert(rows, companions)
                error = None
                break
            except Exception as exc:  # database briefly unavailable: retry, then report
                error = exc
                log.warning(
                    "writing %d exchange records failed (attempt %d): %s",
                    len(rows),
                    attempt + 1,
                    exc,
                )
                threading.Event().wait(0.2 * (attempt + 1))
        self.written += len(rows) if error is None else 0
        self.commits += 1
        for loop, futures in waiters:
            loop.call_soon_threadsafe(_settle, futures, error)


class _RawInsert:
    """An INSERT compiled once for the engine's dialect and run with the driver's own
    ``executemany``: SQLAlchemy's per-statement work (cache keys, result set-up) was the
    largest cost of writing records (see BENCHMARKS.md). Bind processors still apply, so the
    stored values are exactly what the ORM would write and read back."""

    def __init__(self, engine: Engine, table: Table, columns: list[str] | None = None) -> None:
        self._engine = engine
        dialect = engine.dialect
        columns = columns or [f.name for f in fields(Record)]
        compiled = insert(table).compile(dialect=dialect, column_keys=columns)
        self._sql = str(compiled)
        self._names = list(compiled.positiontup or []) if compiled.positional else None
        self._raw: Any = None
        self._processors = {
            c.name: proc
            for c in table.columns
            if (proc := c.type._cached_bind_processor(dialect)) is not None
        }
        # Statements for companion tables, compiled on first use (keyed by table).
        self._companions: dict[Table, _RawInsert] = {}

    def _params(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        params: list[Any] = []
        for row in rows:
            values = dict(row)
            for name, proc in self._processors.items():
                if name in values:
                    values[name] = proc(values[name])
            params.append([values[n] for n in self._names] if self._names else values)
        return params

    def __call__(self, rows: list[dict[str, Any]], companions: Sequence[Companions] = ()) -> None:
        params = self._params(rows)
        others: dict[Table, list[Any]] = {}
        for table, extra in companions:
            stmt = self._companions.get(table)
            if stmt is None:
                columns = [c.name for c in table.columns if not c.primary_key]
                stmt = self._companions[table] = _RawInsert(self._engine, table, columns)
            others.setdefault(table, []).extend(stmt._params(extra))
        # The writer thread keeps one connection for itself instead of a pool checkout per
        # batch (each check-in costs a rollback round trip).
        if self._raw is None:
            self._raw = self._engine.raw_connection()
        raw = self._raw
        try:
            cur = raw.cursor()
            cur.executemany(self._sql, params)
            for table, table_params in others.items():
                if table_params:
                    cur.executemany(self._companions[table]._sql, table_params)
            cur.close()
            raw.commit()
        except BaseException:
            self._raw = None
            try:
                raw.invalidate()  # the next batch starts on a fresh connection
            finally:
                raise

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():  # the exchange was cancelled (the caller went away)
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def recent_records(engine: Engine, limit: int = 50, exchange_id: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        q = select(ExchangeRecord.__table__).order_by(ExchangeRecord.id.desc()).limit(limit)
        if exchange_id:
            q = q.where(ExchangeRecord.exchange_id == exchange_id)
        return list(conn.execute(q).mappings())
