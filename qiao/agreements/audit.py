"""Auditing the hub's stored agreements against themselves and against the ledger.

An agreement row holds the signed document, its SHA-256, both parties' signatures, copies of
a few of the document's fields (for the hub's queries) and the state, which is not signed
(docs/agreements.md, "Suspending, resuming, revoking"). Nodes check the hash and signatures of
every agreement they receive, so a changed document is never enforced. What a node cannot
check is what the signatures do not cover: the state, the copied columns, and a document
re-signed by whoever holds the hub's database and its key-wrapping file. The ledger settles
those: every agreement's creation (with its hash), every change of its state (with the
reason) and every organization's agreement key are administrative events on it.

``audit_agreements`` is part of ``qiao ledger verify`` (qiao.hub.app.open_ledger).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qiao.agreements.document import AgreementInvalid, AgreementState, verify
from qiao.agreements.models import AgreementRecord, OrganizationAgreementKey
from qiao.registry.models import AdminEvent

# The administrative actions that create an agreement (its hash goes on the ledger), and
# those that change its state (the ledger then holds the state it must be in).
CREATING = frozenset(
    {
        "agreement.subscribe",
        "agreement.create",
        "agreement.renew",
        "agreement.arrange-emergency",
    }
)
STATE_AFTER = {
    "agreement.suspend": AgreementState.SUSPENDED,
    "agreement.resume": AgreementState.ACTIVE,
    "agreement.revoke": AgreementState.REVOKED,
    **{action: AgreementState.ACTIVE for action in CREATING},
}
KEY_CREATED = "agreement-key.create"


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _on_ledger(entries: Iterable[tuple[int, bytes]]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The agreement events on the ledger (agreement id → [(index, action, detail)] in log
    order) and the agreement keys it recorded (org → (index, public key))."""
    agreements: dict[str, list[Any]] = {}
    keys: dict[str, Any] = {}
    for index, data in entries:
        # Most entries are exchange records: skip them without parsing.
        if b'"agreement' not in data:
            continue
        try:
            entry = json.loads(data)
        except ValueError:
            continue  # the log's own verification names an entry that is not JSON
        if not isinstance(entry, dict) or entry.get("type") != "admin":
            continue
        action, detail = entry.get("action"), entry.get("detail")
        if not isinstance(detail, dict):
            continue
        if action == KEY_CREATED and isinstance(detail.get("org"), str):
            keys.setdefault(detail["org"], (index, detail.get("public_key")))
        elif action in STATE_AFTER and isinstance(detail.get("agreement"), str):
            agreements.setdefault(detail["agreement"], []).append((index, action, detail))
    return agreements, keys


def audit_agreements(
    sessions: sessionmaker[Session], entries: Iterable[tuple[int, bytes]]
) -> list[str]:
    """One line per discrepancy between the stored agreements, their signatures, their copied
    columns, the organizations' agreement keys and the ledger's ``entries``; [] when all agree.

    Agreements whose latest events have not reached the ledger yet (the admin outbox is
    pumped every cosigning round) are checked against the ledger up to what it holds."""
    on_ledger, keys_on_ledger = _on_ledger(entries)
    with sessions() as s:
        rows = list(s.scalars(select(AgreementRecord).order_by(AgreementRecord.id)))
        key_rows = list(s.scalars(select(OrganizationAgreementKey)))
        pending = [
            json.loads(detail)
            for detail in s.scalars(
                select(AdminEvent.detail).where(
                    AdminEvent.ledger_index.is_(None), AdminEvent.action.in_(STATE_AFTER)
                )
            )
        ]
    not_yet = {d.get("agreement") for d in pending if isinstance(d, dict)}
    findings: list[str] = []

    keys: dict[str, Ed25519PublicKey] = {}
    for k in key_rows:
        try:
            keys[k.org_code] = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(k.public_key, validate=True)
            )
        except (binascii.Error, ValueError):
            findings.append(f"agreement key of {k.org_code}: not a base64 Ed25519 public key")
        recorded = keys_on_ledger.get(k.org_code)
        # Keys created before the ledger recorded them carry no public key in the event.
        if recorded is not None and recorded[1] and recorded[1] != k.public_key:
            findings.append(
                f"agreement key of {k.org_code}: {k.public_key} is stored, ledger entry "
                f"{recorded[0]} recorded {recorded[1]} (the key was replaced)"
            )

    stored_ids = set()
    for row in rows:
        stored_ids.add(row.id)
        where = f"agreement {row.id}"
        try:
            document = json.loads(row.document)
        except ValueError:
            findings.append(f"{where}: its document is not JSON")
            continue
        signatures = {"provider": row.provider_signature, "consumer": row.consumer_signature}
        try:
            doc = verify(document, row.sha256, signatures, keys)
        except AgreementInvalid as exc:
            findings.append(f"{where}: {exc}")
            doc = None
        if doc is not None:
            copies = {
                "id": (row.id, doc.id),
                "provider_org": (row.provider_org, doc.provider.org),
                "consumer_org": (row.consumer_org, doc.consumer.org),
                "resource": (row.resource, doc.resource.code),
                "request_id": (row.request_id, doc.request),
                "renews": (row.renews, doc.renews),
                "valid_until": (_as_utc(row.valid_until), _as_utc(doc.valid_until)),
                "emergency_only": (bool(row.emergency_only), doc.conditions.emergency_only),
            }
            for column, (stored, signed) in copies.items():
                if stored != signed:
                    findings.append(
                        f"{where}: column {column} holds {stored!r}, the signed document {signed!r}"
                    )
        events = on_ledger.get(row.id, [])
        created = [(i, d) for i, action, d in events if action in CREATING]
        if not created:
            if row.id not in not_yet:
                findings.append(f"{where}: its creation is not on the ledger (inserted?)")
            continue
        index, detail = created[0]
        if detail.get("sha256") != row.sha256:
            findings.append(
                f"{where}: SHA-256 {row.sha256} is stored, ledger entry {index} recorded "
                f"{detail.get('sha256')} (the document was replaced)"
            )
        if row.id in not_yet:
            continue  # a state change is on its way to the ledger
        last_index, last_action, last_detail = events[-1]
        expected = STATE_AFTER[last_action]
        if row.state != expected.value:
            findings.append(
                f"{where}: state {row.state!r} is stored, the ledger's last change "
                f"(entry {last_index}, {last_action}) leaves it {expected.value!r}"
            )
        # A new agreement has no reason; a change records its own.
        reason = "" if last_action in CREATING else str(last_detail.get("reason", ""))
        if row.state_reason != reason:
            findings.append(
                f"{where}: reason {row.state_reason!r} is stored, ledger entry {last_index} "
                f"recorded {reason!r}"
            )
    for missing in sorted(set(on_ledger) - stored_ids):
        first = on_ledger[missing][0][0]
        findings.append(
            f"agreement {missing}: on the ledger (entry {first}) but not in the database (deleted?)"
        )
    return findings
