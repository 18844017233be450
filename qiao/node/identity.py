"""A node's identity on disk: its key, its hub-issued certificate, and its trust anchors.

``enroll`` runs once: it makes a key and a CSR, trades them with a one-time token for a
certificate at the hub, and keeps what the hub said to trust (the CA certificate and the key
that signs the global configuration). It also makes the node's event key (X25519), whose
public half the hub publishes so providers can seal events to this node (qiao.events); a node
enrolled before event streams makes one the first time its identity is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from qiao import pki, signing
from qiao.events import envelope
from qiao.ledger import note

IDENTITY_FILE = "identity.json"
EVENTS_KEY_FILE = "events.key"


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
    def events_key_file(self) -> Path:
        return self.data_dir / EVENTS_KEY_FILE

    @property
    def client_id_prefix(self) -> str:
        return f"{self.instance}/{self.org}/"

    @cached_property
    def event_key(self) -> X25519PrivateKey:
        """The private key that opens events sealed to this node (never leaves the node)."""
        return ensure_event_key(self.data_dir)

    @property
    def event_key_text(self) -> str:
        """The public half, as the hub publishes it in the node's configuration entry."""
        return envelope.event_key_to_text(self.event_key.public_key())

    @classmethod
    def load(cls, data_dir: Path) -> NodeIdentity:
        path = data_dir / IDENTITY_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{data_dir} holds no enrolled node: run `qiao node enroll` first"
            )
        meta = json.loads(path.read_text())
        identity = cls(data_dir=data_dir, **meta)
        # A node enrolled before event streams gets its key here, on its first start after
        # the upgrade; it still has to register the public half at the hub (set_events_key).
        _ = identity.event_key
        return identity


def ensure_event_key(data_dir: Path) -> X25519PrivateKey:
    """The node's event key from ``events.key``, made (mode 0600) if the file is missing.

    Two processes may start on an upgraded node at once (the node and a `qiao node` command):
    the file is linked into place only if absent, so both end up with the one key on disk
    rather than each keeping the one it made."""
    path = data_dir / EVENTS_KEY_FILE
    if not path.exists():
        _create_exclusive(path, envelope.event_key_to_pem(envelope.generate_event_key()))
    return envelope.event_key_from_pem(path.read_bytes())


def _create_exclusive(path: Path, data: bytes) -> None:
    # mkstemp creates the file 0600 from the start; os.link fails if the target exists, so a
    # key already in place is never replaced, and a crash leaves no half-written key file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


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
    event_key = envelope.generate_event_key()
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
                "events_key": envelope.event_key_to_text(event_key.public_key()),
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
    # Replaced, not kept: the hub now publishes this key's public half for the node.
    pki.write_private(data_dir / EVENTS_KEY_FILE, envelope.event_key_to_pem(event_key))
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
