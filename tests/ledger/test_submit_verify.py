"""``qiao node records --verify`` (qiao.ledger.submit.verify_records): each of a node's
exchange records the hub accepted is compared with its ledger entry, field by field."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from qiao.canonical import canonical_json
from qiao.db import make_engine, migrate
from qiao.exchange.models import ExchangeRecord
from qiao.ledger.exchanges import ENTRY_FIELDS, ledger_entry, record_for_ledger
from qiao.ledger.submit import verify_records

NODE = "transport-node"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate("node", url)
    eng = make_engine(url)
    with eng.begin() as c:
        for i in range(4):
            c.execute(
                insert(ExchangeRecord).values(
                    exchange_id=f"ex-{i}",
                    role="consumer",
                    client="CN-DEMO/11440300C9PQT56L15/traffic-enforcement",
                    provider_org="114403000DM95UY1XR",
                    resource="vehicle-violations",
                    method="GET",
                    path="/r1/x?plate=1",
                    purpose="traffic-enforcement",
                    started_at=datetime(2026, 11, 29, 3, 0, i, 120000, tzinfo=UTC),
                    duration_ms=4.113 + i,
                    status=200,
                    request_hash="aa" * 32,
                    response_hash="bb" * 32,
                    response_bytes=367,
                    agreement="agr-1" if i % 2 else "",
                    ledger_index=10 + i if i < 3 else None,  # the last one still pending
                )
            )
    yield eng
    eng.dispose()


def _ledger(engine: Engine) -> dict[int, bytes]:
    """What the hub appended for each record (ExchangeLedger.submit's entries)."""
    with engine.connect() as c:
        rows = list(c.execute(select(ExchangeRecord.__table__)).mappings())
    return {
        r["ledger_index"]: canonical_json(
            ledger_entry("CN-DEMO", NODE, "114403000DM95UY1XR", record_for_ledger(r))
        )
        for r in rows
        if r["ledger_index"] is not None
    }


def test_untouched_records_match_their_entries(engine: Engine) -> None:
    audit = verify_records(engine, NODE, _ledger(engine).get)
    assert (audit.checked, audit.pending, audit.findings) == (3, 1, [])


@pytest.mark.parametrize("column", [*ENTRY_FIELDS, "agreement", "id", "ledger_index"])
def test_every_field_on_the_ledger_is_checked(engine: Engine, column: str) -> None:
    entries = _ledger(engine)
    with engine.connect() as c:
        value: Any = c.execute(
            select(ExchangeRecord.__table__.c[column]).where(ExchangeRecord.id == 2)
        ).scalar_one()
    changed = {
        datetime: lambda v: v.replace(second=59),
        float: lambda v: v + 1.5,
        int: lambda v: v + 100,
        str: lambda v: v + "x",
    }[type(value)](value)
    if column == "ledger_index":
        changed = value + 1  # another record's entry
    with engine.begin() as c:
        c.execute(update(ExchangeRecord).where(ExchangeRecord.id == 2).values({column: changed}))
    record_id = changed if column == "id" else 2
    (finding,) = verify_records(engine, NODE, entries.get).findings
    assert finding.startswith(f"record {record_id} ") and "on the ledger" in finding, finding


def test_another_nodes_entries_do_not_pass(engine: Engine) -> None:
    entries = _ledger(engine)
    audit = verify_records(engine, "police-node", entries.get)
    assert len(audit.findings) == 3 and all("node:" in f for f in audit.findings)
    assert "no such entry" in verify_records(engine, NODE, {}.get).findings[0]


def test_the_command_reads_the_entries_from_the_hub(engine: Engine, tmp_path: Path) -> None:
    # `qiao node records --verify` against a hub serving GET /ledger/entries/{index}.
    from aiohttp import web
    from typer.testing import CliRunner

    from qiao.cli import app
    from qiao.demo.processes import write_toml
    from tests.integration.conftest import LoopThread

    entries = _ledger(engine)

    async def entry(request: web.Request) -> web.Response:
        data = entries.get(int(request.match_info["index"]))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/json")

    hub = web.Application()
    hub.router.add_get("/ledger/entries/{index}", entry)
    loop = LoopThread()
    try:
        url = loop.serve(hub)
        config = write_toml(
            tmp_path / "node.toml", {"name": NODE, "data_dir": str(tmp_path), "hub_url": url}
        )
        runner = CliRunner()
        ok = runner.invoke(app, ["node", "--config", str(config), "records", "--verify"])
        assert ok.exit_code == 0, ok.output
        assert "3 records match their ledger entries; 1 not on the ledger yet" in ok.output
        with engine.begin() as c:
            c.execute(update(ExchangeRecord).where(ExchangeRecord.id == 1).values(status=500))
        bad = runner.invoke(app, ["node", "--config", str(config), "records", "--verify"])
        assert bad.exit_code == 1, bad.output
        assert "record 1 " in bad.output and "status: 500 here, 200 on the ledger" in bad.output
    finally:
        loop.close()
