"""C2SP signed notes, checkpoints and cosignatures: Go's published example, then every rule."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qiao.ledger.errors import NoteError
from qiao.ledger.note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_SIGNATURES,
    Checkpoint,
    CosignatureVerifier,
    Cosigner,
    NoteSignature,
    Signer,
    Verifier,
    cosign,
    cosignature_timestamp,
    key_id,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_note,
    verify_cosignature,
)

# The example in the documentation and tests of golang.org/x/mod/sumdb/note.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
SIGNED = (TEXT + "\n" + PETER_SIG).encode()

PETER = Verifier.from_text(PETER_VKEY)
ENOCH = Verifier.from_text(ENOCH_VKEY)

# The example checkpoint body of c2sp.org/tlog-checkpoint and c2sp.org/tlog-cosignature.
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def _seeded(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- Go's published example -------------------------------------------------------------------


def test_go_example_verifies() -> None:
    assert PETER.name == "PeterNeumann"
    assert PETER.key_id.hex() == "c74f20a3"
    assert PETER.to_text() == PETER_VKEY
    text, signatures = open_note(SIGNED, [PETER])
    assert text == TEXT
    assert [(s.name, s.key_id.hex()) for s in signatures] == [("PeterNeumann", "c74f20a3")]
    assert signatures[0].line() == PETER_SIG


def test_go_example_signs_byte_for_byte() -> None:
    # Ed25519 is deterministic (RFC 8032 §5.1.6), so the published signer key must reproduce
    # the published note exactly.
    signer = Signer.from_text(PETER_SKEY)
    assert signer.key_id == PETER.key_id
    assert signer.to_text() == PETER_SKEY
    assert sign_note(TEXT, [signer]) == SIGNED
    assert "AYEK" not in repr(signer)


def test_altering_any_bit_of_the_go_example_fails() -> None:
    for offset in range(len(SIGNED)):
        for bit in range(8):
            damaged = bytearray(SIGNED)
            damaged[offset] ^= 1 << bit
            with pytest.raises(NoteError):
                open_note(bytes(damaged), [PETER])


def test_mangled_verifier_keys_are_rejected() -> None:
    # As Go's TestNewVerifier: every proper substring and every single-byte change fails.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteError):
                    Verifier.from_text(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        changed = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(NoteError):
            Verifier.from_text(changed)
    # Go's two crafted keys: a key of the wrong length and an unknown algorithm, each with a
    # key ID recomputed to match.
    with pytest.raises(NoteError):
        Verifier.from_text(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(NoteError, match="signature type 0x65"):
        Verifier.from_text("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    short = b"\x01" + b"\x02" * 31
    short_id = hashlib.sha256(b"Short\n" + short).digest()[:4].hex()
    with pytest.raises(NoteError, match="holds 31 key bytes"):
        Verifier.from_text(f"Short+{short_id}+{base64.b64encode(short).decode()}")


def test_mangled_signer_keys_are_rejected() -> None:
    for i in range(len(PETER_SKEY) + 1):
        for j in range(i + 1, len(PETER_SKEY) + 1):
            if (i, j) != (0, len(PETER_SKEY)):
                with pytest.raises(NoteError):
                    Signer.from_text(PETER_SKEY[i:j])
    for i in range(len(PETER_SKEY)):
        changed = PETER_SKEY[:i] + chr(ord(PETER_SKEY[i]) + 1) + PETER_SKEY[i + 1 :]
        with pytest.raises(NoteError):
            Signer.from_text(changed)


# --- opening notes (c2sp.org/signed-note "Signatures") ----------------------------------------


def test_unknown_keys_are_ignored() -> None:
    data = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    assert [s.name for s in open_note(data, [PETER])[1]] == ["PeterNeumann"]
    assert [s.name for s in open_note(data, [PETER, ENOCH])[1]] == ["PeterNeumann", "EnochRoot"]
    assert [s.name for s in open_note(data, [ENOCH])[1]] == ["EnochRoot"]


def test_a_known_name_with_another_key_id_is_another_key() -> None:
    # "MUST ignore signatures from unknown keys, even if they share a name or ID (but not both)"
    impostor = Signer("PeterNeumann", _seeded(1))
    data = sign_note(TEXT, [impostor]) + ENOCH_SIG.encode()
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(data, [PETER])
    assert open_note(data, [PETER, ENOCH])[1][0].name == "EnochRoot"


def test_no_known_signature_is_rejected_and_named() -> None:
    data = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    with pytest.raises(NoteError, match="signed by EnochRoot\\+af0cfe78, PeterNeumann\\+c74f20a3"):
        open_note(data, [])


def test_a_known_key_with_a_bad_signature_rejects_the_note() -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="PeterNeumann\\+c74f20a3 does not verify"):
        open_note((TEXT + "\n" + bad).encode(), [PETER])
    # The same damage to an unknown key's line is ignored.
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    assert open_note((TEXT + "\n" + PETER_SIG + bad_enoch).encode(), [PETER])[1]


def test_repeated_signatures_count_once() -> None:
    data = (TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG).encode()
    assert [s.name for s in open_note(data, [PETER, ENOCH])[1]] == ["PeterNeumann", "EnochRoot"]


def test_ambiguous_known_keys_are_rejected_when_used() -> None:
    twin = Verifier.from_text(ENOCH_VKEY)
    with pytest.raises(NoteError, match="more than one known key"):
        open_note((TEXT + "\n" + ENOCH_SIG).encode(), [ENOCH, PETER, twin])
    # Unused, the ambiguity does no harm; the same object twice is no ambiguity at all.
    assert open_note(SIGNED, [ENOCH, PETER, twin])[1]
    assert open_note((TEXT + "\n" + ENOCH_SIG).encode(), [ENOCH, ENOCH])[1]


def test_signature_count_is_capped() -> None:
    assert MAX_SIGNATURES >= 16  # the spec's floor
    many = (TEXT + "\n" + PETER_SIG * MAX_SIGNATURES).encode()
    assert open_note(many, [PETER])[1]
    too_many = (TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1)).encode()
    with pytest.raises(NoteError, match="more than 100"):
        open_note(too_many, [PETER])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (TEXT, "no blank line"),
        (TEXT + "\n", "no signature lines"),
        (TEXT + "\n" + PETER_SIG[:-1], "does not end with a newline"),
        ("\x01" + TEXT + "\n" + PETER_SIG, "control character U\\+0001"),
        (TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG, "control character U\\+000D"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "not valid base64"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"), "plus sign"),
        (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "em dash"),
        (TEXT + "\n" + PETER_SIG.replace("— ", "-- "), "em dash"),
        (TEXT + "\n" + PETER_SIG.replace("— ", "—"), "em dash"),
        (TEXT + "\n" + "— PeterNeumann \n", "lacks a key name"),
        (TEXT + "\n" + "— PeterNeumann\n", "lacks a key name"),
        (TEXT + "\n" + "— PeterNeumann AAAAAA==\n", "too short"),
        (TEXT + "\n" + PETER_SIG.replace("AM=", "AM"), "not valid base64"),
    ],
)
def test_malformed_notes_are_rejected(data: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        open_note(data.encode(), [PETER])


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="not valid UTF-8"):
        open_note(b"\xff" + SIGNED, [PETER])


def test_only_canonical_base64_is_accepted() -> None:
    # "AM=" and "AN=" decode to the same bytes in lenient decoders; only one is the note.
    with pytest.raises(NoteError, match="not canonical base64"):
        open_note(SIGNED.replace(b"AM=", b"AN="), [PETER])


# --- signing notes ----------------------------------------------------------------------------


def test_sign_and_open_with_several_signers() -> None:
    log = Signer("qiao.example/log", _seeded(2))
    backup = Signer.generate("qiao.example/log-backup")
    text = "first\n\nafter a blank line\n"
    data = sign_note(text, [log, backup])
    assert data.decode().startswith(text + "\n— qiao.example/log ")
    opened, signatures = open_note(data, [backup.verifier(), log.verifier()])
    assert opened == text
    assert [s.name for s in signatures] == ["qiao.example/log", "qiao.example/log-backup"]
    assert Signer.from_text(log.to_text()).verifier().to_text() == log.verifier().to_text()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no final newline", "must end with a newline"),
        ("tab\there\n", "control character U\\+0009"),
    ],
)
def test_sign_rejects_texts_a_verifier_would_reject(text: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        sign_note(text, [Signer.from_text(PETER_SKEY)])


def test_sign_needs_a_signer() -> None:
    with pytest.raises(NoteError, match="at least one signature"):
        sign_note(TEXT, [])


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u3000b", "a\x01b"])
def test_key_names_follow_the_spec(name: str) -> None:
    with pytest.raises(NoteError):
        Signer(name, _seeded(3))


def test_key_id_follows_the_spec() -> None:
    pub = _raw(_seeded(4))
    want = hashlib.sha256(b"qiao.example/w1\n\x01" + pub).digest()[:4]
    assert key_id("qiao.example/w1", ED25519, pub) == want
    assert Signer("qiao.example/w1", _seeded(4)).key_id == want


# --- checkpoints (c2sp.org/tlog-checkpoint) ---------------------------------------------------


def test_spec_checkpoint_parses_and_formats_back() -> None:
    checkpoint = Checkpoint.parse(SPEC_CHECKPOINT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.format() == SPEC_CHECKPOINT


def test_checkpoint_extensions_round_trip() -> None:
    checkpoint = Checkpoint("qiao.example/log", 0, b"\x00" * 32, ("ext one", "ext two"))
    assert Checkpoint.parse(checkpoint.format()) == checkpoint
    assert checkpoint.format().endswith("ext one\next two\n")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("origin\n1\n", "needs origin, tree size and root hash"),
        ("origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "end with a newline"),
        ("\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "origin must not be empty"),
        ("o\n01\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "not a decimal"),
        ("o\n+1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "not a decimal"),
        ("o\n 1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "not a decimal"),
        ("o\n1_0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "not a decimal"),
        ("o\n\u0661\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "not a decimal"),
        ("o\n18446744073709551616\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "uint64"),
        ("o\n1\nAAAA\n", "3 bytes, not 32"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "not canonical"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n", "extension line must not"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\next\n\n", "extension line must not"),
    ],
)
def test_malformed_checkpoints_are_rejected(text: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        Checkpoint.parse(text)


def test_signed_checkpoint_opens() -> None:
    log = Signer("qiao.example/log", _seeded(5))
    checkpoint = Checkpoint("qiao.example/log", 7, hashlib.sha256(b"root").digest())
    data = sign_note(checkpoint.format(), [log])
    opened, signatures = open_checkpoint(data, [log.verifier()])
    assert opened == checkpoint
    assert signatures[0].key_id == log.key_id
    with pytest.raises(NoteError, match="needs origin"):
        open_checkpoint(sign_note("just one line\n", [log]), [log.verifier()])


# --- cosignatures (c2sp.org/tlog-cosignature) -------------------------------------------------

TIMESTAMP = 1679315147  # the spec's example time


def test_cosignature_has_the_specified_layout() -> None:
    key = _seeded(6)
    witness = Cosigner("witness.example.com/w1", key)
    line = cosign(SPEC_CHECKPOINT.encode(), TIMESTAMP, witness)
    prefix = "— witness.example.com/w1 "
    assert line.startswith(prefix) and line.endswith("\n")
    payload = base64.b64decode(line[len(prefix) : -1], validate=True)
    assert len(payload) == 4 + 8 + 64
    pub = _raw(key)
    # Rebuilt independently from the spec text: key ID over type 0x04, BE timestamp, message.
    assert payload[:4] == hashlib.sha256(b"witness.example.com/w1\n\x04" + pub).digest()[:4]
    assert payload[4:12] == TIMESTAMP.to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + SPEC_CHECKPOINT.encode()
    key.public_key().verify(payload[12:], message)  # raises if wrong
    assert witness.key_id == payload[:4] != key_id("witness.example.com/w1", ED25519, pub)


def test_cosignature_verifies_alone_and_inside_the_note() -> None:
    log = Signer("qiao.example/log", _seeded(7))
    witness = Cosigner("qiao.example/witness-gongan", _seeded(8))
    body = Checkpoint("qiao.example/log", 42, hashlib.sha256(b"42").digest()).format()
    line = cosign(body.encode(), TIMESTAMP, witness)
    assert verify_cosignature(body.encode(), line, witness.verifier()) == TIMESTAMP

    cosigned = sign_note(body, [log]) + line.encode()
    _, signatures = open_note(cosigned, [log.verifier(), witness.verifier()])
    assert [s.name for s in signatures] == [log.name, witness.name]
    assert cosignature_timestamp(signatures[1]) == TIMESTAMP
    # A witness alone is a known key too, but a checkpoint needs the log: callers check both.
    _, only_witness = open_note(cosigned, [witness.verifier()])
    assert [s.name for s in only_witness] == [witness.name]


def test_cosignature_is_not_a_plain_note_signature() -> None:
    # The same Ed25519 key configured as a type-0x01 key has another key ID, so the
    # cosignature line is unknown to it and cannot pass as the witness signing the text.
    key = _seeded(9)
    line = cosign(SPEC_CHECKPOINT.encode(), TIMESTAMP, Cosigner("w", key))
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note((SPEC_CHECKPOINT + "\n" + line).encode(), [Verifier("w", key.public_key())])


def test_damaged_cosignatures_fail() -> None:
    witness = Cosigner("qiao.example/w", _seeded(10))
    verifier = witness.verifier()
    body = SPEC_CHECKPOINT.encode()
    line = cosign(body, TIMESTAMP, witness)
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(body.replace(b"20852163", b"20852164"), line, verifier)
    # Same signature, another timestamp: the time is signed.
    raw = bytearray(base64.b64decode(line.split(" ")[2].strip()))
    raw[11] ^= 1
    moved = f"— {witness.name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(body, moved, verifier)
    other = Cosigner("qiao.example/w", _seeded(11)).verifier()
    with pytest.raises(NoteError, match="key ID"):
        verify_cosignature(body, line, other)
    with pytest.raises(NoteError, match="not by witness"):
        verify_cosignature(body, line, Cosigner("qiao.example/x", _seeded(10)).verifier())
    with pytest.raises(NoteError, match="not 72"):
        cosignature_timestamp(NoteSignature(witness.name, witness.key_id, b"\x00" * 64))
    too_late = (2**63).to_bytes(8, "big") + b"\x00" * 64
    with pytest.raises(NoteError, match="exceeds"):
        cosignature_timestamp(NoteSignature(witness.name, witness.key_id, too_late))
    assert not verifier.verify(body, too_late)


def test_cosigner_signs_only_checkpoints_at_valid_times() -> None:
    witness = Cosigner("qiao.example/w", _seeded(12))
    with pytest.raises(NoteError, match="needs origin"):
        cosign(b"not a checkpoint\n", TIMESTAMP, witness)
    with pytest.raises(NoteError, match="UTF-8"):
        cosign(b"\xff\n1\nAAAA\n", TIMESTAMP, witness)
    with pytest.raises(ValueError, match="timestamp"):
        cosign(SPEC_CHECKPOINT.encode(), 2**63, witness)
    with pytest.raises(ValueError, match="timestamp"):
        cosign(SPEC_CHECKPOINT.encode(), -1, witness)
    line = cosign(SPEC_CHECKPOINT.encode(), 0, witness)
    assert verify_cosignature(SPEC_CHECKPOINT.encode(), line, witness.verifier()) == 0


def test_verifier_keys_by_type() -> None:
    witness = Cosigner("qiao.example/w", _seeded(13))
    text = witness.verifier().to_text()
    assert base64.b64decode(text.split("+", 2)[2])[0] == COSIGNATURE_V1
    parsed = parse_verifier_key(text)
    assert isinstance(parsed, CosignatureVerifier)
    assert parsed.key_id == witness.key_id
    assert CosignatureVerifier.from_text(text).to_text() == text
    assert isinstance(parse_verifier_key(PETER_VKEY), Verifier)
    with pytest.raises(NoteError, match="signature type 0x04, expected 0x01"):
        Verifier.from_text(text)
    with pytest.raises(NoteError, match="signature type 0x01, expected 0x04"):
        CosignatureVerifier.from_text(PETER_VKEY)
