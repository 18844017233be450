"""A node's identity on disk: its key, its hub-issued certificate, and its trust anchors.

``enroll`` runs once: it makes a key and a CSR, trades them with a one-time token for a
certificate at the hub, and keeps what the hub said to trust (the CA certificate and the key
that signs the global configuration).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qiao import pki, signing
from qiao.ledger import note

IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class NodeIdentity:
    data_dir: Path
    name: str
    org: str
    instance: str
    configuration_key: str  # base64 Ed25519 public key that signs the global configuration
    fingerprint: str

    @property
    def key_file(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def cert_file(self) -> Path:
        return self.data_dir / "node.pem"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def client_id_prefix(self) -> str:
        return f"{self.instance}/{self.org}/"

    @classmethod
    def load(cls, data_dir: Path) -> NodeIdentity:
        path = data_dir / IDENTITY_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{data_dir} holds no enrolled node: run `qiao node enroll` first"
            )
        meta = json.loads(path.read_text())
        return cls(data_dir=data_dir, **meta)


class EnrollmentError(RuntimeError):
    pass


WITNESS_KEY_FILE = "witness.key"


def witness_name(org: str, node_name: str) -> str:
    """The witness's C2SP key name: unique in the exchange, readable in a policy file."""
    return f"{org.upper()}/{node_name}"


def load_witness(identity: NodeIdentity) -> note.Cosigner:
    """The node's witness key (made at enrollment; only its public half leaves the node)."""
    key = signing.load_signing_key_pem((identity.data_dir / WITNESS_KEY_FILE).read_bytes())
    return note.Cosigner(witness_name(identity.org, identity.name), key)


def enroll(
    data_dir: Path,
    *,
    hub_url: str,
    token: str,
    node_name: str,
    org: str,
    address: str,
    witness_url: str = "",
    timeout: float = 30.0,
) -> NodeIdentity:
    """Enroll a node at the hub and write its identity into ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key = pki.generate_private_key()
    csr = pki.create_csr(key, node_name, org)
    witness_key = signing.generate_signing_key()
    cosigner = note.Cosigner(witness_name(org, node_name), witness_key)
    try:
        resp = httpx.post(
            f"{hub_url.rstrip('/')}/api/v1/enroll",
            json={
                "token": token,
                "node_name": node_name,
                "address": address,
                "csr": pki.csr_to_pem(csr).decode(),
                "witness_key": cosigner.verifier().to_text() if witness_url else "",
                "witness_url": witness_url,
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"could not reach the hub at {hub_url}: {exc}") from exc
    body: dict[str, Any] = resp.json() if resp.content else {}
    if resp.status_code != 201:
        raise EnrollmentError(
            f"the hub refused the enrollment ({resp.status_code}): "
            f"{body.get('detail') or body.get('title') or resp.text}"
        )
    if body["org"] != org.upper():
        raise EnrollmentError(f"the token belongs to {body['org']}, not to {org}")
    cert = pki.load_cert_pem(body["certificate"].encode())
    pki.write_private(data_dir / "node.key", pki.key_to_pem(key))
    pki.write_private(data_dir / WITNESS_KEY_FILE, signing.signing_key_to_pem(witness_key))
    (data_dir / "node.pem").write_text(body["certificate"])
    (data_dir / "ca.pem").write_text(body["ca_certificate"])
    identity = {
        "name": body["node_name"],
        "org": body["org"],
        "instance": body["instance"],
        "configuration_key": body["configuration_key"],
        "fingerprint": pki.fingerprint(cert),
    }
    (data_dir / IDENTITY_FILE).write_text(json.dumps(identity, indent=2))
    return NodeIdentity(data_dir=data_dir, **identity)
