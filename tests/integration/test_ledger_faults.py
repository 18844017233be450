"""Ledger faults with real processes: a witness away, a hub killed mid-submission, a fork."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from qiao.db import make_engine
from qiao.demo.backends import public_security
from qiao.demo.city import Deployment
from qiao.demo.people import build_city
from qiao.exchange.models import ExchangeRecord
from qiao.ledger import note
from tests.integration.conftest import LoopThread, wait_for

T = ("transport", "traffic-enforcement")


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    loop = LoopThread()
    dep = Deployment(data_dir=tmp_path_factory.mktemp("ledger-faults"))
    dep.backend_urls = {"police": loop.serve(public_security(build_city()))}
    try:
        reg = dep.start_hub()
        dep.start_nodes(reg, only={"police", "transport", "market"})
        yield dep
    finally:
        dep.stop()
        loop.close()


def _call(dep: Deployment) -> httpx.Response:
    node = dep.nodes["transport"]
    return httpx.get(
        f"{node.url}/r1/{dep.codes['police']}/vehicle-violations",
        params={"plate": "粤B00000"},
        headers={
            "X-Qiao-Client": dep.client(*T),
            "Authorization": f"Bearer {node.api_keys[T[1]]}",
            "X-Qiao-Purpose": "traffic-enforcement",
        },
        timeout=10,
    )


def _status(dep: Deployment) -> dict[str, Any]:
    return httpx.get(f"{dep.hub_url}/ledger/status", timeout=5).json()  # type: ignore[no-any-return]


def _pending(dep: Deployment, dept: str) -> int:
    eng = make_engine(dep.node_db_url(dept))
    with eng.connect() as c:
        n = c.execute(
            select(func.count())
            .select_from(ExchangeRecord)
            .where(ExchangeRecord.ledger_index.is_(None))
        ).scalar_one()
    eng.dispose()
    return int(n)


def test_a_witness_away_does_not_stop_cosigning_and_catches_up(town: Deployment) -> None:
    assert _call(town).status_code == 200
    market = town.nodes["market"]
    market.process.stop()
    try:
        size_before = _status(town)["size"]
        for _ in range(5):
            assert _call(town).status_code == 200
        # Two of three witnesses are enough for the quorum.
        wait_for(lambda: _status(town)["cosigned_size"] > size_before)
        away = next(w for w in _status(town)["witnesses"] if w["name"].endswith("market-node"))
        assert away.get("last_error")
    finally:
        market.process.start()
        market.process.wait_healthy()
    for _ in range(3):
        _call(town)
    size = _status(town)["size"]

    def caught_up() -> bool:
        w = next(w for w in _status(town)["witnesses"] if w["name"].endswith("market-node"))
        return w.get("size", 0) >= size and not w.get("last_error")

    wait_for(caught_up)


def test_hub_killed_while_nodes_submit_loses_and_duplicates_nothing(town: Deployment) -> None:
    assert town.hub is not None
    for i in range(60):
        assert _call(town).status_code == 200
        if i == 20:
            town.hub.kill()  # kill -9 while the nodes are submitting
    # The nodes keep serving (cached configuration) and keep their records.
    assert _pending(town, "transport") > 0
    town.hub.start()
    town.hub.wait_healthy()
    wait_for(lambda: _pending(town, "transport") == 0 and _pending(town, "police") == 0, 60)
    health = httpx.get(f"{town.nodes['transport'].url}/healthz").json()["ledger"]
    assert health["pending"] == 0 and health["submitted"] > 0
    # Every record is in the ledger exactly once.
    seen: dict[tuple[str, int], int] = {}
    size = _status(town)["size"]
    for index in range(size):
        entry = json.loads(httpx.get(f"{town.hub_url}/ledger/entries/{index}").content)
        if entry["type"] != "exchange":
            continue
        key = (entry["node"], entry["record_id"])
        assert key not in seen, f"{key} appended twice: {seen[key]} and {index}"
        seen[key] = index
    for dept in ("transport", "police"):
        eng = make_engine(town.node_db_url(dept))
        with eng.connect() as c:
            rows = c.execute(select(ExchangeRecord.id, ExchangeRecord.ledger_index)).all()
        eng.dispose()
        for rid, index in rows:
            assert seen[(f"{dept}-node", rid)] == index


def test_a_forked_checkpoint_is_refused_and_alerted(town: Deployment) -> None:
    # Someone with the log's key shows a witness a different history of the same size.
    signer = note.Signer.from_text((town.data_dir / "hub" / "ledger-signing.key").read_text())
    witness = town.nodes["police"]
    url = f"{witness.url}/witness/add-checkpoint"
    wait_for(lambda: _status(town)["cosigned_size"])

    def fork_once() -> bool:
        # Ask the witness what it holds (a 409 names its size), then contradict it.
        probe = note.sign_note(note.Checkpoint(signer.name, 1, b"\0" * 32).format(), [signer])
        held = httpx.post(url, content=b"old 0\n\n" + probe)
        assert held.status_code == 409, held.text
        size = int(held.text.strip())
        other_root = hashlib.sha256(b"another history").digest()
        forged = note.sign_note(note.Checkpoint(signer.name, size, other_root).format(), [signer])
        r = httpx.post(url, content=f"old {size}\n\n".encode() + forged)
        # c2sp.org/tlog-witness: a different root for the stored size is a 409 with that size.
        assert r.status_code == 409, r.text
        alerts = httpx.get(f"{witness.url}/healthz").json()["witness"]["alerts"]
        return any(a["kind"] == "inconsistent-checkpoint" for a in alerts)

    # The hub may advance the witness between the two requests; then the second is merely
    # stale. Within a few tries the contradiction lands and the operator sees the alert.
    assert any(fork_once() for _ in range(5))


def test_ledger_verify_names_a_tampered_entry(town: Deployment, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qiao.cli import app

    cfg = str(town.data_dir / "hub" / "hub.toml")
    runner = CliRunner()
    assert town.hub is not None
    town.hub.stop()  # an auditor's copy of the database: nothing else writes to it
    ok = runner.invoke(app, ["ledger", "--config", cfg, "verify"])
    assert ok.exit_code == 0, ok.output
    eng = make_engine(f"sqlite:///{(town.data_dir / 'hub' / 'hub.db').resolve()}")
    with eng.begin() as c:
        from sqlalchemy import text

        c.execute(
            text("UPDATE ledger_entries SET entry = :e WHERE idx = 3"), {"e": b'{"tampered":true}'}
        )
    eng.dispose()
    bad = runner.invoke(app, ["ledger", "--config", cfg, "verify"])
    assert bad.exit_code == 1, bad.output
    assert "entry 3" in bad.output or "index 3" in bad.output, bad.output
