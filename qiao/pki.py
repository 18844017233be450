"""The hub's internal certificate authority, and the TLS contexts nodes talk through.

Node certificates are X.509 v3 (RFC 5280) with ECDSA P-256 keys, usable for both ends of
mutual TLS (RFC 8446 §4.4.2). The hub decides every certificate's subject; what a CSR asks for
is ignored except its public key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey

# RFC 1123 §2.1 host names (letters, digits, hyphens; no wildcards: a node is one host).
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?\Z"
)


class CertificateError(ValueError):
    """A certificate, key or CSR that cannot be used, with the reason."""


def generate_private_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(common_name: str, days: int = 3650) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        # RFC 5280 §4.2.1.9: a CA that issues only end-entity certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _node_subject(node_name: str, org_code: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_code),
        ]
    )


def create_csr(key: PrivateKey, node_name: str, org_code: str) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        _node_subject(node_name, org_code)
    )
    return builder.sign(key, hashes.SHA256())


def _check_public_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CertificateError(f"EC curve {key.curve.name} is not accepted (P-256, P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CertificateError(f"RSA key of {key.key_size} bits is too short (≥ 2048)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateError(f"key type {type(key).__name__} is not accepted")


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    # RFC 5280 §4.2.1.6: a subjectAltName extension must hold at least one name, and an IP
    # address goes in iPAddress, never as text in dNSName.
    if not hosts:
        raise CertificateError("a node certificate needs at least one host name or IP address")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _HOSTNAME.match(host):
                raise CertificateError(
                    f"{host!r} is neither an IP address nor a host name"
                ) from None
            sans.append(x509.DNSName(host.rstrip(".").lower()))
    return sans


def issue_node_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    node_name: str,
    org_code: str,
    hosts: list[str],
    days: int,
    serial: int | None = None,
) -> x509.Certificate:
    """Issue a node certificate for the CSR's key; the hub decides the subject."""
    # The CSR's self-signature is the requester's proof that it holds the private key
    # (RFC 2986 §3); without it anyone could get a certificate for someone else's public key.
    if not csr.is_signature_valid:
        raise CertificateError("the CSR's signature does not verify (proof of possession)")
    public_key = csr.public_key()
    _check_public_key(public_key)
    sans = _subject_alt_names(hosts)
    if days < 1:
        raise CertificateError(f"a certificate must be valid for at least one day, not {days}")
    if serial is not None and not 0 < serial < 1 << 159:
        raise CertificateError("a serial number must be positive and at most 20 octets")
    if ca_cert.public_key() != ca_key.public_key():
        raise CertificateError("the CA key does not belong to the CA certificate")
    now = datetime.now(UTC)
    # RFC 5280 §6.1.3: a certificate outliving its issuer fails path validation anyway, so it
    # says so rather than promise days it cannot have.
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise CertificateError("the CA certificate has expired")
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(_node_subject(node_name, org_code))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_serial() if serial is None else serial)
        .not_valid_before(now - timedelta(minutes=5))  # tolerate clock skew between machines
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # RFC 5280 §4.2.1.1: the authority key identifier repeats the issuer's own SKI.
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _serial() -> int:
    # RFC 5280 §4.1.2.2: positive, at most 20 octets. 128 random bits fit in 17 DER octets and
    # keep serials unpredictable (the CA/Browser Forum asks for ≥ 64 bits, since the MD5 rogue CA).
    return 1 + secrets.randbelow((1 << 128) - 1)


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"not a usable private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the private key is not an EC key")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc


def load_certs_pem(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"not PEM certificates: {exc}") from exc


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr_pem(data: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(data)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from exc


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT|O_EXCL and mode 0600, so the secret is never readable by others,
    # not even before a chmod; the temporary file sits beside the target so os.replace is a
    # same-filesystem rename and a crash leaves either the old file or the new one, never half.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def server_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """The provider side of node-to-node TLS: a client certificate from the hub CA is required
    (RFC 8446 §4.3.2, CertificateRequest)."""
    # Not ssl.create_default_context: it also trusts the system's public CAs, and any
    # certificate they issue must not pass for a node.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """The consumer side: present the node certificate, verify the chain against the hub CA.

    Host names are not checked: nodes are pinned by the exact certificate fingerprint the
    signed global configuration lists for them, which is stronger than a name match (a name
    can be in any CA-issued certificate; a fingerprint is one certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint_der(der) if der else None
