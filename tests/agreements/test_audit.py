"""Auditing the stored agreements against their signatures and the ledger
(qiao.agreements.audit, part of `qiao ledger verify`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update

from qiao.agreements.audit import audit_agreements
from qiao.agreements.models import (
    AgreementEvent,
    AgreementRecord,
    OrganizationAgreementKey,
    SharingRequest,
)
from qiao.canonical import canonical_json
from qiao.registry.models import AdminEvent
from tests.agreements.conftest import World
from tests.agreements.test_service import _approved


def _ledger(w: World) -> list[tuple[int, bytes]]:
    """The admin events as the hub's ledger holds them (HubLedger.pump_admin_events)."""
    with w.registry._sessions.begin() as s:
        events = list(s.scalars(select(AdminEvent).order_by(AdminEvent.id)))
        entries = []
        for i, e in enumerate(events):
            e.ledger_index = i
            entries.append(
                (
                    i,
                    canonical_json(
                        {
                            "type": "admin",
                            "event_id": e.id,
                            "action": e.action,
                            "actor": e.actor,
                            "at": e.created_at.isoformat(),
                            "detail": json.loads(e.detail),
                        }
                    ),
                )
            )
    return entries


def _alter(w: World, table: Any, where: Any, **values: Any) -> None:
    with w.registry._sessions.begin() as s:
        s.execute(update(table).where(where).values(**values))


def test_untouched_agreements_agree_with_the_ledger(world: World) -> None:
    _, agr = _approved(world)
    world.service.suspend(world.approver, agr, "核查")
    assert audit_agreements(world.registry._sessions, _ledger(world)) == []


@pytest.mark.parametrize(
    "values,found",
    [
        ({"state": "active"}, "the ledger's last change"),
        ({"state_reason": "另一个理由"}, "reason"),
        ({"sha256": "0" * 64}, "SHA-256"),
        ({"provider_signature": "AAAA"}, "signature"),
        ({"valid_until": datetime(2099, 1, 1, tzinfo=UTC)}, "column valid_until"),
        ({"emergency_only": True}, "column emergency_only"),
        ({"resource": "other"}, "column resource"),
    ],
)
def test_each_altered_column_is_named(world: World, values: dict[str, Any], found: str) -> None:
    _, agr = _approved(world)
    world.service.suspend(world.approver, agr, "核查")
    entries = _ledger(world)
    _alter(world, AgreementRecord, AgreementRecord.id == agr, **values)
    findings = audit_agreements(world.registry._sessions, entries)
    assert any(f"agreement {agr}" in f and found in f for f in findings), findings


def test_a_document_re_signed_with_the_hubs_keys_is_caught_by_the_ledgers_hash(
    world: World,
) -> None:
    # Whoever holds the hub's database and wrapping key can re-sign a widened document; the
    # hash recorded on the ledger at its creation still tells.
    _, agr = _approved(world)
    entries = _ledger(world)
    with world.registry._sessions.begin() as s:
        row = s.get(AgreementRecord, agr)
        assert row is not None
        doc = json.loads(row.document)
        doc["conditions"]["daily_quota"] = 10**6
        from qiao.agreements.document import digest, sign

        row.document = canonical_json(doc).decode()
        row.sha256 = digest(doc)
        row.provider_signature = sign(
            world.service.keys.private_key(s, doc["provider"]["org"]), doc
        )
        row.consumer_signature = sign(
            world.service.keys.private_key(s, doc["consumer"]["org"]), doc
        )
    findings = audit_agreements(world.registry._sessions, entries)
    assert any("the document was replaced" in f for f in findings), findings


def test_a_replaced_key_and_a_deleted_agreement_are_reported(world: World) -> None:
    _, agr = _approved(world)
    entries = _ledger(world)
    with world.registry._sessions() as s:
        org = s.scalars(select(OrganizationAgreementKey.org_code)).first()
    _alter(
        world,
        OrganizationAgreementKey,
        OrganizationAgreementKey.org_code == org,
        public_key="A" * 43 + "=",
    )
    findings = audit_agreements(world.registry._sessions, entries)
    assert any(f"agreement key of {org}" in f and "replaced" in f for f in findings), findings
    with world.registry._sessions.begin() as s:
        s.execute(AgreementEvent.__table__.delete().where(AgreementEvent.agreement_id == agr))
        s.execute(SharingRequest.__table__.update().values(agreement_id=""))
        s.execute(AgreementRecord.__table__.delete().where(AgreementRecord.id == agr))
    findings = audit_agreements(world.registry._sessions, entries)
    assert any(f"agreement {agr}: on the ledger" in f for f in findings), findings


def test_a_reason_given_to_a_new_agreement_is_reported(world: World) -> None:
    _, agr = _approved(world)
    entries = _ledger(world)
    _alter(world, AgreementRecord, AgreementRecord.id == agr, state_reason="已撤销")
    findings = audit_agreements(world.registry._sessions, entries)
    assert any(f"agreement {agr}: reason" in f for f in findings), findings


def test_changes_not_yet_on_the_ledger_are_not_findings(world: World) -> None:
    _, agr = _approved(world)
    entries = _ledger(world)
    world.service.revoke(world.approver, agr, "业务终止")  # pending in the admin outbox
    assert audit_agreements(world.registry._sessions, entries) == []
