"""Signed notes, checkpoints and witness cosignatures, as the C2SP specifications define them.

- c2sp.org/signed-note: text, a blank line, then ``— <name> <base64(keyID || signature)>`` lines;
  Ed25519 keys (signature type 0x01) in Go's ``golang.org/x/mod/sumdb/note`` key encodings.
- c2sp.org/tlog-checkpoint: the note text a log signs (origin, tree size, root hash).
- c2sp.org/tlog-cosignature: a witness's timestamped Ed25519 signature (type 0x04) over a
  checkpoint, added to the note as one more signature line.

Pure functions, no I/O. Anything malformed or unverified raises :class:`NoteError` saying what.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qiao.ledger.errors import NoteError

# c2sp.org/signed-note "Signature types".
ED25519 = 0x01
COSIGNATURE_V1 = 0x04

# c2sp.org/signed-note: verifiers SHOULD cap the signatures per note and MUST accept 16;
# Go's note package stops at 100, and so do we, so a note cannot make us verify forever.
MAX_SIGNATURES = 100
# c2sp.org/tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1.
MAX_TIMESTAMP = 2**63 - 1
MAX_TREE_SIZE = 2**64 - 1

_SIG_PREFIX = "— "  # em dash (U+2014), space
_KEY_ID_SIZE = 4
_ED25519_SIG_SIZE = 64
_ED25519_KEY_SIZE = 32
_COSIGNATURE_SIZE = 8 + _ED25519_SIG_SIZE  # timestamped_signature: u64 timestamp || sig
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """c2sp.org/signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4].

    The type byte separates uses of one key: a witness's cosignature key (0x04) never has the
    key ID of the same key signing plain notes (0x01).
    """
    material = name.encode() + b"\n" + bytes([signature_type]) + public_key
    return hashlib.sha256(material).digest()[:_KEY_ID_SIZE]


class NoteVerifier(Protocol):
    """What :func:`open_note` needs of a key: its name, its key ID and a check."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...


class NoteSigner(Protocol):
    """What :func:`sign_note` needs of a key."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key's name and ID, and the signature bytes after the ID."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        payload = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_SIG_PREFIX}{self.name} {payload}\n"


class Verifier:
    """An Ed25519 note key (signature type 0x01)."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_name(name)
        self._name = name
        self.public_key = public_key
        self._key_id = key_id(name, ED25519, _raw_public(public_key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @classmethod
    def from_text(cls, text: str) -> Verifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        name, raw = _parse_vkey(text, ED25519)
        return cls(name, _load_public(raw))

    def to_text(self) -> str:
        return _format_vkey(self._name, self._key_id, ED25519, _raw_public(self.public_key))

    def verify(self, message: bytes, signature: bytes) -> bool:
        # RFC 8032 signatures are exactly 64 bytes; anything else is simply not valid.
        if len(signature) != _ED25519_SIG_SIZE:
            return False
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Verifier({self.to_text()!r})"


class Signer:
    """An Ed25519 note signing key (signature type 0x01). Keep its text form secret."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self._name = name
        self._private_key = private_key
        self._key_id = key_id(name, ED25519, _raw_public(private_key.public_key()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`` (Go's encoding)."""
        parts = text.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise NoteError("signer key does not have the form PRIVATE+KEY+<name>+<id>+<key>")
        _, _, name, hex_id, b64 = parts
        _check_name(name)
        if not _HEX8.fullmatch(hex_id):
            raise NoteError(f"signer key ID {hex_id!r} is not 8 hex digits")
        raw = _b64decode(b64, "signer key")
        if len(raw) != 1 + _ED25519_KEY_SIZE or raw[0] != ED25519:
            raise NoteError("signer key is not type 0x01 followed by a 32-byte Ed25519 seed")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        # The text carries the ID of the public key; only deriving that key can check it.
        if signer.key_id != bytes.fromhex(hex_id):
            raise NoteError(
                f"signer key ID {hex_id.lower()} does not match its key, whose ID is "
                f"{signer.key_id.hex()}"
            )
        return signer

    def to_text(self) -> str:
        seed = self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        payload = base64.b64encode(bytes([ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self._name}+{self._key_id.hex()}+{payload}"

    def verifier(self) -> Verifier:
        return Verifier(self._name, self._private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)

    def __repr__(self) -> str:
        # Never the key itself: reprs end up in logs.
        return f"Signer(name={self._name!r}, key_id={self._key_id.hex()!r})"


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """c2sp.org/signed-note: the text, a blank line, then one signature line per signer.

    To add a signature to an existing note (a witness cosignature), append its line.
    """
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline (U+000A)")
    _check_characters(text, "note text")
    if not signers:
        raise NoteError("a signed note needs at least one signature")
    message = text.encode()
    lines = []
    for signer in signers:
        _check_name(signer.name)
        if len(signer.key_id) != _KEY_ID_SIZE:
            raise NoteError(f"key ID of {signer.name!r} is {len(signer.key_id)} bytes, not 4")
        lines.append(NoteSignature(signer.name, signer.key_id, signer.sign(message)).line())
    return (text + "\n" + "".join(lines)).encode()


def open_note(data: bytes, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteSignature]]:
    """Parse a signed note and verify it (c2sp.org/signed-note "Signatures").

    Signatures by keys not in ``verifiers`` are ignored, as the spec requires (that is how
    logs rotate keys and witnesses add cosignatures); a known key whose signature fails
    rejects the whole note; at least one known key must have signed. Returns the text and
    the verified signatures, one per key.
    """
    known: dict[tuple[str, bytes], list[NoteVerifier]] = {}
    for v in verifiers:
        same = known.setdefault((v.name, v.key_id), [])
        if not any(v is other for other in same):
            same.append(v)

    try:
        message = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"note is not valid UTF-8 (byte {exc.start})") from exc
    _check_characters(message, "note")
    # The text ends at the last blank line: the text may hold blank lines of its own.
    split = message.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines after the blank line")
    if not block.endswith("\n"):
        raise NoteError("note's last signature line does not end with a newline")

    text_bytes = text.encode()
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    verified: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    counted: set[tuple[str, bytes]] = set()
    for number, line in enumerate(lines, start=1):
        sig = _parse_signature_line(line, number)
        seen.add((sig.name, sig.key_id))
        candidates = known.get((sig.name, sig.key_id))
        if not candidates:
            continue
        key = _key_text(sig.name, sig.key_id)
        if len(candidates) > 1:
            raise NoteError(f"more than one known key is named {key}")
        if not candidates[0].verify(text_bytes, sig.signature):
            raise NoteError(f"signature line {number} by known key {key} does not verify")
        # One key, one entry: a repeated line must not count twice towards a quorum.
        if (sig.name, sig.key_id) not in counted:
            counted.add((sig.name, sig.key_id))
            verified.append(sig)
    if not verified:
        signed_by = ", ".join(sorted(_key_text(name, kid) for name, kid in seen))
        raise NoteError(f"note has no signature by a known key; it is signed by {signed_by}")
    return text, verified


@dataclass(frozen=True)
class Checkpoint:
    """c2sp.org/tlog-checkpoint "Note text": what a log signs about its tree at one size."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        named = [("origin", self.origin), *(("extension line", e) for e in self.extensions)]
        for what, line in named:
            if not line:
                raise NoteError(f"checkpoint {what} must not be empty")
            if "\n" in line:
                raise NoteError(f"checkpoint {what} {line[:60]!r} spans more than one line")
            _check_characters(line, f"checkpoint {what}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size {self.size} is not a uint64")
        if len(self.root_hash) != 32:
            raise NoteError(f"checkpoint root hash is {len(self.root_hash)} bytes, not 32")

    def format(self) -> str:
        """The note text: origin, decimal size, base64 root hash, extensions, each + newline."""
        root = base64.b64encode(self.root_hash).decode()
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(
                f"checkpoint has {len(lines)} lines, needs origin, tree size and root hash"
            )
        origin, size_text, root_text, *extensions = lines
        # "no leading zeroes": one size has exactly one spelling, so one checkpoint has one text.
        if not _DECIMAL.fullmatch(size_text):
            raise NoteError(f"checkpoint tree size {size_text[:40]!r} is not a decimal number")
        return cls(
            origin=origin,
            size=int(size_text),
            root_hash=_b64decode(root_text, "checkpoint root hash"),
            extensions=tuple(extensions),
        )


def open_checkpoint(
    data: bytes, verifiers: Iterable[NoteVerifier]
) -> tuple[Checkpoint, list[NoteSignature]]:
    """Verify a signed checkpoint (c2sp.org/tlog-checkpoint) and parse its text."""
    text, signatures = open_note(data, verifiers)
    return Checkpoint.parse(text), signatures


class CosignatureVerifier:
    """A witness's Ed25519 cosignature key (c2sp.org/tlog-cosignature, signature type 0x04).

    Works as a :class:`NoteVerifier`, so ``open_note(checkpoint, [log, *witnesses])`` checks
    the log's signature and the cosignatures in one pass.
    """

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_name(name)
        self._name = name
        self.public_key = public_key
        self._key_id = key_id(name, COSIGNATURE_V1, _raw_public(public_key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @classmethod
    def from_text(cls, text: str) -> CosignatureVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x04 || public key)>`` (a signed-note vkey)."""
        name, raw = _parse_vkey(text, COSIGNATURE_V1)
        return cls(name, _load_public(raw))

    def to_text(self) -> str:
        raw = _raw_public(self.public_key)
        return _format_vkey(self._name, self._key_id, COSIGNATURE_V1, raw)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """``signature`` is the timestamped_signature: u64 timestamp || Ed25519 signature."""
        if len(signature) != _COSIGNATURE_SIZE:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        try:
            self.public_key.verify(signature[8:], _cosigned_message(message, timestamp))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"CosignatureVerifier({self.to_text()!r})"


class Cosigner:
    """A witness's Ed25519 cosigning key (c2sp.org/tlog-cosignature, signature type 0x04).

    It signs only the cosignature/v1 message, never arbitrary text, so the key cannot be
    used to forge anything else.
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self._name = name
        self._private_key = private_key
        self._key_id = key_id(name, COSIGNATURE_V1, _raw_public(private_key.public_key()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        return cls(name, Ed25519PrivateKey.generate())

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self._name, self._private_key.public_key())

    def cosign(self, checkpoint_body: bytes, timestamp: int) -> str:
        """The signature line cosigning ``checkpoint_body`` as of ``timestamp`` (POSIX s)."""
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise ValueError(f"cosignature timestamp {timestamp} is not in 0..2^63-1")
        # A witness states facts about checkpoints only; refuse to sign anything else.
        try:
            Checkpoint.parse(checkpoint_body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise NoteError("checkpoint body is not valid UTF-8") from exc
        signature = self._private_key.sign(_cosigned_message(checkpoint_body, timestamp))
        return NoteSignature(
            self._name, self._key_id, timestamp.to_bytes(8, "big") + signature
        ).line()

    def __repr__(self) -> str:
        return f"Cosigner(name={self._name!r}, key_id={self._key_id.hex()!r})"


def cosign(checkpoint_body: bytes, timestamp: int, key: Cosigner) -> str:
    """c2sp.org/tlog-cosignature: ``— <name> base64(keyID || u64 timestamp || sig)`` + newline.

    ``checkpoint_body`` is the checkpoint's note text (through its final newline, without
    signature lines); append the returned line to the signed checkpoint.
    """
    return key.cosign(checkpoint_body, timestamp)


def verify_cosignature(
    checkpoint_body: bytes, signature_line: str, verifier: CosignatureVerifier
) -> int:
    """Check one cosignature line against a checkpoint body; returns its timestamp."""
    sig = _parse_signature_line(signature_line.removesuffix("\n"), 1)
    if sig.name != verifier.name:
        raise NoteError(f"cosignature is by {sig.name!r}, not by witness {verifier.name!r}")
    if sig.key_id != verifier.key_id:
        raise NoteError(
            f"cosignature key ID {sig.key_id.hex()} is not witness {verifier.name!r}'s "
            f"cosignature/v1 key ID {verifier.key_id.hex()}"
        )
    timestamp = cosignature_timestamp(sig)
    if not verifier.verify(checkpoint_body, sig.signature):
        raise NoteError(
            f"cosignature by {verifier.name!r} at time {timestamp} does not verify over "
            "this checkpoint"
        )
    return timestamp


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The timestamp of a cosignature, e.g. one that :func:`open_note` verified."""
    if len(signature.signature) != _COSIGNATURE_SIZE:
        raise NoteError(
            f"cosignature by {signature.name!r} is {len(signature.signature)} bytes after the "
            f"key ID, not {_COSIGNATURE_SIZE} (timestamp and Ed25519 signature)"
        )
    timestamp = int.from_bytes(signature.signature[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} exceeds 2^63-1")
    return timestamp


def parse_verifier_key(text: str) -> Verifier | CosignatureVerifier:
    """A verifier key of either type this package knows, chosen by its type byte."""
    parts = text.split("+", 2)
    raw = _b64decode(parts[2], "verifier key") if len(parts) == 3 else b""
    if raw[:1] == bytes([COSIGNATURE_V1]):
        return CosignatureVerifier.from_text(text)
    return Verifier.from_text(text)


def _cosigned_message(checkpoint_body: bytes, timestamp: int) -> bytes:
    # c2sp.org/tlog-cosignature "Ed25519 signed message": header line, time line, body.
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + checkpoint_body


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(
            f"signature line {number} does not start with an em dash (U+2014) and a space"
        )
    name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not space or not b64:
        raise NoteError(f"signature line {number} lacks a key name, a space and a signature")
    _check_name(name)
    raw = _b64decode(b64, f"signature line {number}")
    if len(raw) <= _KEY_ID_SIZE:
        raise NoteError(f"signature line {number} is too short to hold a key ID and a signature")
    return NoteSignature(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:])


def _key_text(name: str, kid: bytes) -> str:
    return f"{name}+{kid.hex()}"


def _parse_vkey(text: str, signature_type: int) -> tuple[str, bytes]:
    """``<name>+<hex key ID>+<base64(type || key)>``; returns the name and the raw key."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key does not have the form <name>+<key ID>+<key>")
    name, hex_id, b64 = parts
    _check_name(name)
    if not _HEX8.fullmatch(hex_id):
        raise NoteError(f"verifier key ID {hex_id!r} is not 8 hex digits")
    raw = _b64decode(b64, "verifier key")
    if not raw or raw[0] != signature_type:
        found = f"0x{raw[0]:02x}" if raw else "nothing"
        raise NoteError(
            f"verifier key {name!r} has signature type {found}, expected 0x{signature_type:02x}"
        )
    if len(raw) != 1 + _ED25519_KEY_SIZE:
        raise NoteError(f"verifier key {name!r} holds {len(raw) - 1} key bytes, not 32")
    want = key_id(name, signature_type, raw[1:])
    if bytes.fromhex(hex_id) != want:
        raise NoteError(
            f"verifier key ID {hex_id.lower()} does not match key {name!r}, whose ID is "
            f"{want.hex()}"
        )
    return name, raw[1:]


def _format_vkey(name: str, kid: bytes, signature_type: int, raw: bytes) -> str:
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([signature_type]) + raw).decode()}"


def _check_name(name: str) -> None:
    # c2sp.org/signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode
    # spaces or plus (U+002B) characters" -- a space would end the name in a signature line,
    # a plus would end it in a key's text.
    if not name:
        raise NoteError("key name must not be empty")
    if "+" in name or any(ch.isspace() for ch in name):
        raise NoteError(f"key name {name[:60]!r} contains a space or a plus sign")
    _check_characters(name, "key name")


def _check_characters(text: str, what: str) -> None:
    # c2sp.org/signed-note: no ASCII control characters other than newline.
    for offset, ch in enumerate(text):
        if ch < " " and ch != "\n":
            raise NoteError(f"{what} contains control character U+{ord(ch):04X} at {offset}")


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4), canonical only.

    Lenient decoders ignore the unused low bits of the last character, which would let one
    signature line be spelled several ways; re-encoding rejects every spelling but one.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _load_public(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise NoteError(f"not an Ed25519 public key: {exc}") from exc


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
