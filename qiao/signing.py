"""Ed25519 signatures (RFC 8032) over canonical JSON (RFC 8785): signed documents.

An envelope is ``{"kind", "document", "signature": {"alg", "key_id", "value"}}``; the
signature covers the canonical form of ``{"kind": kind, "document": document}``, so a document
signed as one kind (a global configuration) cannot be passed off as another (an agreement).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qiao.canonical import canonical_json

ALG = "Ed25519"
SIGNATURE_BYTES = 64  # RFC 8032 §5.1.6: R || S, 32 octets each
_ENVELOPE_FIELDS = {"kind", "document", "signature"}
_SIGNATURE_FIELDS = {"alg", "key_id", "value"}


class SignatureError(ValueError):
    """A signed document that does not verify, with exactly what did not match."""


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signing_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_signing_key_pem(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"not a usable signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the signing key is not an Ed25519 key")
    return key


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_to_text(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw(pub)).decode()


def _b64decode(text: object) -> bytes:
    """Strict base64: one text for one value, so an envelope cannot be re-spelled unnoticed."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    raw = base64.b64decode(text, validate=True)
    # b64decode ignores the unused low bits of the last character; re-encoding catches them.
    if base64.b64encode(raw).decode() != text:
        raise ValueError("not canonical base64")
    return raw


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(_b64decode(text))
    except (binascii.Error, ValueError) as exc:
        shown = text[:60] if isinstance(text, str) else type(text).__name__
        raise SignatureError(f"not a base64 Ed25519 public key: {shown!r}") from exc


def key_id(pub: Ed25519PublicKey) -> str:
    """Names the key for people and logs; verification never trusts it, only compares it."""
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def _signed_bytes(kind: str, document: Any) -> bytes:
    return canonical_json({"kind": kind, "document": document})


def sign_document(key: Ed25519PrivateKey, document: dict[str, Any], *, kind: str) -> dict[str, Any]:
    signature = key.sign(_signed_bytes(kind, document))
    return {
        "kind": kind,
        "document": document,
        "signature": {
            "alg": ALG,
            "key_id": key_id(key.public_key()),
            "value": base64.b64encode(signature).decode(),
        },
    }


def _check_fields(value: object, expected: set[str], what: str) -> dict[str, Any]:
    # Unsigned extra fields are refused too: nothing beside the signed bytes may ride along.
    if not isinstance(value, dict):
        raise SignatureError(f"{what} must be a JSON object")
    if missing := expected - value.keys():
        raise SignatureError(f"{what} lacks {', '.join(sorted(missing))}")
    if extra := value.keys() - expected:
        raise SignatureError(f"{what} has unexpected {', '.join(sorted(map(str, extra)))}")
    return value


def verify_document(envelope: object, public_key: Ed25519PublicKey, *, kind: str) -> dict[str, Any]:
    """The envelope's document if its signature verifies; ``SignatureError`` says what failed."""
    env = _check_fields(envelope, _ENVELOPE_FIELDS, "a signed document")
    if env["kind"] != kind:
        raise SignatureError(f"expected a {kind!r} document, got {env['kind']!r}")
    document = env["document"]
    if not isinstance(document, dict):
        raise SignatureError("the signed document's body must be a JSON object")
    sig = _check_fields(env["signature"], _SIGNATURE_FIELDS, "the signature")
    if sig["alg"] != ALG:
        raise SignatureError(f"unknown signature algorithm {sig['alg']!r}, expected {ALG}")
    if sig["key_id"] != key_id(public_key):
        raise SignatureError(f"signed by key {sig['key_id']!r}, expected {key_id(public_key)}")
    try:
        value = _b64decode(sig["value"])
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"the signature value is not base64: {exc}") from exc
    if len(value) != SIGNATURE_BYTES:
        raise SignatureError(f"an {ALG} signature has {SIGNATURE_BYTES} bytes, not {len(value)}")
    try:
        message = _signed_bytes(kind, document)
    except (ValueError, TypeError) as exc:  # RFC 8785 §3.2.2.3: e.g. integers beyond 2**53
        raise SignatureError(f"the document has no canonical JSON form: {exc}") from exc
    try:
        public_key.verify(value, message)
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature does not verify: the document was altered or signed by another key"
        ) from exc
    return document
