"""The node side of the authorization matrix (reliability/test_authz.py): a small real city,
the node's routes read from a real node's listeners, the credentials an app (or an impostor)
may present, and certificates from the hub's CA and from a foreign one.

The city is a hub and two nodes on SQLite, as real processes on loopback: public security
(the provider, serving a lab echo backend under an agreement with transport, and one
resource nobody has an agreement for) and transport (the consumer whose app listener the
matrix calls). A third organization, market regulation, gets a node entry that points at an
impostor: a TLS server holding a certificate from a foreign CA (see ``impostor``).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from qiao import pki
from qiao.config import HubSettings, NodeSettings
from qiao.db import make_engine
from qiao.demo.city import Deployment
from qiao.demo.processes import free_port, write_toml
from qiao.exchange.keys import ApiKeyService
from qiao.identity.access_tokens import SigningKeys, issue_access_token, node_audience
from qiao.identity.roles import Role
from qiao.node.app import Node
from qiao.node.confcache import NodeCredentials
from qiao.problems import PROBLEM_CONTENT_TYPE
from qiao.registry.models import Certificate
from tests.integration.conftest import LAB_PURPOSE, LoopThread, _agree, lab_backend

# The refusals a node answers a caller it does not let through (docs/exchange-protocol.md):
# no credential, a credential that is not one, one that does not cover the resource, an app
# of another organization, no agreement; at the peer listener, a certificate the signed
# configuration does not list or has revoked.
NODE_REFUSALS = frozenset(
    f"urn:qiao:problem:{t}"
    for t in (
        "client:missing-credential",
        "client:bad-credential",
        "client:out-of-scope",
        "client:unknown-client",
        "client:no-agreement",
        "provider:certificate-revoked",
        "provider:certificate-mismatch",
    )
)
NOT_TRUSTED = "urn:qiao:problem:consumer:provider-not-trusted"


def refused(r: httpx.Response) -> bool:
    if r.status_code not in (401, 403):
        return False
    if not r.headers.get("content-type", "").startswith(PROBLEM_CONTENT_TYPE):
        return False
    if r.request.method == "HEAD":
        return True  # the same problem as a GET's, without its body (RFC 9110 §9.3.2)
    return r.json().get("type") in NODE_REFUSALS


# --- the node's route table -------------------------------------------------------------------
@dataclass(frozen=True)
class NodeAccess:
    """Who may call a node route. ``public``: anyone; ``app``: an app of the node's own
    organization with a credential that covers the resource (and an agreement, for what it
    reads of another organization); ``signed``: nobody by credential, the body carries its own
    proof (a witness request: a checkpoint signed by the log); ``peer``: a node whose
    certificate the hub's CA issued and the signed configuration lists, over mutual TLS."""

    kind: str
    purpose: str = ""  # the purpose an app sends (its agreement's)
    body: Any = None
    # A route for every method ("*", the exchange's): the methods the matrix tries on it.
    methods: tuple[str, ...] = ()


PUBLIC = NodeAccess("public")
SIGNED = NodeAccess("signed", body=b"old 0\n\nnot a checkpoint\n")

APP_TABLE: dict[tuple[str, str], NodeAccess] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    # the exchange: every method goes on to the provider, so the matrix tries each
    ("*", "/r1/{tail}"): NodeAccess(
        "app", LAB_PURPOSE, methods=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    ),
    # events (qiao/events/node_api.py): the provider's backend publishes, apps pull and ack
    ("POST", "/e1/{stream}"): NodeAccess("app", body={"station": "S1", "bikes": 3}),
    ("GET", "/e1/{provider}/{stream}"): NodeAccess("app", "traffic-management"),
    ("POST", "/e1/{provider}/{stream}/ack"): NodeAccess(
        "app", "traffic-management", body={"offset": 0}
    ),
    # the ledger witness (c2sp.org/tlog-witness): the checkpoint's signature is the credential
    ("POST", "/witness/add-checkpoint"): SIGNED,
}
PEER_TABLE: dict[tuple[str, str], NodeAccess] = {
    ("*", "/r1/{tail}"): NodeAccess("peer", LAB_PURPOSE, methods=("GET",))
}


def node_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of an aiohttp app, with regular expressions dropped from
    the path's variables ("{stream:[a-z]...}" -> "{stream}"); HEAD twins of GET left out."""
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        path = re.sub(r"\{([^}:]+):[^}]*\}", r"{\1}", path)
        if route.method != "HEAD":
            out.add((route.method, path))
    return out


def listeners(loop: LoopThread, config: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The routes of a real node's app listener and peer listener, built by ``Node`` from the
    node's own settings and data directory (its events routes and witness route included),
    without serving them."""

    async def build() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        node = Node.open(NodeSettings.load(config))
        try:
            await node._start_events(NodeCredentials.of(node.identity))
            return node_routes(node.app_listener()), node_routes(node.peer_listener())
        finally:
            if node.broker is not None:
                await node.broker.close()
            await node.consumer.close()
            await node.provider.close()
            node.writer.close()

    result: tuple[set[tuple[str, str]], set[tuple[str, str]]] = loop.run(build())
    return result


# --- certificates -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    pem: x509.Certificate
    private: Any = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return pki.fingerprint(self.pem)


def _write(tmp: Path, name: str, cert: x509.Certificate, key: Any) -> CertFiles:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.pem").write_bytes(pki.cert_to_pem(cert))
    (tmp / f"{name}.key").write_bytes(pki.key_to_pem(key))
    return CertFiles(tmp / f"{name}.pem", tmp / f"{name}.key", cert, key)


def issue(
    ca_key: Any, ca: x509.Certificate, tmp: Path, name: str, node: str, org: str
) -> CertFiles:
    """A node certificate as the hub's CA issues one (or a foreign CA, given its key)."""
    key = pki.generate_private_key()
    cert = pki.issue_node_certificate(
        ca_key, ca, pki.create_csr(key, node, org), node_name=node, org_code=org,
        hosts=["127.0.0.1"], days=1,
    )  # fmt: skip
    return _write(tmp, name, cert, key)


def expired_copy(ca_key: Any, of: CertFiles, tmp: Path, name: str) -> CertFiles:
    """``of`` signed again by the same CA with a validity that ended yesterday (RFC 5280
    §4.1.2.5): everything else, subject and key included, is the same."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(of.pem.subject)
        .issuer_name(of.pem.issuer)
        .public_key(of.pem.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10))
        .not_valid_after(now - timedelta(days=1))
    )
    for ext in of.pem.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return _write(tmp, name, builder.sign(ca_key, hashes.SHA256()), of.private)


def foreign_ca(tmp: Path, common_name: str) -> tuple[Any, x509.Certificate, Path]:
    """Another CA that calls itself what the hub's CA calls itself: only its key differs."""
    key, ca = pki.create_ca(common_name)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "foreign-ca.pem").write_bytes(pki.cert_to_pem(ca))
    return key, ca, tmp / "foreign-ca.pem"


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def client_ssl(ca_file: Path, cert: CertFiles | None) -> ssl.SSLContext:
    """A peer's TLS client context: the hub's CA as trust anchor (so the handshake itself
    never fails on the provider's side of it) and ``cert`` as client certificate, if any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


# --- the city ---------------------------------------------------------------------------------
class QuickDeployment(Deployment):
    """The demo deployment without its people (no one signs in to the hub here: the hub's
    sign-in cases run in-process) and with the cheapest Argon2 cost, so the city starts in a
    few seconds."""

    def seed_users(self, settings: HubSettings, reg: Any) -> Path:
        path = self.data_dir / "users.json"
        path.write_text('{"users": []}\n')
        return path

    def hub_settings(self) -> HubSettings:
        settings = super().hub_settings()
        path = settings.data_dir / "hub.toml"
        values = tomllib.loads(path.read_text())
        values.update(argon2_memory_kib=8, argon2_time_cost=1, argon2_parallelism=1)
        write_toml(path, values)
        return HubSettings.load(path)


@dataclass
class SpareNode:
    """A node enrolled at the hub by the test itself (no process): its key signs requests
    to the hub as that node would."""

    name: str
    org: str
    cert: CertFiles

    def credentials(self, clock: Callable[[], float] | None = None) -> NodeCredentials:
        c = NodeCredentials(self.name, self.cert.fingerprint, self.cert.private)
        return c if clock is None else NodeCredentials(c.node, c.fingerprint, c.key, clock)


@dataclass
class NodeLab:
    dep: Deployment
    reg: Any
    loop: LoopThread
    tmp: Path
    hub_ca: Path
    spares: dict[str, SpareNode]
    credentials: dict[str, dict[str, str]]  # kind -> headers
    impostor_received: list[bytes]
    foreign_ca_file: Path
    # One client for the whole matrix: a client per call would load the system's CA bundle
    # each time (~0.1 s), which would be most of the matrix's run time.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    app_routes: set[tuple[str, str]] = field(default_factory=set)
    peer_routes: set[tuple[str, str]] = field(default_factory=set)

    @property
    def police(self) -> str:
        return self.dep.codes["police"]

    @property
    def transport(self) -> str:
        return self.dep.codes["transport"]

    @property
    def market(self) -> str:
        return self.dep.codes["market"]

    def node(self, dept: str) -> Any:
        return self.dep.nodes[dept]

    def node_cert(self, dept: str) -> CertFiles:
        """The certificate and key a running node was enrolled with."""
        d = self.dep.nodes[dept].data_dir
        cert, key = d / "node.pem", d / "node.key"
        return CertFiles(
            cert, key, pki.load_cert_pem(cert.read_bytes()), pki.load_key_pem(key.read_bytes())
        )


CONSUMER_APP = "traffic-enforcement"
SECOND_APP = "fleet-planning"  # another app of the consumer's organization
NO_AGREEMENT = "no-agreement-here"  # a resource of public security nobody may use


def _enroll_spare(reg: Any, tmp: Path, org: str, name: str, address: str) -> SpareNode:
    key = pki.generate_private_key()
    token, _ = reg.create_enrollment_token(org)
    e = reg.enroll(token, pki.csr_to_pem(pki.create_csr(key, name, org)).decode(), name, address)
    cert = pki.load_cert_pem(e.certificate_pem.encode())
    return SpareNode(name, org, _write(tmp, name, cert, key))


def _impostor(
    loop: LoopThread, cert: CertFiles, ca_file: Path, port: int
) -> tuple[list[bytes], asyncio.Server]:
    """A TLS server on ``port`` holding ``cert``; it would accept any hub-issued client
    certificate and answer 200 to anything, and keeps every byte it receives."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(65536), 5)
            received.append(data)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            pass  # the consumer hung up during or after the handshake, as it should
        finally:
            writer.close()

    async def start() -> asyncio.Server:
        ctx = pki.server_context(cert.cert, cert.key, ca_file)
        return await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)

    server: asyncio.Server = loop.run(start())
    return received, server


def start_lab(tmp: Path) -> Iterator[NodeLab]:
    """The module's city (a generator for a fixture: it stops every process it started)."""
    dep = QuickDeployment(data_dir=tmp / "city")
    loop = LoopThread()
    servers: list[asyncio.Server] = []
    try:
        lab = loop.serve(lab_backend())
        dep.extra_services = {
            "police": {"echo": {"url": f"{lab}/echo"}, NO_AGREEMENT: {"url": f"{lab}/echo"}}
        }
        reg = dep.start_hub()
        police, transport, market = (dep.codes[d] for d in ("police", "transport", "market"))
        reg.add_app(transport, SECOND_APP)
        reg.add_resource(police, "echo")
        reg.add_resource(police, NO_AGREEMENT)
        _agree(reg, dep.codes, "transport", "echo", apps=(CONSUMER_APP,))
        certs = tmp / "certs"
        hub_ca = dep.data_dir / "hub" / "ca.pem"
        # Nodes the test signs as: a sound one, one whose certificate the hub has revoked, one
        # whose certificate the hub's records say has expired. Each serves nothing.
        spares = {
            kind: _enroll_spare(reg, certs, transport, f"transport-{kind}", "https://127.0.0.1:9")
            for kind in ("spare", "revoked", "expired")
        }
        reg.revoke(spares["revoked"].name, "key compromise drill")
        sessions = sessionmaker(bind=reg.engine)
        with sessions.begin() as s:
            s.execute(
                update(Certificate)
                .where(Certificate.fingerprint == spares["expired"].cert.fingerprint)
                .values(not_after=datetime.now(UTC) - timedelta(days=1))
            )
        # Market regulation's node, as the configuration lists it, is an impostor: its
        # address answers with a certificate from a foreign CA. The configuration even pins
        # that very certificate (the registry row is altered to its fingerprint), so the only
        # thing that can stop the consumer is the chain to the hub's CA.
        port = free_port()
        market_node = _enroll_spare(reg, certs, market, "market-node", f"https://127.0.0.1:{port}")
        fkey, fca, fca_file = foreign_ca(certs, common_name(pki.load_cert_pem(hub_ca.read_bytes())))
        fake = issue(fkey, fca, certs, "market-impostor", "market-node", market)
        with sessions.begin() as s:
            s.execute(
                update(Certificate)
                .where(Certificate.fingerprint == market_node.cert.fingerprint)
                .values(fingerprint=fake.fingerprint, pem=pki.cert_to_pem(fake.pem).decode())
            )
        received, server = _impostor(loop, fake, hub_ca, port)
        servers.append(server)
        dep.start_nodes(reg, only={"police", "transport"})
        credentials = _credentials(dep, reg)
        out = NodeLab(dep, reg, loop, tmp, hub_ca, spares, credentials, received, fca_file)
        out.app_routes, out.peer_routes = listeners(loop, dep.nodes["transport"].config)
        try:
            yield out
        finally:
            out.http.close()
    finally:
        dep.stop()

        async def close() -> None:
            for server in servers:
                server.close()

        loop.run(close())
        loop.close()


def _credentials(dep: Deployment, reg: Any) -> dict[str, dict[str, str]]:
    """Each kind of credential the matrix presents at the consumer node, as request headers."""
    police, transport = dep.codes["police"], dep.codes["transport"]
    own = dep.client("transport", CONSUMER_APP)
    keys = ApiKeyService(make_engine(dep.node_db_url("transport")))
    second = keys.create(dep.client("transport", SECOND_APP), label="second app").secret
    revoked = keys.create(own, label="revoked")
    keys.revoke(revoked.key_id)
    expired = keys.create(own, label="expired", ttl=timedelta(seconds=-1)).secret
    unagreed = keys.create(own, label="no agreement", scopes=(f"{police}/{NO_AGREEMENT}",))
    signing = SigningKeys(sessionmaker(bind=reg.engine, expire_on_commit=False), timedelta(days=1))

    def token(app: str, org: str, scope: str, ttl: timedelta) -> str:
        return issue_access_token(
            signing,
            issuer=dep.hub_url,
            audience=[node_audience(dep.instance, org), dep.hub_url],
            client_id="qc_authz_matrix",
            subject="user:authz-matrix",
            scope=scope,
            ttl=ttl,
            extra={"app": app},
        )

    hour, past = timedelta(hours=1), -timedelta(minutes=5)
    bearer = dep.nodes["transport"].api_keys[CONSUMER_APP]
    return {
        "none": {"X-Qiao-Client": own},
        "own app's API key": {"X-Qiao-Client": own, "Authorization": f"Bearer {bearer}"},
        "another app's key of the same node": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {second}",
        },
        "revoked API key": {"X-Qiao-Client": own, "Authorization": f"Bearer {revoked.secret}"},
        "expired API key": {"X-Qiao-Client": own, "Authorization": f"Bearer {expired}"},
        "key for a resource without agreement": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {unagreed.secret}",
            "X-Authz-Target": NO_AGREEMENT,  # the call goes to that resource (see target())
        },
        "key scoped to another resource": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {unagreed.secret}",
        },
        "hub access token, exchange scope": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {token(own, transport, 'openid qiao', hour)}",
        },
        "hub access token, sign-in scope only": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {token(own, transport, 'openid profile', hour)}",
        },
        "hub access token, expired": {
            "X-Qiao-Client": own,
            "Authorization": f"Bearer {token(own, transport, 'openid qiao', past)}",
        },
        "hub access token of another app of the same node": {
            "X-Qiao-Client": own,
            "Authorization": "Bearer "
            + token(dep.client("transport", SECOND_APP), transport, "openid qiao", hour),
        },
        "hub access token of another organization's app": {
            "X-Qiao-Client": dep.client("police", "police-app"),
            "Authorization": "Bearer "
            + token(dep.client("police", "police-app"), police, "openid qiao", hour),
        },
        "hub operator token": {
            "X-Qiao-Client": own,
            "Authorization": "Bearer "
            + reg.create_operator_token(
                "authz-matrix", org=transport, roles=frozenset({Role.APP_DEVELOPER})
            ),
        },
        "own key, X-Qiao-Client of another organization": {
            "X-Qiao-Client": dep.client("police", "police-app"),
            "Authorization": f"Bearer {bearer}",
        },
    }


ALLOWED_KINDS = frozenset({"own app's API key", "hub access token, exchange scope"})


def _problems(*names: str) -> frozenset[str]:
    return frozenset(f"urn:qiao:problem:client:{n}" for n in names)


# Why each other kind is refused at the app listener: the problem types that say so.
REFUSED_AS: dict[str, frozenset[str]] = {
    "none": _problems("missing-credential"),
    "another app's key of the same node": _problems("bad-credential"),
    "revoked API key": _problems("bad-credential"),
    "expired API key": _problems("bad-credential"),
    # the exchange refuses by the agreement; publishing, by the key's scope
    "key for a resource without agreement": _problems("no-agreement", "out-of-scope"),
    "key scoped to another resource": _problems("out-of-scope"),
    "hub access token, sign-in scope only": _problems("out-of-scope"),
    "hub access token, expired": _problems("bad-credential"),
    "hub access token of another app of the same node": _problems("bad-credential"),
    # its audience is the other organization's nodes; the exchange checks the client first
    "hub access token of another organization's app": _problems("bad-credential", "unknown-client"),
    "hub operator token": _problems("bad-credential"),
    "own key, X-Qiao-Client of another organization": _problems("bad-credential", "unknown-client"),
}


def refused_as(r: httpx.Response, kind: str) -> bool:
    """Refused, and for the reason this kind of credential should be."""
    if not refused(r):
        return False
    return r.request.method == "HEAD" or r.json().get("type") in REFUSED_AS[kind]


def node_expected(access: NodeAccess, kind: str) -> str:
    """``allowed``, ``refused`` (with a refusal problem) or ``not-accepted`` (a signed route
    answers anything but 200 to a body that is not signed)."""
    if access.kind == "public":
        return "allowed"
    if access.kind == "signed":
        return "not-accepted"
    return "allowed" if kind in ALLOWED_KINDS else "refused"


def node_request(
    lab: NodeLab, method: str, path: str, access: NodeAccess, kind: str
) -> httpx.Response:
    headers = dict(lab.credentials[kind])
    resource = headers.pop("X-Authz-Target", "echo")
    values = {
        "tail": f"{lab.police}/{resource}/authz",
        "stream": "bike-stations",
        "provider": lab.police,
    }
    if path.startswith("/e1/{provider}"):
        values["stream"] = resource if resource != "echo" else "traffic-accidents"
    url = lab.node("transport").url + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
    if access.purpose:
        headers["X-Qiao-Purpose"] = access.purpose
    kwargs: dict[str, Any] = {"headers": headers, "timeout": 30}
    if isinstance(access.body, bytes):
        kwargs["content"] = access.body
    elif access.body is not None:
        kwargs["json"] = access.body
    return lab.http.request(method, url, **kwargs)


def peer_call(
    lab: NodeLab, cert: CertFiles | None, client: str | None = None
) -> httpx.Response | Exception:
    """A call at the provider's peer listener over mutual TLS with ``cert``; the transport
    error when the handshake fails."""
    ctx = client_ssl(lab.hub_ca, cert)
    url = f"https://127.0.0.1:{lab.node('police').peer_port}/r1/{lab.police}/echo/peer"
    headers = {
        "X-Qiao-Client": client or lab.dep.client("transport", CONSUMER_APP),
        "X-Qiao-Purpose": LAB_PURPOSE,
    }
    try:
        with httpx.Client(verify=ctx, timeout=30) as c:
            return c.get(url, headers=headers)
    except httpx.TransportError as exc:
        return exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ec_key(cert: CertFiles) -> ec.EllipticCurvePrivateKey:
    assert isinstance(cert.private, ec.EllipticCurvePrivateKey)
    return cert.private
