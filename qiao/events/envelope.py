"""Events sealed to one subscriber node with HPKE (RFC 9180): the broker never sees plaintext.

The provider's node seals each event, after the agreement's masking and projection, to the
subscriber node's event key (an X25519 key published in the global configuration), and hands
the sealed envelope to the broker. Only the subscriber node can open it.

The suite is fixed (RFC 9180 §7): base mode (§5.1.1, no pre-shared key, no sender key),
DHKEM(X25519, HKDF-SHA256) (KEM 0x0020), HKDF-SHA256 (KDF 0x0001), AES-128-GCM (AEAD 0x0001),
one message per sealing (the single-shot API of §6.1).

An envelope is bytes::

    version (1 byte, 0x01) || enc (32 bytes) || ciphertext (len(event) + 16 bytes)

``enc`` is the sender's ephemeral X25519 public key (§4.1, ``Encap``); the ciphertext is the
AES-128-GCM encryption of the event with its 16-byte tag at the end.

Binding. ``seal`` and ``open_envelope`` take associated data (for events, ``event_aad``: the
stream, the recipient node and the event id). It is bound through HPKE's ``info``, prefixed
with the version byte, not through the AEAD's ``aad``: cryptography's public API takes only
``info``, and ``info`` enters the key schedule (§5.1, ``key_schedule_context``), so other
associated data derives another key and nonce and opening fails just as an AEAD ``aad``
mismatch would. With one message per context (§6.1) the two places bind equally.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from qiao.canonical import canonical_json

VERSION = 0x01
ENC_BYTES = 32  # RFC 9180 §7.1: Nenc of DHKEM(X25519, HKDF-SHA256)
TAG_BYTES = 16  # RFC 9180 §7.3: Nt of AES-128-GCM
KEY_BYTES = 32  # RFC 9180 §7.1: Npk of DHKEM(X25519, HKDF-SHA256)
MIN_ENVELOPE_BYTES = 1 + ENC_BYTES + TAG_BYTES  # the envelope of an empty event
AAD_LABEL = "qiao-event/1"  # keeps sealed events apart from any other use of the same key

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class EnvelopeError(ValueError):
    """An event key or envelope that cannot be used, with what failed (never the plaintext)."""


# --- event keys ------------------------------------------------------------------------------
def generate_event_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def event_key_to_text(pub: X25519PublicKey) -> str:
    """The public key as the global configuration carries it: base64 of its 32 raw bytes."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def event_key_from_text(text: str) -> X25519PublicKey:
    """A published event key; ``EnvelopeError`` unless it is canonical base64 of a usable key."""
    shown = text[:60] if isinstance(text, str) else type(text).__name__
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        raw = base64.b64decode(text, validate=True)
        # b64decode ignores the unused low bits of the last character; re-encoding catches
        # them, so one key has one spelling (a node's entry cannot be re-spelled unnoticed).
        if base64.b64encode(raw).decode() != text:
            raise ValueError("not canonical base64")
        if len(raw) != KEY_BYTES:
            raise ValueError(f"{len(raw)} bytes, not {KEY_BYTES}")
        pub = X25519PublicKey.from_public_bytes(raw)
        # RFC 7748 §6.1 / RFC 9180 §7.1.4: a low-order point gives an all-zero shared secret,
        # which OpenSSL refuses; finding that now beats failing on every event sealed to it.
        X25519PrivateKey.generate().exchange(pub)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"not a base64 X25519 event key ({exc}): {shown!r}") from exc
    return pub


def event_key_to_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def event_key_from_pem(data: bytes) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EnvelopeError(f"not a usable event key: {exc}") from exc
    if not isinstance(key, X25519PrivateKey):
        raise EnvelopeError("the event key is not an X25519 key")
    return key


# --- sealing ---------------------------------------------------------------------------------
def event_aad(stream: str, subscriber_node: str, event_id: str) -> bytes:
    """What a sealed event is bound to: its stream, its recipient node and its id.

    Canonical JSON (RFC 8785) of a small array, so each triple has exactly one byte form and no
    two triples share one (a name holding a separator cannot shift into its neighbour)."""
    parts = (("stream", stream), ("subscriber node", subscriber_node), ("event id", event_id))
    for what, value in parts:
        if not isinstance(value, str) or not value:
            raise EnvelopeError(f"the {what} must be a non-empty string")
    return canonical_json([AAD_LABEL, stream, subscriber_node, event_id])


def _info(aad: bytes) -> bytes:
    # The version byte is bound too: a later format can never be read as this one.
    return bytes([VERSION]) + aad


def seal(recipient: X25519PublicKey, plaintext: bytes, *, aad: bytes) -> bytes:
    """Seal ``plaintext`` to ``recipient``'s event key (RFC 9180 §6.1 SealBase)."""
    try:
        sealed = _SUITE.encrypt(plaintext, recipient, info=_info(aad))
    except ValueError as exc:  # RFC 9180 §7.1.4: DH with a low-order key fails
        raise EnvelopeError(f"cannot seal to this event key: {exc}") from exc
    return bytes([VERSION]) + sealed  # the suite returns enc || ciphertext


def open_envelope(key: X25519PrivateKey, envelope: bytes, *, aad: bytes) -> bytes:
    """The event inside ``envelope`` (RFC 9180 §6.1 OpenBase); ``EnvelopeError`` says why not."""
    if not envelope:
        raise EnvelopeError("the envelope is empty")
    if envelope[0] != VERSION:
        raise EnvelopeError(f"envelope version {envelope[0]} is not supported (expected {VERSION})")
    if len(envelope) < MIN_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"the envelope has {len(envelope)} bytes, fewer than the {MIN_ENVELOPE_BYTES} "
            "of a version byte, an encapsulated key and a tag: it was truncated"
        )
    try:
        return _SUITE.decrypt(envelope[1:], key, info=_info(aad))
    except (InvalidTag, ValueError) as exc:
        # AES-GCM cannot say which: any altered byte, another recipient's key, or another
        # stream, recipient or event id all fail the same tag check (RFC 5116 §2.2).
        raise EnvelopeError(
            "the envelope does not open: it was altered, sealed to another node's event key, "
            "or bound to another stream, recipient or event id"
        ) from exc
