"""Signed documents: what the hub signs verifies, and nothing else does."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qiao import signing
from qiao.canonical import canonical_json

KEY = signing.generate_signing_key()
PUB = KEY.public_key()
KIND = "qiao-global-configuration"
DOC: dict[str, Any] = {
    "instance": "CN-GOV",
    "serial": 7,
    "nodes": [{"name": "甲", "address": "https://10.0.0.1:8443", "weight": 0.5}],
    "revoked": [],
    "emergency": False,
    "note": None,
}


def _signed() -> dict[str, Any]:
    # A JSON round trip, as the envelope travels from hub to node.
    envelope: dict[str, Any] = json.loads(json.dumps(signing.sign_document(KEY, DOC, kind=KIND)))
    return envelope


def test_round_trip() -> None:
    envelope = _signed()
    assert signing.verify_document(envelope, PUB, kind=KIND) == DOC
    assert envelope["kind"] == KIND and envelope["document"] == DOC
    sig = envelope["signature"]
    assert sig["alg"] == "Ed25519" and sig["key_id"] == signing.key_id(PUB)
    signed = canonical_json({"kind": KIND, "document": DOC})
    PUB.verify(base64.b64decode(sig["value"]), signed)  # exactly these bytes are signed


def test_keys_round_trip_through_text_and_pem() -> None:
    raw = PUB.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = signing.public_key_to_text(PUB)
    assert base64.b64decode(text) == raw and len(raw) == 32
    assert signing.public_key_from_text(text) == PUB
    assert signing.key_id(PUB) == hashlib.sha256(raw).digest()[:8].hex()
    again = signing.load_signing_key_pem(signing.signing_key_to_pem(KEY))
    assert again.public_key() == PUB


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        # The same 32 bytes, spelled with nonzero unused bits in the last character.
        base64.b64encode(bytes(32)).decode()[:-2] + "B=",
        None,
    ],
)
def test_public_key_from_text_refuses_bad_input(text: Any) -> None:
    with pytest.raises(signing.SignatureError, match="not a base64 Ed25519 public key"):
        signing.public_key_from_text(text)


def test_load_signing_key_pem_refuses_other_keys_and_garbage() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(signing.SignatureError, match="not an Ed25519 key"):
        signing.load_signing_key_pem(ec_pem)
    with pytest.raises(signing.SignatureError, match="not a usable signing key"):
        signing.load_signing_key_pem(b"garbage")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A tampering: set the field at a dotted path."""

    def tamper(envelope: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = envelope
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value

    return tamper


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def tamper(envelope: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = envelope
        for part in parents:
            target = target[part]
        del target[last]

    return tamper


def _other_key_claiming_ours(envelope: dict[str, Any]) -> None:
    forged = signing.sign_document(signing.generate_signing_key(), DOC, kind=KIND)
    forged["signature"]["key_id"] = signing.key_id(PUB)
    envelope.update(forged)


TAMPERINGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "document value": (_set("document.serial", 8), "does not verify"),
    "document value type": (_set("document.serial", "7"), "does not verify"),
    "nested value": (_set("document.nodes.0.address", "https://6.6.6.6"), "does not verify"),
    "float value": (_set("document.nodes.0.weight", 0.50001), "does not verify"),
    "document field added": (_set("document.extra", 1), "does not verify"),
    "document field removed": (_delete("document.note"), "does not verify"),
    "kind relabelled": (_set("kind", "qiao-agreement"), "expected a"),
    "signature from another key": (
        lambda e: e.update(signing.sign_document(signing.generate_signing_key(), DOC, kind=KIND)),
        "signed by key",
    ),
    "another key claiming our key id": (_other_key_claiming_ours, "does not verify"),
    "key id": (_set("signature.key_id", "0" * 16), "signed by key"),
    "alg": (_set("signature.alg", "EdDSA"), "unknown signature algorithm"),
    "value not base64": (_set("signature.value", "@@@@"), "not base64"),
    "value not a string": (_set("signature.value", 12345678), "not base64"),
    "value too short": (_set("signature.value", "AAAA"), "64 bytes, not 3"),
    "value missing": (_delete("signature.value"), "signature lacks value"),
    "signature missing": (_delete("signature"), "lacks signature"),
    "signature not an object": (_set("signature", "abc"), "must be a JSON object"),
    "unsigned extra field": (_set("comment", "trust me"), "unexpected comment"),
    "unsigned extra signature field": (_set("signature.x", 1), "unexpected x"),
    "document not an object": (_set("document", [DOC]), "body must be a JSON object"),
    "document beyond I-JSON": (_set("document.serial", 2**60), "no canonical JSON form"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_every_field_tampering_is_refused(name: str) -> None:
    tamper, message = TAMPERINGS[name]
    envelope = _signed()
    tamper(envelope)
    with pytest.raises(signing.SignatureError, match=message):
        signing.verify_document(envelope, PUB, kind=KIND)


def test_kind_is_bound_by_the_signature() -> None:
    # Relabelled and checked as the new kind: only the signature can notice.
    envelope = _signed()
    envelope["kind"] = "qiao-agreement"
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify_document(envelope, PUB, kind="qiao-agreement")
    with pytest.raises(signing.SignatureError, match="expected a 'qiao-agreement' document"):
        signing.verify_document(_signed(), PUB, kind="qiao-agreement")


@pytest.mark.parametrize("envelope", [None, [], "x", 1, {}, {"kind": KIND, "document": DOC}])
def test_what_is_not_an_envelope_is_refused(envelope: object) -> None:
    with pytest.raises(signing.SignatureError, match=r"must be a JSON object|lacks"):
        signing.verify_document(envelope, PUB, kind=KIND)


def test_every_bit_of_the_signature_matters() -> None:
    envelope = _signed()
    value = bytearray(base64.b64decode(envelope["signature"]["value"]))
    for i in range(len(value)):
        for bit in range(8):
            value[i] ^= 1 << bit
            envelope["signature"]["value"] = base64.b64encode(value).decode()
            value[i] ^= 1 << bit
            with pytest.raises(signing.SignatureError, match="does not verify"):
                signing.verify_document(envelope, PUB, kind=KIND)


def test_every_character_of_the_signature_text_matters() -> None:
    envelope = _signed()
    text = envelope["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
    for i, char in enumerate(text):
        for other in alphabet.replace(char, ""):
            envelope["signature"]["value"] = text[:i] + other + text[i + 1 :]
            with pytest.raises(signing.SignatureError):
                signing.verify_document(envelope, PUB, kind=KIND)


def test_every_single_byte_change_of_the_serialized_envelope_is_refused() -> None:
    wire = json.dumps(_signed(), ensure_ascii=False).encode()
    parsed = 0
    for i in range(len(wire)):
        for delta in (0x01, 0x20):
            mutated = bytearray(wire)
            mutated[i] ^= delta
            try:
                envelope = json.loads(bytes(mutated))
            except ValueError:  # no longer JSON (or UTF-8): refused before any signature check
                continue
            parsed += 1
            with pytest.raises(signing.SignatureError):
                signing.verify_document(envelope, PUB, kind=KIND)
    assert parsed > len(wire)  # most changes still parse, so the signature is what refuses them


# I-JSON (RFC 7493 §2.2): integers within ±(2**53 - 1), finite floats; RFC 8785 signs exactly those.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
DOCUMENTS = st.dictionaries(st.text(), JSON_VALUES, max_size=8)


@given(DOCUMENTS, st.text(min_size=1, max_size=40))
def test_any_json_document_round_trips(document: dict[str, Any], kind: str) -> None:
    envelope = json.loads(
        json.dumps(signing.sign_document(KEY, copy.deepcopy(document), kind=kind))
    )
    assert signing.verify_document(envelope, PUB, kind=kind) == document


@settings(max_examples=50)  # two recursive documents per example: the slow one
@given(DOCUMENTS, DOCUMENTS)
def test_a_signature_never_verifies_another_document(a: dict[str, Any], b: dict[str, Any]) -> None:
    assume(canonical_json(a) != canonical_json(b))
    envelope = signing.sign_document(KEY, a, kind=KIND)
    envelope["document"] = b
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify_document(envelope, PUB, kind=KIND)
