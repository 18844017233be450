"""Registry and trust: organizations, apps, nodes, the internal CA and the global configuration.

Every change bumps the registry revision, which is the serial of the next signed global
configuration; nodes notice the new serial on their next fetch.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import importlib
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qiao import pki, problems, signing
from qiao.catalog.validators import InvalidCode, validate_uscc
from qiao.db import utcnow
from qiao.events import envelope
from qiao.globalconf import KIND
from qiao.identity.roles import Principal, Role, parse_roles
from qiao.ledger import note
from qiao.ledger.errors import LedgerError
from qiao.problems import Problem
from qiao.registry.models import (
    AdminEvent,
    App,
    Certificate,
    EnrollmentToken,
    Node,
    OperatorToken,
    Organization,
    RegistryRevision,
    Resource,
)

# Who is acting, for the record of administrative actions: the hub's API sets the operator
# token's label for each request; commands run as the local user.
current_actor: ContextVar[str] = ContextVar("current_actor", default=f"cli:{getpass.getuser()}")


@contextmanager
def acting(actor: str) -> Iterator[None]:
    token = current_actor.set(actor)
    try:
        yield
    finally:
        current_actor.reset(token)


_CODE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"

# The longest life `qiao hub operator-token --days` may give a token.
MAX_TOKEN_DAYS = 730


def _hash(secret: str) -> str:
    # Tokens are 256-bit random strings, so a plain SHA-256 is a sufficient stored form: there
    # is nothing to brute-force (unlike passwords, which get Argon2id in the identity domain).
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_code(kind: str, code: str) -> str:
    if not code or len(code) > 64 or any(c not in _CODE_CHARS for c in code.lower()):
        raise Problem(
            problems.VALIDATION,
            f"{kind} code {code!r} must be 1-64 characters of letters, digits, '-' and '_'",
        )
    return code


def check_uscc(code: str) -> str:
    try:
        return validate_uscc(code)
    except InvalidCode as exc:
        raise Problem(problems.INVALID_USCC, f"{code!r}: {exc}") from exc


# --- who reads the global configuration ------------------------------------------------------
# Agreements (parties, purposes, fields, apps) and emergency reasons are for the exchange's
# enrolled nodes only; everything else in the configuration is public (docs/operations.md,
# "The global configuration and its grace period"). A node proves it is one by signing each
# fetch with its node key, the ECDSA P-256 key its hub-issued certificate certifies, as it
# signs its ledger submissions (qiao.ledger.exchanges).
FETCH_CONTEXT = "qiao-configuration-fetch/1"
NODE_HEADER = "X-Qiao-Node"
NODE_CERTIFICATE_HEADER = "X-Qiao-Node-Certificate"
NODE_TIME_HEADER = "X-Qiao-Node-Time"
NODE_SIGNATURE_HEADER = "X-Qiao-Node-Signature"
NODE_FETCH_HEADERS = (NODE_HEADER, NODE_CERTIFICATE_HEADER, NODE_TIME_HEADER, NODE_SIGNATURE_HEADER)
# The hub's answer to a fetch signed as a node that it did not accept says why in this header
# (the node shows it in ``last_error``); the answer itself is the public form.
REFUSED_HEADER = "X-Qiao-Node-Refused"
# How far a node's clock may be from the hub's. The signature covers the time, so a captured
# set of headers opens the full configuration for at most this long.
FETCH_CLOCK_SKEW_SECONDS = 300
# The sections of the configuration only enrolled nodes receive.
PRIVATE_SECTIONS = ("agreements", "emergencies")


def configuration_fetch_message(node: str, at: int) -> bytes:
    """What a node signs to fetch the full configuration: the context line keeps the
    signature from being mistaken for any other the node key makes (e.g. a ledger batch)."""
    return f"{FETCH_CONTEXT}\n{node}\n{at}\n".encode()


def sign_configuration_fetch(
    key: ec.EllipticCurvePrivateKey, node: str, fingerprint: str, at: int
) -> dict[str, str]:
    """The request headers with which node ``node`` fetches the full configuration at unix
    time ``at`` (ECDSA-SHA256, FIPS 186-5, DER signature in base64)."""
    signature = key.sign(configuration_fetch_message(node, at), ec.ECDSA(hashes.SHA256()))
    return {
        NODE_HEADER: node,
        NODE_CERTIFICATE_HEADER: fingerprint,
        NODE_TIME_HEADER: str(at),
        NODE_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def redact_global_conf(doc: dict[str, Any]) -> dict[str, Any]:
    """The public form of a configuration document: the same serial, without the sections
    only enrolled nodes may read, and saying so, so that no node mistakes it for the full
    one (``GlobalConf.compile`` refuses it)."""
    public = {k: v for k, v in doc.items() if k not in PRIVATE_SECTIONS}
    public["redacted"] = True
    return public


class NodeSignatureRefused(ValueError):
    """A request's node signature does not check out; the message says what failed."""


@dataclass(frozen=True)
class ConfigurationReader:
    """Who fetches the configuration: an enrolled node (``node``), or the public."""

    node: str = ""
    # Why a caller that sent node headers was not taken for that node, for its operator.
    refused: str = ""

    @property
    def enrolled(self) -> bool:
        return bool(self.node)


def default_log_origin(instance: str) -> str:
    """The ledger's C2SP origin line: unique per exchange instance, stable across restarts."""
    return f"qiao/{instance}/ledger"


@dataclass
class HubKeys:
    """The hub's key material: the CA that issues node certificates and the key that signs
    the global configuration. Kept apart so that either can be rotated on its own."""

    ca_key: Any
    ca_cert: x509.Certificate
    conf_key: Ed25519PrivateKey
    log_signer: note.Signer
    # Where the key files live; other domains keep their own key files beside them.
    data_dir: Path | None = None

    @classmethod
    def load_or_create(cls, data_dir: Path, instance: str, log_origin: str = "") -> HubKeys:
        log_origin = log_origin or default_log_origin(instance)
        ca_key_file, ca_file = data_dir / "ca.key", data_dir / "ca.pem"
        conf_file = data_dir / "configuration-signing.key"
        data_dir.mkdir(parents=True, exist_ok=True)
        if not ca_file.exists():
            key, cert = pki.create_ca(f"Qiao {instance} node CA")
            pki.write_private(ca_key_file, pki.key_to_pem(key))
            ca_file.write_bytes(pki.cert_to_pem(cert))
        if not conf_file.exists():
            pki.write_private(conf_file, signing.signing_key_to_pem(signing.generate_signing_key()))
        log_file = data_dir / "ledger-signing.key"
        if not log_file.exists():
            pki.write_private(log_file, note.Signer.generate(log_origin).to_text().encode())
        return cls(
            ca_key=pki.load_key_pem(ca_key_file.read_bytes()),
            ca_cert=pki.load_cert_pem(ca_file.read_bytes()),
            conf_key=signing.load_signing_key_pem(conf_file.read_bytes()),
            log_signer=note.Signer.from_text(log_file.read_text().strip()),
            data_dir=data_dir,
        )

    @property
    def conf_public_text(self) -> str:
        return signing.public_key_to_text(self.conf_key.public_key())


@dataclass(frozen=True)
class Enrollment:
    node_name: str
    org: str
    certificate_pem: str
    ca_pem: str
    configuration_key: str
    instance: str


class RegistryService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: HubKeys,
        *,
        instance: str,
        token_ttl: timedelta = timedelta(days=7),
        certificate_days: int = 365,
    ) -> None:
        self._sessions = sessions
        self.keys = keys
        self.instance = instance
        self._token_ttl = token_ttl
        self._certificate_days = certificate_days
        self._signed_lock = threading.Lock()
        # (serial, full signed form, redacted signed form)
        self._signed: tuple[int, dict[str, Any], dict[str, Any]] | None = None

    @property
    def engine(self) -> Engine:
        return self._sessions.kw["bind"]  # type: ignore[no-any-return]

    # --- organizations, apps, resources --------------------------------------------------
    def add_organization(
        self, code: str, name: str, *, name_en: str = "", kind: str = "government"
    ) -> Organization:
        code = check_uscc(code)
        if not name.strip():
            raise Problem(problems.VALIDATION, "organization name must not be empty")
        with self._sessions.begin() as s:
            if s.get(Organization, code) is not None:
                raise Problem(problems.CONFLICT, f"organization {code} is already registered")
            org = Organization(code=code, name=name.strip(), name_en=name_en, kind=kind)
            s.add(org)
            self._bump(s, "organization.add", org=code, name=org.name, kind=kind)
        return org

    def list_organizations(self) -> list[Organization]:
        with self._sessions() as s:
            return list(s.scalars(select(Organization).order_by(Organization.code)))

    def _org(self, s: Session, code: str) -> Organization:
        org = s.get(Organization, code.upper())
        if org is None:
            raise Problem(problems.NOT_FOUND, f"no organization {code}")
        return org

    def add_app(self, org_code: str, code: str, name: str = "") -> App:
        _check_code("app", code)
        with self._sessions.begin() as s:
            org = self._org(s, org_code).code  # a plain str stays readable after a rollback
            app = App(org_code=org, code=code, name=name)
            s.add(app)
            try:
                s.flush()
            except IntegrityError as exc:
                raise Problem(problems.CONFLICT, f"app {code} exists in {org}") from exc
            self._bump(s, "app.add", org=org, app=code)
        return app

    def list_apps(self, org_code: str | None = None) -> list[App]:
        with self._sessions() as s:
            q = select(App).order_by(App.org_code, App.code)
            if org_code:
                q = q.where(App.org_code == org_code.upper())
            return list(s.scalars(q))

    def add_resource(self, org_code: str, code: str, name: str = "") -> Resource:
        _check_code("resource", code)
        with self._sessions.begin() as s:
            org = self._org(s, org_code).code
            res = Resource(org_code=org, code=code, name=name)
            s.add(res)
            try:
                s.flush()
            except IntegrityError as exc:
                raise Problem(problems.CONFLICT, f"resource {code} exists in {org}") from exc
            self._bump(s, "resource.add", org=org, resource=code)
        return res

    def _resource(self, s: Session, org_code: str, code: str) -> Resource:
        res = s.scalar(
            select(Resource).where(Resource.org_code == org_code.upper(), Resource.code == code)
        )
        if res is None:
            raise Problem(problems.NOT_FOUND, f"no resource {org_code}/{code}")
        return res

    def list_resources(self) -> list[Resource]:
        with self._sessions() as s:
            return list(s.scalars(select(Resource).order_by(Resource.org_code, Resource.code)))

    # --- enrollment and certificates -----------------------------------------------------
    def create_enrollment_token(self, org_code: str) -> tuple[str, datetime]:
        """A one-time token for ``org_code``'s node to enroll; only its hash is stored."""
        token = "qet_" + secrets.token_urlsafe(32)
        expires = utcnow() + self._token_ttl
        with self._sessions.begin() as s:
            org = self._org(s, org_code)
            s.add(EnrollmentToken(org_code=org.code, token_hash=_hash(token), expires_at=expires))
            self._event(s, "enrollment-token.create", org=org.code, expires_at=expires.isoformat())
        return token, expires

    def enroll(
        self,
        token: str,
        csr_pem: str,
        node_name: str,
        address: str,
        *,
        witness_key: str = "",
        witness_url: str = "",
        events_key: str = "",
    ) -> Enrollment:
        """Issue a certificate to a new node of the token's organization (token used once)."""
        _check_code("node", node_name)
        host = _address_host(address)
        if events_key:
            _check_events_key(events_key)
        if witness_key:
            try:
                if not isinstance(note.parse_verifier_key(witness_key), note.CosignatureVerifier):
                    raise ValueError("not a cosignature (type 0x04) key")
            except (ValueError, LedgerError) as exc:
                raise Problem(problems.VALIDATION, f"witness key: {exc}") from exc
            if not witness_url.startswith(("http://", "https://")):
                raise Problem(problems.VALIDATION, "a witness needs an http(s) witness URL")
        try:
            csr = pki.load_csr_pem(csr_pem.encode())
        except pki.CertificateError as exc:
            raise Problem(problems.BAD_CSR, str(exc)) from exc
        now = utcnow()
        with self._sessions.begin() as s:
            # The conditional UPDATE makes "use once" hold under concurrent enrollments too.
            used = s.execute(
                update(EnrollmentToken)
                .where(
                    EnrollmentToken.token_hash == _hash(token),
                    EnrollmentToken.used_at.is_(None),
                    EnrollmentToken.expires_at > now,
                )
                .values(used_at=now, used_by_node=node_name)
                .returning(EnrollmentToken.org_code)
            ).scalar_one_or_none()
            if used is None:
                raise Problem(problems.BAD_ENROLLMENT_TOKEN)
            node = s.scalar(select(Node).where(Node.name == node_name))
            if node is None:
                node = Node(
                    name=node_name,
                    org_code=used,
                    address=address,
                    witness_key=witness_key,
                    witness_url=witness_url,
                    events_key=events_key,
                )
                s.add(node)
                s.flush()
            elif node.org_code != used:
                raise Problem(problems.CONFLICT, f"node name {node_name} belongs to another org")
            else:
                node.address = address
                node.witness_key, node.witness_url = witness_key, witness_url
                # The old key's private half stayed with the node's previous identity.
                node.events_key = events_key
            try:
                cert = pki.issue_node_certificate(
                    self.keys.ca_key,
                    self.keys.ca_cert,
                    csr,
                    node_name=node_name,
                    org_code=used,
                    hosts=[host],
                    days=self._certificate_days,
                )
            except pki.CertificateError as exc:
                raise Problem(problems.BAD_CSR, str(exc)) from exc
            s.add(
                Certificate(
                    serial=pki.serial_hex(cert),
                    node_id=node.id,
                    fingerprint=pki.fingerprint(cert),
                    pem=pki.cert_to_pem(cert).decode(),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                )
            )
            self._bump(s, "node.enroll", org=used, node=node_name, certificate=pki.serial_hex(cert))
            org = used
        return Enrollment(
            node_name=node_name,
            org=org,
            certificate_pem=pki.cert_to_pem(cert).decode(),
            ca_pem=pki.cert_to_pem(self.keys.ca_cert).decode(),
            configuration_key=self.keys.conf_public_text,
            instance=self.instance,
        )

    def revoke(self, serial_or_node: str, reason: str = "unspecified") -> list[str]:
        """Revoke a certificate by serial, or every certificate of a node by its name."""
        with self._sessions.begin() as s:
            certs = list(
                s.scalars(
                    select(Certificate).where(
                        Certificate.serial == serial_or_node.lower(),
                        Certificate.revoked_at.is_(None),
                    )
                )
            )
            if not certs:
                certs = list(
                    s.scalars(
                        select(Certificate)
                        .join(Node, Node.id == Certificate.node_id)
                        .where(Node.name == serial_or_node, Certificate.revoked_at.is_(None))
                    )
                )
            if not certs:
                raise Problem(problems.NOT_FOUND, f"no valid certificate for {serial_or_node!r}")
            for c in certs:
                c.revoked_at = utcnow()
                c.revocation_reason = reason
            self._bump(s, "certificate.revoke", serials=[c.serial for c in certs], reason=reason)
            return [c.serial for c in certs]

    def set_events_key(self, node_name: str, fingerprint: str, key_text: str) -> None:
        """Register the event key of a node enrolled before event streams (or replace it).

        ``fingerprint`` names the certificate the caller proved it holds (mutual TLS or a
        signature, checked by the route): it must be the node's own and still valid, so one
        node cannot redirect another's events to a key it holds."""
        _check_events_key(key_text)
        fingerprint = fingerprint.lower()  # hex: upper case names the same certificate
        with self._sessions.begin() as s:
            row = s.execute(
                select(Node, Certificate.revoked_at, Certificate.not_after)
                .join(Certificate, Certificate.node_id == Node.id)
                .where(Node.name == node_name, Certificate.fingerprint == fingerprint)
            ).one_or_none()
            if row is None:
                raise Problem(
                    problems.FORBIDDEN, f"no certificate {fingerprint[:16]}… for node {node_name}"
                )
            node, revoked_at, not_after = row
            if revoked_at is not None:
                raise Problem(problems.FORBIDDEN, f"node {node_name}'s certificate is revoked")
            if not_after <= utcnow():
                raise Problem(problems.FORBIDDEN, f"node {node_name}'s certificate has expired")
            if node.events_key == key_text:
                return  # a retried registration changes nothing, so the serial stays
            node.events_key = key_text
            self._bump(s, "node.events-key", org=node.org_code, node=node_name, key=key_text)

    def list_nodes(self) -> list[tuple[Node, list[Certificate]]]:
        with self._sessions() as s:
            nodes = list(s.scalars(select(Node).order_by(Node.name)))
            certs = list(s.scalars(select(Certificate).order_by(Certificate.not_before)))
        by_node: dict[int, list[Certificate]] = {}
        for c in certs:
            by_node.setdefault(c.node_id, []).append(c)
        return [(n, by_node.get(n.id, [])) for n in nodes]

    # --- operator tokens -----------------------------------------------------------------
    def create_operator_token(
        self,
        label: str,
        *,
        org: str | None = None,
        roles: frozenset[Role] = frozenset(),
        days: float | None = None,
    ) -> str:
        """A new token, shown once: platform-wide without ``org``, else scoped to ``roles``
        in that organization (which must exist; a scoped token needs at least one role).
        With ``days`` it stops working that long from now; without, when it is revoked."""
        if days is not None and not 0 < days <= MAX_TOKEN_DAYS:
            raise Problem(
                problems.VALIDATION, f"a token lives more than 0 and at most {MAX_TOKEN_DAYS} days"
            )
        if org is not None and not roles:
            raise Problem(problems.VALIDATION, "a token for an organization needs a role")
        if Role.PLATFORM_ADMIN in roles and org is not None:
            raise Problem(problems.VALIDATION, "platform-admin is not an organization's role")
        token = "qop_" + secrets.token_urlsafe(32)
        role_text = ",".join(sorted(r.value for r in roles))
        with self._sessions.begin() as s:
            if org is not None:
                self._org(s, org)
            row = OperatorToken(
                label=label,
                token_hash=_hash(token),
                org_code=org,
                roles=role_text,
                expires_at=None if days is None else utcnow() + timedelta(days=days),
            )
            s.add(row)
            s.flush()
            self._event(
                s,
                "operator-token.create",
                id=row.id,
                label=label,
                org=org,
                roles=role_text,
                expires_at=row.expires_at.isoformat() if row.expires_at else None,
            )
        return token

    def operator_tokens(self) -> list[dict[str, Any]]:
        """Every hub API token, without its secret (only a hash of it is kept anyway)."""
        now = utcnow()
        with self._sessions() as s:
            rows = s.scalars(select(OperatorToken).order_by(OperatorToken.id)).all()
            return [
                {
                    "id": t.id,
                    "label": t.label,
                    "org": t.org_code,
                    "roles": t.roles,
                    "created_at": t.created_at.isoformat(),
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                    "valid": t.revoked_at is None and (t.expires_at is None or t.expires_at > now),
                }
                for t in rows
            ]

    def revoke_operator_token(self, token_id: int, *, reason: str = "") -> None:
        """Stop a hub API token at once (its next request is refused); on the ledger."""
        with self._sessions.begin() as s:
            row = s.get(OperatorToken, token_id)
            if row is None:
                raise Problem(problems.NOT_FOUND, f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self._event(s, "operator-token.revoke", id=token_id, label=row.label, reason=reason)

    def check_operator_token(self, token: str) -> Principal | None:
        """Who holds ``token``, if it is a valid token, else None."""
        with self._sessions() as s:
            row = s.execute(
                select(OperatorToken.label, OperatorToken.org_code, OperatorToken.roles).where(
                    OperatorToken.token_hash == _hash(token),
                    OperatorToken.revoked_at.is_(None),
                    or_(OperatorToken.expires_at.is_(None), OperatorToken.expires_at > utcnow()),
                )
            ).first()
        if row is None:
            return None
        label, org, roles = row
        if org is None:
            return Principal(f"operator:{label}", frozenset({Role.PLATFORM_ADMIN}), kind="operator")
        return Principal(f"token:{label}", parse_roles(roles), org=org, kind="token")

    # --- the signed global configuration ---------------------------------------------------
    def serial(self) -> int:
        with self._sessions() as s:
            rev = s.get(RegistryRevision, 1)
            return rev.serial if rev else 1

    def _event(self, s: Session, action: str, **detail: Any) -> None:
        """Record an administrative action in the same transaction as the action itself; the
        ledger takes it from there (``AdminEvent`` is its outbox)."""
        s.add(
            AdminEvent(
                action=action,
                actor=current_actor.get(),
                detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
            )
        )

    def _bump(self, s: Session, action: str, **detail: Any) -> None:
        self._event(s, action, **detail)
        rev = s.get(RegistryRevision, 1, with_for_update=True)
        if rev is None:
            s.add(RegistryRevision(id=1, serial=2, changed_at=utcnow()))
        else:
            rev.serial += 1
            rev.changed_at = utcnow()

    def global_conf_document(self) -> dict[str, Any]:
        with self._sessions() as s:
            rev = s.get(RegistryRevision, 1)
            orgs = list(s.scalars(select(Organization).order_by(Organization.code)))
            apps = list(s.scalars(select(App).order_by(App.org_code, App.code)))
            nodes = list(s.scalars(select(Node).order_by(Node.name)))
            certs = list(s.scalars(select(Certificate).order_by(Certificate.serial)))
            resources = list(s.scalars(select(Resource).order_by(Resource.org_code, Resource.code)))
        catalogued = self._catalog_entries()
        sharing = self._agreement_sections()
        agreement_keys: dict[str, str] = sharing["agreement_keys"]
        apps_by_org: dict[str, list[str]] = {}
        for a in apps:
            apps_by_org.setdefault(a.org_code, []).append(a.code)
        certs_by_node: dict[int, list[Certificate]] = {}
        for c in certs:
            certs_by_node.setdefault(c.node_id, []).append(c)
        return {
            "instance": self.instance,
            "serial": rev.serial if rev else 1,
            "issued_at": utcnow().isoformat(),
            "organizations": [
                {
                    "code": o.code,
                    "name": o.name,
                    "name_en": o.name_en,
                    "kind": o.kind,
                    "apps": apps_by_org.get(o.code, []),
                    # The organization's Ed25519 key for signing agreements (qiao.agreements).
                    "agreement_key": agreement_keys.get(o.code, ""),
                }
                for o in orgs
            ],
            "nodes": [
                {
                    "name": n.name,
                    "org": n.org_code,
                    "address": n.address,
                    "witness_key": n.witness_key,
                    "witness_url": n.witness_url,
                    # Where providers seal this node's events (HPKE, qiao.events.envelope).
                    "events_key": n.events_key,
                    "certificates": [
                        {
                            "serial": c.serial,
                            "fingerprint": c.fingerprint,
                            "not_after": c.not_after.isoformat(),
                        }
                        for c in certs_by_node.get(n.id, [])
                        if c.revoked_at is None
                    ],
                }
                for n in nodes
            ],
            "ca_certificates": [pki.cert_to_pem(self.keys.ca_cert).decode()],
            # What a witness or an auditor needs to check the ledger's checkpoints.
            "ledger": {
                "origin": self.keys.log_signer.name,
                "key": self.keys.log_signer.verifier().to_text(),
            },
            "revoked": [
                {
                    "serial": c.serial,
                    "fingerprint": c.fingerprint,
                    "revoked_at": c.revoked_at.isoformat(),
                    "reason": c.revocation_reason,
                }
                for c in certs
                if c.revoked_at is not None
            ],
            "resources": [
                {
                    "org": r.org_code,
                    "code": r.code,
                    "name": r.name,
                    **catalogued.get((r.org_code, r.code), {}),
                }
                for r in resources
            ],
            # Signed agreements with their state, and declared emergencies (docs/agreements.md).
            "agreements": sharing["agreements"],
            "emergencies": sharing["emergencies"],
        }

    def _agreement_sections(self) -> dict[str, Any]:
        from qiao.agreements.emergencies import EmergencyService
        from qiao.agreements.service import AgreementService

        sections = AgreementService(self).for_configuration()
        sections["emergencies"] = EmergencyService(self).for_configuration()
        return sections

    def _catalog_entries(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Each catalogued resource's published version, status and the JSON Schemas derived
        from its specification (``qiao.catalog``), for the nodes to validate with."""
        from qiao.catalog.service import CatalogService

        specs, elements, code_lists = CatalogService(self).published_for_configuration()
        derive_schemas: Any = None
        # The schema derivation may not be part of this build yet.
        with contextlib.suppress(ImportError):
            derive_schemas = importlib.import_module("qiao.catalog.schema").derive_schemas
        return {
            key: {
                "version": spec.version,
                "status": spec.status.value,
                "schemas": derive_schemas(spec, elements, code_lists) if derive_schemas else None,
                # The record's field names: what agreements project and nodes police.
                "fields": [item.field for item in spec.items],
                "records_at": spec.records_at,
                "sharing_type": spec.sharing_type.value,
                # Offered as an event stream (qiao.events): its partition key and retention.
                **({"stream": spec.stream.model_dump(mode="json")} if spec.stream else {}),
            }
            for key, spec in specs.items()
        }

    def signed_global_conf(self, *, redacted: bool = False) -> dict[str, Any]:
        """The current signed configuration, the full form for enrolled nodes or the public
        (``redacted``) one; both are built and signed once per serial."""
        serial = self.serial()
        with self._signed_lock:
            if self._signed is None or self._signed[0] != serial:
                doc = self.global_conf_document()
                self._signed = (
                    doc["serial"],
                    signing.sign_document(self.keys.conf_key, doc, kind=KIND),
                    signing.sign_document(self.keys.conf_key, redact_global_conf(doc), kind=KIND),
                )
            return self._signed[2] if redacted else self._signed[1]

    def verify_node_signature(
        self,
        headers: Mapping[str, str],
        message: Callable[[str, int], bytes],
        *,
        now: float,
        skew: float = FETCH_CLOCK_SKEW_SECONDS,
    ) -> tuple[str, str]:
        """The (node, organization) that signed a request with the ``X-Qiao-Node-*`` headers.

        The node must name one of its own certificates, neither revoked nor expired, sign
        ``message(node, time)`` with that certificate's key, and sign a time within ``skew``
        seconds of ``now`` (the hub's clock when the request arrived). Raises
        ``NodeSignatureRefused`` saying what failed. Used for configuration fetches and for
        the event broker's routes (qiao.events.hub_api), which sign different messages."""
        values = {h: headers.get(h, "") or headers.get(h.lower(), "") for h in NODE_FETCH_HEADERS}
        missing = [h for h, v in values.items() if not v]
        if missing:
            raise NodeSignatureRefused(f"missing {', '.join(missing)}")
        node, fingerprint = values[NODE_HEADER], values[NODE_CERTIFICATE_HEADER].lower()
        try:
            at = int(values[NODE_TIME_HEADER])
            signature = base64.b64decode(values[NODE_SIGNATURE_HEADER], validate=True)
        except (ValueError, binascii.Error):
            raise NodeSignatureRefused(
                f"{NODE_TIME_HEADER} must be unix seconds and {NODE_SIGNATURE_HEADER} base64"
            ) from None
        if abs(now - at) > skew:
            way = "behind" if at < now else "ahead of"
            raise NodeSignatureRefused(
                f"the node's clock is {abs(now - at):.0f} s {way} the hub's; "
                f"at most {skew:.0f} s either way"
            )
        with self._sessions() as s:
            row = s.execute(
                select(
                    Node.org_code, Certificate.pem, Certificate.revoked_at, Certificate.not_after
                )
                .join(Node, Node.id == Certificate.node_id)
                .where(Node.name == node, Certificate.fingerprint == fingerprint)
            ).one_or_none()
        if row is None:
            raise NodeSignatureRefused(f"no certificate {fingerprint[:16]}... of node {node}")
        if row.revoked_at is not None:
            raise NodeSignatureRefused(f"node {node}'s certificate is revoked")
        if row.not_after.timestamp() < now:
            raise NodeSignatureRefused(f"node {node}'s certificate has expired")
        public_key = x509.load_pem_x509_certificate(row.pem.encode()).public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise NodeSignatureRefused(f"node {node}'s certificate has no EC key")
        try:
            public_key.verify(signature, message(node, at), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise NodeSignatureRefused("the node signature does not verify") from None
        return node, str(row.org_code)

    def configuration_reader(
        self, headers: Mapping[str, str], *, now: float
    ) -> ConfigurationReader:
        """Who fetches the configuration (``sign_configuration_fetch``): an enrolled node, or
        the public. The public part of the configuration stays public, so a failed node
        signature is not an error: the caller is the public, told why."""
        if not any(headers.get(h, "") for h in NODE_FETCH_HEADERS):
            return ConfigurationReader()
        try:
            node, _org = self.verify_node_signature(headers, configuration_fetch_message, now=now)
        except NodeSignatureRefused as refused:
            return ConfigurationReader(refused=str(refused))
        return ConfigurationReader(node=node)


def _address_host(address: str) -> str:
    parts = urlsplit(address)
    if parts.scheme != "https" or not parts.hostname or parts.port is None:
        raise Problem(
            problems.VALIDATION, f"node address {address!r} must look like https://host:port"
        )
    return parts.hostname


def _check_events_key(key_text: str) -> None:
    try:
        envelope.event_key_from_text(key_text)
    except envelope.EnvelopeError as exc:
        raise Problem(problems.VALIDATION, f"events key: {exc}") from exc
