"""A node's signed submissions to the ledger: only a certificate that is neither revoked nor
expired vouches for a batch (qiao.ledger.exchanges.ExchangeLedger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from qiao import pki
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.ledger.exchanges import ENTRY_FIELDS, encode_batch, sign_batch
from qiao.registry.models import Certificate

ORG = "91350100M000100Y43"


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    settings = HubSettings.load(
        None,
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'hub.db'}",
        instance="CN-T",
        public_url="https://hub.test",
        ledger_interval_seconds=3600,
    )
    registry = open_registry(settings)
    registry.add_organization(ORG, "甲局")
    token, _ = registry.create_enrollment_token(ORG)
    key = pki.generate_private_key()
    csr = pki.csr_to_pem(pki.create_csr(key, "a-node", ORG)).decode()
    cert = registry.enroll(token, csr, "a-node", "https://127.0.0.1:9443").certificate_pem
    fingerprint = pki.fingerprint(pki.load_cert_pem(cert.encode()))
    client = TestClient(create_app(settings, registry), base_url="https://hub.test")
    return client, registry, key, fingerprint


def _submission(key: Any, fingerprint: str, record_id: int) -> dict[str, str]:
    rec: dict[str, Any] = {name: "" for name in ENTRY_FIELDS}
    rec.update(record_id=record_id, exchange_id=f"x-{record_id}", role="consumer", status=200)
    batch = encode_batch("a-node", [rec])
    return {
        "node": "a-node",
        "fingerprint": fingerprint,
        "batch": batch.decode(),
        "signature": sign_batch(key, batch),
    }


def test_a_batch_sent_twice_gets_the_same_indices(hub: Any) -> None:
    client, _registry, key, fingerprint = hub
    body = _submission(key, fingerprint, 1)
    first = client.post("/api/v1/ledger/submissions", json=body)
    assert first.status_code == 200, first.text
    assert client.post("/api/v1/ledger/submissions", json=body).json() == first.json()


def test_an_expired_node_certificate_vouches_for_nothing(hub: Any) -> None:
    client, registry, key, fingerprint = hub
    with sessionmaker(bind=registry.engine).begin() as s:
        s.execute(
            update(Certificate)
            .where(Certificate.fingerprint == fingerprint)
            .values(not_after=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = client.post("/api/v1/ledger/submissions", json=_submission(key, fingerprint, 2))
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "urn:qiao:problem:hub:forbidden"
    assert "expired" in r.json()["detail"]


def test_a_revoked_node_certificate_vouches_for_nothing(hub: Any) -> None:
    client, registry, key, fingerprint = hub
    registry.revoke("a-node", "key compromise")
    r = client.post("/api/v1/ledger/submissions", json=_submission(key, fingerprint, 3))
    assert r.status_code == 403 and "revoked" in r.json()["detail"], r.text
