"""Event records on the ledger, in the running city: public security publishes accidents,
transport's app pulls them; each node's batch reaches the hub's ledger with the batch's
digests in its request hash, ``qiao events records --verify`` confirms it from the node's
records, and finds out when a record's digest was changed afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import update
from typer.testing import CliRunner

from qiao.cli import app
from qiao.db import make_engine
from qiao.demo.people import generate_accidents
from qiao.events.record_models import EventRecord
from qiao.events.records import batch_hash, event_digest, ledger_index, list_records
from tests.integration.conftest import City, wait_for
from tests.integration.test_events import _publish, _pull

runner = CliRunner()


def _batch(city: City, dept: str, event_id: str) -> list[dict[str, Any]]:
    """The event records of the batch that holds ``event_id`` at ``dept``'s node, in order."""
    engine = make_engine(city.dep.node_db_url(dept))
    try:
        (row,) = list_records(engine, event_id=event_id)
        return list_records(engine, batch=row["batch"])
    finally:
        engine.dispose()


def _on_ledger(city: City, dept: str, batch: str) -> dict[str, Any]:
    engine = make_engine(city.dep.node_db_url(dept))
    try:
        # The node's submitter sends its outbox every half second here (bounded wait).
        (index,) = wait_for(lambda: (i := ledger_index(engine, batch)) is not None and (i,), 30)
    finally:
        engine.dispose()
    entry: dict[str, Any] = json.loads(
        httpx.get(f"{city.dep.hub_url}/ledger/entries/{index}", timeout=10).content
    )
    return entry


def _verify(city: City, dept: str, batch: str) -> Any:
    config = str(city.dep.nodes[dept].config)
    return runner.invoke(app, ["events", "records", "--config", config, "--verify", batch])


def test_published_and_delivered_batches_are_on_the_ledger_and_verify(city: City) -> None:
    accidents = generate_accidents(3)
    ids = [f"led-{a['accident_id']}-{city.db}" for a in accidents]
    r = _publish(city, [{**a, "event_id": i} for a, i in zip(accidents, ids, strict=True)])
    assert r.status_code == 202, r.text
    got = _pull(city, wait=5)
    assert got.status_code == 200, got.text
    delivered = {e["event_id"]: e for e in got.json()["events"]}
    assert set(ids) <= set(delivered)

    published = _batch(city, "police", ids[0])
    pulled = _batch(city, "transport", ids[0])
    # The publisher's digests are of the events as published (the id is not part of the
    # record), the subscriber's of the events as the app received them, masked.
    mine = [r for r in published if r["event_id"] in ids]
    assert [r["event_id"] for r in mine] == ids
    for row, a in zip(mine, accidents, strict=True):
        assert row["digest"] == event_digest(dict(a))[0]
        assert row["role"] == "publisher" and row["via"] == "publish"
    for row in pulled:
        assert row["digest"] == event_digest(delivered[row["event_id"]]["event"])[0]
        assert row["offset"] == delivered[row["event_id"]]["offset"]
        assert row["role"] == "subscriber" and row["via"] == "pull"

    for dept, rows, role, method in (
        ("police", published, "publisher", "PUBLISH"),
        ("transport", pulled, "subscriber", "DELIVER"),
    ):
        batch = rows[0]["batch"]
        entry = _on_ledger(city, dept, batch)
        assert (entry["exchange_id"], entry["role"], entry["method"]) == (batch, role, method)
        assert entry["node"] == city.dep.nodes[dept].name
        assert entry["request_hash"] == batch_hash((r["event_id"], r["digest"]) for r in rows)
        assert entry["request_bytes"] == sum(r["bytes"] for r in rows)
        result = _verify(city, dept, batch)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"verified: batch {batch}, {len(rows)} events")

    # Someone changes a delivered event's digest in the node's database: the ledger still
    # holds the hash of what was recorded at the time.
    batch = pulled[0]["batch"]
    engine = make_engine(city.dep.node_db_url("transport"))
    try:
        with engine.begin() as c:
            c.execute(
                update(EventRecord)
                .where(EventRecord.batch == batch, EventRecord.event_id == ids[1])
                .values(digest=event_digest({"forged": True})[0])
            )
    finally:
        engine.dispose()
    result = _verify(city, "transport", batch)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("not verified:") and "changed" in result.output

    listed = runner.invoke(
        app,
        [
            "events", "records", "--config", str(city.dep.nodes["police"].config),
            "--event-id", ids[2],
        ],
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    (shown,) = [json.loads(line) for line in listed.output.splitlines()]
    assert shown["event_id"] == ids[2] and shown["stream"].endswith("/traffic-accidents")
