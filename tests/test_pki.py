"""The hub CA issues node certificates, and nodes only talk over mutual TLS with each other."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from qiao import pki

ORG = "11100000000000001X"


@dataclass
class Node:
    cert: x509.Certificate
    cert_file: Path
    key_file: Path


@dataclass
class Hub:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_file: Path
    tmp: Path

    def issue(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1",)) -> Node:
        key = pki.generate_private_key()
        cert = pki.issue_node_certificate(
            self.key,
            self.cert,
            pki.create_csr(key, name, ORG),
            node_name=name,
            org_code=ORG,
            hosts=list(hosts),
            days=1,
        )
        cert_file, key_file = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        cert_file.write_bytes(pki.cert_to_pem(cert))
        pki.write_private(key_file, pki.key_to_pem(key))
        return Node(cert, cert_file, key_file)


def _hub(tmp: Path, name: str) -> Hub:
    key, cert = pki.create_ca(f"{name} CA")
    tmp.mkdir(exist_ok=True)
    (tmp / "ca.pem").write_bytes(pki.cert_to_pem(cert))
    return Hub(key, cert, tmp / "ca.pem", tmp)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return _hub(tmp_path / "hub", "Qiao")


@pytest.fixture
def rogue(tmp_path: Path) -> Hub:
    return _hub(tmp_path / "rogue", "Rogue")


def _csr(key: pki.PrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, cn: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.DER)


def _issue(hub: Hub, csr: x509.CertificateSigningRequest, **kw: object) -> x509.Certificate:
    args: dict[str, object] = {"node_name": "n1", "org_code": ORG, "hosts": ["127.0.0.1"]}
    args["days"] = 30
    args.update(kw)
    return pki.issue_node_certificate(hub.key, hub.cert, csr, **args)  # type: ignore[arg-type]


# --- the certificate authority ----------------------------------------------------------------


def test_ca_is_a_self_signed_ca_that_issues_only_end_entities(hub: Hub) -> None:
    ca = hub.cert
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(hub.key.public_key())
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > timedelta(days=3649)


def test_node_certificate_has_the_hubs_subject_and_profile(hub: Hub) -> None:
    key = pki.generate_private_key()
    csr = x509.load_der_x509_csr(_csr(key, "I am the hub, trust me"))
    before = datetime.now(UTC)
    cert = _issue(hub, csr, hosts=["127.0.0.1", "::1", "Node-1.Example.gov.cn"], days=30)

    cert.verify_directly_issued_by(hub.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORG
    assert cert.issuer == hub.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["node-1.example.gov.cn"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = hub.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert 0 < cert.serial_number < 1 << 128
    skew = before - cert.not_valid_before_utc
    assert timedelta(minutes=4) < skew < timedelta(minutes=6)
    assert abs(cert.not_valid_after_utc - (before + timedelta(days=30))) < timedelta(minutes=1)


def test_node_certificate_passes_rfc5280_path_validation_both_ways(hub: Hub) -> None:
    cert = _issue(hub, pki.create_csr(pki.generate_private_key(), "n1", ORG), hosts=["n1.gov"])
    builder = PolicyBuilder().store(Store([hub.cert]))
    assert builder.build_client_verifier().verify(cert, []).chain == [cert, hub.cert]
    server = builder.build_server_verifier(x509.DNSName("n1.gov"))
    assert server.verify(cert, []) == [cert, hub.cert]


def test_serials_are_random_unless_given(hub: Hub) -> None:
    csr = pki.create_csr(pki.generate_private_key(), "n1", ORG)
    assert len({_issue(hub, csr).serial_number for _ in range(5)}) == 5
    cert = _issue(hub, csr, serial=0xC0FFEE)
    assert pki.serial_hex(cert) == "c0ffee"
    for bad in (0, -1, 1 << 159):
        with pytest.raises(pki.CertificateError, match="serial"):
            _issue(hub, csr, serial=bad)


def test_validity_never_outlives_the_ca(tmp_path: Path) -> None:
    hub = _hub(tmp_path, "short")
    hub.key, hub.cert = pki.create_ca("Short-lived", days=2)
    cert = _issue(hub, pki.create_csr(pki.generate_private_key(), "n1", ORG), days=365)
    assert cert.not_valid_after_utc == hub.cert.not_valid_after_utc


@pytest.mark.parametrize("where", ["signature", "subject"])
def test_issue_refuses_a_tampered_csr(hub: Hub, where: str) -> None:
    der = bytearray(_csr(pki.generate_private_key(), "node-xyz"))
    # The last byte is inside the signature; the CN's last letter is inside the signed part.
    at = len(der) - 1 if where == "signature" else der.index(b"node-xyz") + 7
    der[at] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(pki.CertificateError, match="signature does not verify"):
        _issue(hub, csr)


@pytest.mark.parametrize(
    ("make_key", "accepted"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), True),
        (ed25519.Ed25519PrivateKey.generate, True),
        (lambda: rsa.generate_private_key(65537, 2048), True),
        (lambda: rsa.generate_private_key(65537, 1024), False),
        (lambda: ec.generate_private_key(ec.SECP521R1()), False),
        (lambda: ec.generate_private_key(ec.SECP256K1()), False),
    ],
    ids=["p384", "ed25519", "rsa2048", "rsa1024", "p521", "secp256k1"],
)
def test_issue_accepts_only_strong_common_keys(hub: Hub, make_key: object, accepted: bool) -> None:
    csr = x509.load_der_x509_csr(_csr(make_key(), "n1"))  # type: ignore[operator]
    if accepted:
        assert _issue(hub, csr).public_key() == csr.public_key()
    else:
        with pytest.raises(pki.CertificateError, match=r"not accepted|too short"):
            _issue(hub, csr)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hosts": []}, "at least one host"),
        ({"hosts": ["bad host"]}, "neither an IP address nor a host name"),
        ({"hosts": ["*.gov.cn"]}, "neither"),
        ({"hosts": ["例子.中国"]}, "neither"),
        ({"hosts": ["-x.gov"]}, "neither"),
        ({"days": 0}, "at least one day"),
    ],
)
def test_issue_refuses_bad_parameters(hub: Hub, kw: dict[str, object], message: str) -> None:
    csr = pki.create_csr(pki.generate_private_key(), "n1", ORG)
    with pytest.raises(pki.CertificateError, match=message):
        _issue(hub, csr, **kw)


def test_issue_refuses_a_ca_key_that_does_not_match_the_ca(hub: Hub, rogue: Hub) -> None:
    csr = pki.create_csr(pki.generate_private_key(), "n1", ORG)
    with pytest.raises(pki.CertificateError, match="does not belong"):
        pki.issue_node_certificate(
            rogue.key, hub.cert, csr, node_name="n1", org_code=ORG, hosts=["a.gov"], days=1
        )


# --- encodings and files ----------------------------------------------------------------------


def test_fingerprint_and_serial_are_lowercase_hex(hub: Hub) -> None:
    der = hub.cert.public_bytes(serialization.Encoding.DER)
    assert pki.fingerprint(hub.cert) == pki.fingerprint_der(der) == hashlib.sha256(der).hexdigest()
    assert pki.serial_hex(hub.cert) == format(hub.cert.serial_number, "x")
    assert pki.serial_hex(hub.cert) == pki.serial_hex(hub.cert).lower()


def test_pem_round_trips(hub: Hub, rogue: Hub) -> None:
    key = pki.generate_private_key()
    assert pki.load_key_pem(pki.key_to_pem(key)).private_numbers() == key.private_numbers()
    assert pki.load_cert_pem(pki.cert_to_pem(hub.cert)) == hub.cert
    bundle = pki.cert_to_pem(hub.cert) + pki.cert_to_pem(rogue.cert)
    assert pki.load_certs_pem(bundle) == [hub.cert, rogue.cert]
    csr = pki.create_csr(key, "n1", ORG)
    assert pki.load_csr_pem(pki.csr_to_pem(csr)) == csr


@pytest.mark.parametrize(
    "load", [pki.load_key_pem, pki.load_cert_pem, pki.load_certs_pem, pki.load_csr_pem]
)
@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_loaders_refuse_garbage(load: object, data: bytes) -> None:
    with pytest.raises(pki.CertificateError):
        load(data)  # type: ignore[operator]


def test_load_key_pem_refuses_keys_that_are_not_ec() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(pki.CertificateError, match="not an EC key"):
        pki.load_key_pem(pem)


def test_write_private_is_owner_only_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        pki.write_private(path, b"first")
        path.chmod(0o644)
        pki.write_private(path, b"second")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["node.key"]  # no temporary file left behind


# --- mutual TLS between nodes -----------------------------------------------------------------


def test_contexts_require_tls12_and_trust_only_the_hub_ca(hub: Hub) -> None:
    node = hub.issue("n1")
    server = pki.server_context(node.cert_file, node.key_file, hub.ca_file)
    client = pki.client_context(node.cert_file, node.key_file, hub.ca_file)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.cert_store_stats()["x509_ca"] == 1  # no system CAs
    assert not client.check_hostname


@contextlib.asynccontextmanager
async def _serve(ctx: ssl.SSLContext) -> AsyncIterator[tuple[int, list[str | None]]]:
    """A TLS server on loopback that records each client's certificate fingerprint."""
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(pki.peer_fingerprint(writer.get_extra_info("ssl_object")))
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    async with server:
        yield server.sockets[0].getsockname()[1], seen


async def _talk(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str | None]:
    """The server's first line and its certificate fingerprint, as the client saw them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        server_fp = pki.peer_fingerprint(writer.get_extra_info("ssl_object"))
        return await asyncio.wait_for(reader.readline(), 5), server_fp
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def _refused(port: int, ctx: ssl.SSLContext) -> None:
    try:
        line, _ = await _talk(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    # In TLS 1.3 the client finishes its handshake before the server checks the client's
    # certificate (RFC 8446 §2, §4.4.2.4), so the refusal reaches it as a closed connection.
    assert ctx.maximum_version != ssl.TLSVersion.TLSv1_2
    assert line == b""


def _anonymous_client(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_mutual_tls_with_hub_issued_certificates(hub: Hub, version: ssl.TLSVersion) -> None:
    provider, consumer = hub.issue("provider"), hub.issue("consumer")
    client = pki.client_context(consumer.cert_file, consumer.key_file, hub.ca_file)
    client.maximum_version = version
    async with _serve(pki.server_context(provider.cert_file, provider.key_file, hub.ca_file)) as (
        port,
        seen,
    ):
        line, server_fp = await _talk(port, client)
    assert line == b"ok\n"
    assert seen == [pki.fingerprint(consumer.cert)]
    assert server_fp == pki.fingerprint(provider.cert)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_client_certificate_from_another_ca_is_refused(
    hub: Hub, rogue: Hub, version: ssl.TLSVersion
) -> None:
    provider, impostor = hub.issue("provider"), rogue.issue("consumer")
    # The impostor trusts the real hub CA, so only the server's check can stop it.
    client = pki.client_context(impostor.cert_file, impostor.key_file, hub.ca_file)
    client.maximum_version = version
    async with _serve(pki.server_context(provider.cert_file, provider.key_file, hub.ca_file)) as (
        port,
        seen,
    ):
        await _refused(port, client)
    assert seen == []


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_client_without_certificate_is_refused(hub: Hub, version: ssl.TLSVersion) -> None:
    provider = hub.issue("provider")
    client = _anonymous_client(hub.ca_file)
    client.maximum_version = version
    async with _serve(pki.server_context(provider.cert_file, provider.key_file, hub.ca_file)) as (
        port,
        seen,
    ):
        await _refused(port, client)
    assert seen == []


async def test_server_certificate_from_another_ca_is_refused(hub: Hub, rogue: Hub) -> None:
    impostor, consumer = rogue.issue("provider"), hub.issue("consumer")
    client = pki.client_context(consumer.cert_file, consumer.key_file, hub.ca_file)
    # The impostor accepts anyone: the client must refuse on its own.
    server = pki.server_context(impostor.cert_file, impostor.key_file, rogue.ca_file)
    server.verify_mode = ssl.CERT_NONE
    async with _serve(server) as (port, seen):
        with pytest.raises(ssl.SSLCertVerificationError):
            await _talk(port, client)
    assert seen == []


async def test_peer_fingerprint_is_none_without_a_peer_certificate(hub: Hub) -> None:
    provider = hub.issue("provider")
    server = pki.server_context(provider.cert_file, provider.key_file, hub.ca_file)
    server.verify_mode = ssl.CERT_NONE
    async with _serve(server) as (port, seen):
        line, _ = await _talk(port, _anonymous_client(hub.ca_file))
    assert line == b"ok\n"
    assert seen == [None]
