"""The hub's composed ledger (qiao.ledger.service.HubLedger): its audit reports damage."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete

from qiao.config import HubSettings
from qiao.hub.app import open_ledger, open_registry
from qiao.ledger.cosigning import CosignedCheckpoint
from qiao.ledger.models import LedgerTile


def test_verify_reports_cosigned_checkpoints_the_tiles_cannot_prove(tmp_path: Path) -> None:
    # With tiles deleted, the root of a cosigned checkpoint cannot be recomputed: a finding
    # for that checkpoint, not an IndexError out of `qiao ledger verify`.
    settings = HubSettings.load(None, data_dir=tmp_path, instance="CN-T")
    registry = open_registry(settings)
    ledger = open_ledger(settings, registry)
    ledger.store.append([(f"k{i}", b"entry %d" % i) for i in range(300)])
    signed = ledger.store.sign_checkpoint()
    with ledger.exchanges.sessions.begin() as s:
        s.add(CosignedCheckpoint(size=300, note=signed, cosignatures=0, quorum_met=False))
    assert ledger.verify() == []
    with registry.engine.begin() as c:
        c.execute(delete(LedgerTile).where(LedgerTile.level == 1))
    findings = open_ledger(settings, registry).verify()  # no tiles cached from before
    assert any(
        "cosigned checkpoint 300: the stored tiles cannot give its root" in f for f in findings
    )
    registry.engine.dispose()


def test_verify_compares_the_exchange_index_with_the_entries(tmp_path: Path) -> None:
    # Receipts and audit searches read ledger_exchanges; a row changed there (or missing)
    # would hand out another exchange's receipt or hide one (reliability/test_tamper.py).
    from sqlalchemy import update

    from qiao.canonical import canonical_json
    from qiao.ledger.exchanges import LedgerExchange, ledger_entry

    settings = HubSettings.load(None, data_dir=tmp_path, instance="CN-T")
    registry = open_registry(settings)
    ledger = open_ledger(settings, registry)
    org = "114403000DM95UY1XR"
    records = [
        {
            "record_id": i,
            "exchange_id": f"ex-{i}",
            "role": "provider",
            "client": "CN-T/91350100M000100Y43/app",
            "provider_org": org,
            "resource": "vehicle-violations",
            "method": "GET",
            "purpose": "traffic-enforcement",
            "end_user": "",
            "peer_node": "transport-node",
            "started_at": "2026-11-29T03:20:41.120000+00:00",
            "duration_ms": 4.113,
            "status": 200,
            "problem_type": "",
            "request_bytes": 0,
            "response_bytes": 367,
            "request_hash": "aa" * 32,
            "response_hash": "bb" * 32,
        }
        for i in range(3)
    ]
    indices = ledger.store.append(
        [
            (
                f"exchange:police-node:{r['record_id']}",
                canonical_json(ledger_entry("CN-T", "police-node", org, r)),
            )
            for r in records
        ]
    )
    ledger.exchanges._remember("police-node", org, records, indices)
    assert ledger.verify() == []
    with registry.engine.begin() as c:
        c.execute(update(LedgerExchange).where(LedgerExchange.idx == 1).values(exchange_id="ex-9"))
        c.execute(delete(LedgerExchange).where(LedgerExchange.idx == 2))
    findings = ledger.verify()
    assert any("exchange index row 1: exchange_id 'ex-9', entry 'ex-1'" in f for f in findings)
    assert any("entry 2: missing from the exchange index" in f for f in findings), findings
    registry.engine.dispose()
