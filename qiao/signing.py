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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qiao.canonical import canonical_json

ALG = "Ed25519"


class SignatureError(ValueError):
    """A signed document that does not verify, with exactly what did not match."""


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signing_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_signing_key_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the signing key is not an Ed25519 key")
    return key


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_to_text(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw(pub)).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SignatureError(f"not a base64 Ed25519 public key: {text[:60]!r}") from exc


def key_id(pub: Ed25519PublicKey) -> str:
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


def verify_document(envelope: object, public_key: Ed25519PublicKey, *, kind: str) -> dict[str, Any]:
    """The envelope's document if its signature verifies; ``SignatureError`` says what failed."""
    if not isinstance(envelope, dict):
        raise SignatureError("a signed document must be a JSON object")
    missing = {"kind", "document", "signature"} - envelope.keys()
    if missing:
        raise SignatureError(f"the signed document lacks {', '.join(sorted(missing))}")
    if envelope["kind"] != kind:
        raise SignatureError(f"expected a {kind!r} document, got {envelope['kind']!r}")
    sig, document = envelope["signature"], envelope["document"]
    if not isinstance(document, dict):
        raise SignatureError("the signed document's body must be a JSON object")
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        raise SignatureError(f"the signature algorithm must be {ALG}")
    if sig.get("key_id") != key_id(public_key):
        raise SignatureError(f"signed by key {sig.get('key_id')!r}, expected {key_id(public_key)}")
    try:
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
    except binascii.Error as exc:
        raise SignatureError("the signature value is not base64") from exc
    try:
        public_key.verify(value, _signed_bytes(kind, document))
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature does not verify: the document was altered or signed by another key"
        ) from exc
    return document
