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

Batches (version 2, what the publisher writes). One HPKE sealing costs an X25519 key
generation and Diffie-Hellman, about 80 µs, and opening about 50 µs: most of a node's CPU per
event. So the events of one publish to one node share a data key. The publisher draws a fresh
AES-128-GCM key, seals it once to the node with HPKE (the same suite; ``info`` = version byte
|| ``batch_aad(stream, node)``), and encrypts each event under it (RFC 5116) with a counter
nonce and the event's own binding as the AEAD's associated data (version byte ||
``event_aad``)::

    version (1 byte, 0x02) || enc (32) || sealed data key (16 + 16)
                           || nonce (12) || ciphertext (len(event) + 16 bytes)

Every envelope still stands alone (each carries the sealed data key; the broker stores, trims
and delivers events one by one). The subscriber node opens the data key once per batch (a
bounded cache) and each event with AES-GCM. The bindings are the same as version 1: an
envelope moved to another stream or recipient does not open the data key; moved to another
event id, or swapped with another of its batch, it fails its tag. Version 1 envelopes still
open.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qiao.canonical import canonical_json

VERSION = 0x01
# Version 2: one data key per publish and recipient node, sealed with HPKE, each event
# encrypted under it with AES-128-GCM (see the module doc).
BATCH_VERSION = 0x02
NONCE_BYTES = 12  # RFC 5116 §5.1: AES-GCM's recommended nonce length
DATA_KEY_BYTES = 16  # AES-128
ENC_BYTES = 32  # RFC 9180 §7.1: Nenc of DHKEM(X25519, HKDF-SHA256)
TAG_BYTES = 16  # RFC 9180 §7.3: Nt of AES-128-GCM
KEY_BYTES = 32  # RFC 9180 §7.1: Npk of DHKEM(X25519, HKDF-SHA256)
MIN_ENVELOPE_BYTES = 1 + ENC_BYTES + TAG_BYTES  # the envelope of an empty event
WRAPPED_KEY_BYTES = ENC_BYTES + DATA_KEY_BYTES + TAG_BYTES  # enc || sealed data key
MIN_BATCH_ENVELOPE_BYTES = 1 + WRAPPED_KEY_BYTES + NONCE_BYTES + TAG_BYTES
BATCH_OVERHEAD = MIN_BATCH_ENVELOPE_BYTES  # what an event grows by in a batch envelope
MAX_BATCH_EVENTS = 2**16  # far above a publish's limit; a counter nonce never wraps
AAD_LABEL = "qiao-event/1"
BATCH_AAD_LABEL = "qiao-event-key/2"  # keeps sealed events apart from any other use of the same key

# Printable ASCII except '"' and '\\': strings that RFC 8785 serializes with no escape.
_PLAIN = re.compile(r"[ !#-\[\]-~]+")

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
    """A published event key; ``EnvelopeError`` unless it is canonical base64 of a usable key.

    Cached (keys are immutable; a refusal is not cached): a provider seals to the same few
    node keys request after request, and the check costs a Diffie-Hellman each time."""
    if isinstance(text, str):
        return _cached_event_key(text)
    return _event_key(text)  # refused, without needing the value to be hashable


def _event_key(text: str) -> X25519PublicKey:
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


_cached_event_key = functools.lru_cache(maxsize=1024)(_event_key)


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
    if (
        _PLAIN.fullmatch(stream)
        and _PLAIN.fullmatch(subscriber_node)
        and _PLAIN.fullmatch(event_id)
    ):
        # The names the brokers accept (qiao.events.broker) are all printable ASCII without
        # '"' or '\\', which RFC 8785 §3.2.2.2 writes as they are between quotes: the same
        # bytes as canonical_json, without its general serializer (once per event, per node).
        return f'["{AAD_LABEL}","{stream}","{subscriber_node}","{event_id}"]'.encode()
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


# --- batches: one HPKE key encapsulation for all the events of one publish to one node -------
def batch_aad(stream: str, subscriber_node: str) -> bytes:
    """What a batch's data key is bound to: its stream and its recipient node."""
    return canonical_json([BATCH_AAD_LABEL, stream, subscriber_node])


def seal_batch(
    recipient: X25519PublicKey, items: Sequence[tuple[bytes, bytes]], *, key_aad: bytes
) -> list[bytes]:
    """Seal each ``(plaintext, aad)`` of one publish to ``recipient``: a fresh AES-128-GCM data
    key, sealed once with HPKE (RFC 9180 §6.1 SealBase, bound to ``key_aad`` through
    ``info``), encrypts each event with its own ``aad`` (RFC 5116). Each envelope is whole
    on its own (it carries the sealed data key), so the broker stores, trims and delivers
    events one by one as before; the Diffie-Hellman that dominated the cost of sealing is
    paid once per batch instead of once per event (see the module doc)."""
    if len(items) > MAX_BATCH_EVENTS:
        raise EnvelopeError(f"at most {MAX_BATCH_EVENTS} events share one data key")
    data_key = AESGCM.generate_key(bit_length=128)
    try:
        wrapped = _SUITE.encrypt(data_key, recipient, info=_batch_info(key_aad))
    except ValueError as exc:  # RFC 9180 §7.1.4: DH with a low-order key fails
        raise EnvelopeError(f"cannot seal to this event key: {exc}") from exc
    head = bytes([BATCH_VERSION]) + wrapped
    aead = AESGCM(data_key)
    # A fresh key per batch and a counter per event: no nonce is ever used twice under a key
    # (NIST SP 800-38D §8.2.1, deterministic construction).
    out = []
    for i, (plaintext, aad) in enumerate(items):
        nonce = i.to_bytes(NONCE_BYTES, "big")
        out.append(head + nonce + aead.encrypt(nonce, plaintext, _info2(aad)))
    return out


def _batch_info(key_aad: bytes) -> bytes:
    return bytes([BATCH_VERSION]) + key_aad


def _info2(aad: bytes) -> bytes:
    return bytes([BATCH_VERSION]) + aad


# Opened data keys, by recipient key, sealed key and binding: the events of one batch share
# one, so the node pays HPKE's Diffie-Hellman once per batch, not once per event.
_DATA_KEYS: OrderedDict[tuple[bytes, bytes, bytes], bytes] = OrderedDict()
_DATA_KEYS_MAX = 1024


def _data_key(key: X25519PrivateKey, wrapped: bytes, key_aad: bytes) -> bytes:
    mine = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    slot = (mine, wrapped, key_aad)
    data_key = _DATA_KEYS.get(slot)
    if data_key is None:
        data_key = _SUITE.decrypt(wrapped, key, info=_batch_info(key_aad))
        if len(data_key) != 16:
            raise ValueError("the data key is not an AES-128 key")
        _DATA_KEYS[slot] = data_key
        if len(_DATA_KEYS) > _DATA_KEYS_MAX:
            _DATA_KEYS.popitem(last=False)
    else:
        _DATA_KEYS.move_to_end(slot)
    return data_key


def open_envelope(
    key: X25519PrivateKey, envelope: bytes, *, aad: bytes, key_aad: bytes | None = None
) -> bytes:
    """The event inside ``envelope`` (RFC 9180 §6.1 OpenBase); ``EnvelopeError`` says why not.
    Envelopes of a batch (version 2) also need the batch's binding, ``key_aad``."""
    if not envelope:
        raise EnvelopeError("the envelope is empty")
    if envelope[0] == BATCH_VERSION:
        return _open_batched(key, envelope, aad, key_aad)
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


def _open_batched(
    key: X25519PrivateKey, envelope: bytes, aad: bytes, key_aad: bytes | None
) -> bytes:
    if key_aad is None:
        raise EnvelopeError("a batch envelope needs its stream and recipient (key_aad)")
    if len(envelope) < MIN_BATCH_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"the envelope has {len(envelope)} bytes, fewer than the {MIN_BATCH_ENVELOPE_BYTES} "
            "of a version byte, a sealed data key, a nonce and a tag: it was truncated"
        )
    wrapped = envelope[1 : 1 + WRAPPED_KEY_BYTES]
    nonce = envelope[1 + WRAPPED_KEY_BYTES : 1 + WRAPPED_KEY_BYTES + NONCE_BYTES]
    try:
        data_key = _data_key(key, wrapped, key_aad)
        return AESGCM(data_key).decrypt(
            nonce, envelope[1 + WRAPPED_KEY_BYTES + NONCE_BYTES :], _info2(aad)
        )
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeError(
            "the envelope does not open: it was altered, sealed to another node's event key, "
            "or bound to another stream, recipient or event id"
        ) from exc
