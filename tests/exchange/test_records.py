import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

from qiao.db import make_engine, migrate
from qiao.exchange.models import ExchangeRecord
from qiao.exchange.records import Record, RecordWriter, recent_records


def _rec(i: int) -> Record:
    return Record(
        exchange_id=f"x{i}",
        role="consumer",
        client="CN/X/a",
        provider_org="P",
        resource="r",
        method="GET",
        path="/r1/P/r",
        started_at=datetime.now(UTC),
        status=200,
    )


async def test_every_awaited_record_is_committed(db_url: str) -> None:
    migrate("node", db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine, max_batch=50)
    try:
        await asyncio.gather(*(writer.write(_rec(i)) for i in range(500)))
        # Each write returned only after its commit: a fresh connection sees all of them.
        with make_engine(db_url).connect() as c:
            assert c.execute(select(func.count()).select_from(ExchangeRecord)).scalar() == 500
        assert writer.written == 500
        rows = recent_records(engine, 5)
        assert [r["exchange_id"] for r in rows] == [f"x{i}" for i in range(499, 494, -1)]
        assert rows[0]["started_at"].tzinfo is not None
        assert [r["exchange_id"] for r in recent_records(engine, exchange_id="x7")] == ["x7"]
    finally:
        writer.close()


async def test_a_failing_database_fails_the_write_loudly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'n.db'}"
    engine = make_engine(url)  # no migration: the table does not exist
    writer = RecordWriter(engine)
    try:
        try:
            await writer.write(_rec(1))
        except Exception as exc:
            assert "exchange_records" in str(exc)
        else:
            raise AssertionError("the write should have failed")
    finally:
        writer.close()
