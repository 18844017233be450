"""Who may read what of the global configuration: the public form for anyone, agreements and
emergencies only for enrolled nodes that sign the fetch with their node key."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from qiao import pki, signing
from qiao.agreements.emergencies import EmergencyService
from qiao.config import HubSettings
from qiao.globalconf import KIND, GlobalConf
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import Principal, Role
from qiao.node.confcache import NodeCredentials
from qiao.registry.services import (
    NODE_SIGNATURE_HEADER,
    NODE_TIME_HEADER,
    REFUSED_HEADER,
    RegistryService,
    sign_configuration_fetch,
)

HEALTH = "91350100M000100Y43"  # 市卫生健康委员会
POLICE = "12350100MB00010016"  # 市公安局
CONF = "/api/v1/global-configuration"
PUBLIC_SECTIONS = {"organizations", "nodes", "ca_certificates", "ledger", "revoked", "resources"}


def enrolled_node(registry: RegistryService, org: str, name: str) -> NodeCredentials:
    """Enroll a node of ``org`` as ``qiao node enroll`` does; its credentials to sign with."""
    key = pki.generate_private_key()
    token, _ = registry.create_enrollment_token(org)
    csr = pki.csr_to_pem(pki.create_csr(key, name, org)).decode()
    e = registry.enroll(token, csr, name, "https://127.0.0.1:9443")
    fingerprint = pki.fingerprint(pki.load_cert_pem(e.certificate_pem.encode()))
    return NodeCredentials(name, fingerprint, key)


@dataclass
class Hub:
    client: TestClient
    registry: RegistryService
    health: NodeCredentials
    police: NodeCredentials
    emergency: str

    def verify(self, envelope: Any) -> dict[str, Any]:
        key = signing.public_key_from_text(self.registry.keys.conf_public_text)
        return signing.verify_document(envelope, key, kind=KIND)


@pytest.fixture
def hub(db_url: str, tmp_path: Path) -> Iterator[Hub]:
    settings = HubSettings.load(
        None, data_dir=tmp_path / "hub", database_url=db_url, instance="CN-T"
    )
    registry = open_registry(settings)
    registry.add_organization(HEALTH, "市卫生健康委员会")
    registry.add_organization(POLICE, "市公安局")
    registry.add_resource(HEALTH, "epidemic-daily")
    health = enrolled_node(registry, HEALTH, "health-node")
    police = enrolled_node(registry, POLICE, "police-node")
    # An emergency, so that the private sections are not empty.
    admins = [
        Principal(f"user:admin{i}", frozenset({Role.PLATFORM_ADMIN}), kind="user") for i in (1, 2)
    ]
    emergencies = EmergencyService(registry)
    e = emergencies.declare(
        admins[0], resources=[f"{HEALTH}/epidemic-daily"], reason="疫情应急演练", duration_hours=2
    )
    emergencies.confirm(admins[1], e.id)
    with TestClient(create_app(settings, registry)) as client:
        yield Hub(client, registry, health, police, e.id)


def test_the_public_gets_the_public_form(hub: Hub) -> None:
    r = hub.client.get(CONF)
    assert r.status_code == 200 and REFUSED_HEADER.lower() not in r.headers
    doc = hub.verify(r.json())  # signed by the hub's configuration key like the full form
    assert doc["redacted"] is True
    assert "agreements" not in doc and "emergencies" not in doc
    assert set(doc) >= PUBLIC_SECTIONS
    assert {n["name"] for n in doc["nodes"]} == {"health-node", "police-node"}
    assert r.headers["etag"] == f'"{doc["serial"]}"' == f'"{hub.registry.serial()}"'
    assert "x-qiao-node-signature" in r.headers["vary"].lower()
    # Nothing private leaks anywhere in the answer.
    assert "疫情应急演练" not in r.text and hub.emergency not in r.text


def test_an_enrolled_node_gets_agreements_and_emergencies(hub: Hub) -> None:
    public = hub.client.get(CONF).json()["document"]
    r = hub.client.get(CONF, headers=hub.police.headers())
    assert r.status_code == 200, r.text
    doc = hub.verify(r.json())
    assert "redacted" not in doc and isinstance(doc["agreements"], list)
    assert [e["reason"] for e in doc["emergencies"]] == ["疫情应急演练"]
    assert doc["serial"] == public["serial"] and r.headers["etag"] == f'"{doc["serial"]}"'
    # The same document but for the private sections.
    assert {k: v for k, v in doc.items() if k not in ("agreements", "emergencies")} == {
        k: v for k, v in public.items() if k != "redacted"
    }
    # Shared caches must not keep it for others (RFC 9111 §5.2.2.7).
    assert r.headers["cache-control"] == "private, no-cache"
    assert GlobalConf.compile(doc).serial == doc["serial"]


def _forged(creds: NodeCredentials, **change: Any) -> dict[str, str]:
    at = int(time.time()) + int(change.pop("skew", 0))
    key: ec.EllipticCurvePrivateKey = change.pop("key", creds.key)
    return sign_configuration_fetch(
        key, change.pop("node", creds.node), change.pop("fingerprint", creds.fingerprint), at
    )


def test_failed_signatures_get_the_public_form(hub: Hub) -> None:
    police, health = hub.police, hub.health
    tampered = police.headers()
    signature = bytearray(base64.b64decode(tampered[NODE_SIGNATURE_HEADER]))
    signature[-1] ^= 1
    tampered[NODE_SIGNATURE_HEADER] = base64.b64encode(bytes(signature)).decode()
    resigned_time = {**police.headers(), NODE_TIME_HEADER: str(int(time.time()) + 1)}
    cases = {
        "bad signature": (tampered, "does not verify"),
        "signed for another time": (resigned_time, "does not verify"),
        "another key": (_forged(police, key=pki.generate_private_key()), "does not verify"),
        "stale time": (_forged(police, skew=-310), "s behind the hub's"),
        "future time": (_forged(police, skew=+310), "s ahead of the hub's"),
        "another node's fingerprint": (
            _forged(police, fingerprint=health.fingerprint),
            f"no certificate {health.fingerprint[:16]}... of node police-node",
        ),
        "posing as another node": (
            _forged(police, node="health-node", fingerprint=health.fingerprint),
            "does not verify",
        ),
        "unknown node": (_forged(police, node="ghost-node"), "of node ghost-node"),
        "missing signature": (
            {k: v for k, v in police.headers().items() if k != NODE_SIGNATURE_HEADER},
            f"missing {NODE_SIGNATURE_HEADER}",
        ),
        "garbage time": ({**police.headers(), NODE_TIME_HEADER: "soon"}, "unix seconds"),
    }
    for case, (headers, reason) in cases.items():
        r = hub.client.get(CONF, headers=headers)
        assert r.status_code == 200, (case, r.text)
        doc = hub.verify(r.json())
        assert doc["redacted"] is True and "agreements" not in doc, case
        assert reason in r.headers[REFUSED_HEADER], (case, r.headers[REFUSED_HEADER])
        assert r.headers["cache-control"] == "no-cache", case
    # Within the allowed skew either way, the node is taken at its word.
    for skew in (-290, 290):
        r = hub.client.get(CONF, headers=_forged(police, skew=skew))
        assert "agreements" in r.json()["document"], skew


def test_a_revoked_certificate_gets_the_public_form(hub: Hub) -> None:
    assert "agreements" in hub.client.get(CONF, headers=hub.police.headers()).json()["document"]
    hub.registry.revoke("police-node", "key compromise")
    r = hub.client.get(CONF, headers=hub.police.headers())
    assert r.json()["document"]["redacted"] is True
    assert "revoked" in r.headers[REFUSED_HEADER]
    # The other node is not affected.
    assert "agreements" in hub.client.get(CONF, headers=hub.health.headers()).json()["document"]


def test_etags_and_long_polls_work_for_both_forms(hub: Hub) -> None:
    serial = hub.registry.serial()
    current, stale = {"If-None-Match": f'"{serial}"'}, {"If-None-Match": f'"{serial - 1}"'}
    for signed in ({}, hub.police.headers()):
        r = hub.client.get(CONF, headers={**signed, **current})
        assert r.status_code == 304 and r.headers["etag"] == f'"{serial}"'
        started = time.monotonic()
        r = hub.client.get(CONF, params={"wait": 1}, headers={**signed, **current})
        assert r.status_code == 304 and time.monotonic() - started >= 1.0
        r = hub.client.get(CONF, params={"wait": 30}, headers={**signed, **stale})
        assert r.status_code == 200 and r.json()["document"]["serial"] == serial
        assert ("agreements" in r.json()["document"]) is bool(signed)
