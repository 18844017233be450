"""The node's ledger submitter (qiao.ledger.submit): its loop outlives a database that drops
its connection mid-batch, and the batch sent again gets the indices the hub gave it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import event, insert
from sqlalchemy.exc import OperationalError

from qiao import pki
from qiao.db import make_engine, migrate
from qiao.exchange.models import ExchangeRecord
from qiao.ledger import submit
from qiao.ledger.submit import LedgerSubmitter


def _record(i: int) -> dict[str, Any]:
    return {
        "exchange_id": f"ex-{i}",
        "role": "consumer",
        "client": "CN-DEMO/11440300C9PQT56L15/traffic-enforcement",
        "provider_org": "114403000DM95UY1XR",
        "resource": "vehicle-violations",
        "method": "GET",
        "path": "",
        "started_at": datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        "duration_ms": 1.0,
        "status": 200,
    }


async def test_a_dropped_database_connection_does_not_stop_the_submissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate("node", url)
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(insert(ExchangeRecord), [_record(i) for i in range(3)])
    key_file = tmp_path / "node.key"
    key_file.write_bytes(pki.key_to_pem(pki.generate_private_key()))
    identity: Any = SimpleNamespace(name="transport-node", fingerprint="ab" * 32, key_file=key_file)

    # The hub: appends each record once, so a batch sent again gets the same indices.
    appended: dict[int, int] = {}
    posts: list[list[int]] = []

    def hub(request: httpx.Request) -> httpx.Response:
        batch = json.loads(json.loads(request.content)["batch"])
        ids = [r["record_id"] for r in batch["records"]]
        posts.append(ids)
        return httpx.Response(
            200, json={"indices": [appended.setdefault(i, len(appended)) for i in ids]}
        )

    real_client = httpx.Client
    monkeypatch.setattr(
        submit.httpx, "Client", lambda: real_client(transport=httpx.MockTransport(hub))
    )

    # The database drops the connection once, as PostgreSQL does under pg_terminate_backend:
    # after the hub took the batch, while the node stores the indices it returned.
    dropped: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def drop_once(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not dropped:
            dropped.append(statement)
            raise OperationalError(statement, {}, Exception("terminating connection"))

    submitter = LedgerSubmitter(engine, identity, "http://hub.invalid")
    task = asyncio.create_task(submitter.run(0.01))
    try:
        for _ in range(500):  # at most 5 s
            if submitter.pending() == 0 or task.done():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
    engine.dispose()

    # The loop did not end on the error (only our cancel ended it) and caught up.
    assert isinstance(results[0], asyncio.CancelledError), results
    assert dropped, "the database never dropped the connection: the test proved nothing"
    assert submitter.pending() == 0
    assert submitter.submitted == 3
    # The batch went twice and kept its indices; each record is on the ledger once.
    assert posts == [[1, 2, 3], [1, 2, 3]]
    assert appended == {1: 0, 2: 1, 3: 2}
