"""Receipts: C2SP tlog-proof, an offline proof that an entry is in the cosigned log.

A receipt (c2sp.org/tlog-proof@v1 "Format") is::

    c2sp.org/tlog-proof@v1
    extra <base64>            (optional, unauthenticated application data)
    index <N>
    <base64 hash>             (the inclusion proof, leaf's sibling first, zero or more)

    <the cosigned checkpoint, verbatim>

With the entry and a tlog-policy (the log's and the witnesses' public keys and the quorum),
anyone can check it without asking the hub anything: the policy's quorum cosigned the
checkpoint, and the inclusion proof leads from the entry at that index to its root.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qiao.ledger import merkle
from qiao.ledger.errors import LedgerError, ProofError, ReceiptError
from qiao.ledger.policy import Policy

HEADER = "c2sp.org/tlog-proof@v1"
# An inclusion proof in a tree of at most 2^64 - 1 leaves has at most 64 hashes.
MAX_PROOF_HASHES = 64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Receipt:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the cosigned checkpoint note, verbatim
    extra: bytes | None = None  # not authenticated: never trust it implicitly (spec "Format")

    def format(self) -> bytes:
        return format_receipt(self.index, self.proof, self.checkpoint, self.extra)


def format_receipt(
    index: int,
    inclusion_hashes: Sequence[bytes],
    cosigned_checkpoint_note: bytes,
    extra_data: bytes | None = None,
) -> bytes:
    """The receipt for entry ``index`` (c2sp.org/tlog-proof@v1 "Format").

    ``inclusion_hashes`` run from the leaf's sibling up to the root's child, as
    :func:`merkle.inclusion_proof` returns them; ``extra_data`` adds an ``extra`` line.
    """
    if not 0 <= index <= merkle.MAX_SIZE:
        raise ValueError(f"index {index} is not a uint64")
    if len(inclusion_hashes) > MAX_PROOF_HASHES:
        raise ValueError(f"{len(inclusion_hashes)} inclusion hashes, more than 64")
    for i, h in enumerate(inclusion_hashes):
        if len(h) != merkle.HASH_SIZE:
            raise ValueError(f"inclusion hash {i} is {len(h)} bytes, not {merkle.HASH_SIZE}")
    lines = [HEADER]
    if extra_data is not None:
        lines.append("extra " + base64.b64encode(extra_data).decode())
    lines.append(f"index {index}")
    lines += [base64.b64encode(h).decode() for h in inclusion_hashes]
    return ("".join(line + "\n" for line in lines) + "\n").encode() + cosigned_checkpoint_note


def parse_receipt(data: bytes) -> Receipt:
    """Parse a receipt; raises ReceiptError saying which line is malformed.

    Only the form is checked here; :func:`verify_receipt` checks what it proves.
    """
    head, blank, checkpoint = data.partition(b"\n\n")
    if not blank:
        raise ReceiptError("receipt has no empty line before its checkpoint")
    if not checkpoint:
        raise ReceiptError("receipt has no checkpoint after the empty line")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise ReceiptError(f"receipt header is not ASCII (byte {exc.start})") from exc
    if lines[0] != HEADER:
        raise ReceiptError(f"receipt does not start with the line {HEADER!r}")
    at = 1
    extra = None
    if at < len(lines) and lines[at].startswith("extra "):
        extra = _b64(lines[at][len("extra ") :], "extra data", length=None)
        at += 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise ReceiptError(f"receipt line {at + 1} is not 'index <N>'")
    index_text = lines[at][len("index ") :]
    # "ASCII decimal with no leading zeroes": one index, one spelling.
    if not _DECIMAL.fullmatch(index_text) or int(index_text) > merkle.MAX_SIZE:
        raise ReceiptError(f"receipt index {index_text[:40]!r} is not a uint64 in decimal")
    hash_lines = lines[at + 1 :]
    if len(hash_lines) > MAX_PROOF_HASHES:
        raise ReceiptError(f"receipt has {len(hash_lines)} inclusion hashes, more than 64")
    proof = tuple(
        _b64(line, f"inclusion hash {i} (receipt line {at + 1 + i})", merkle.HASH_SIZE)
        for i, line in enumerate(hash_lines, start=1)
    )
    return Receipt(int(index_text), proof, checkpoint, extra)


def verify_receipt(receipt: bytes, entry: bytes | None, policy: Policy) -> str:
    """Check a receipt against ``policy`` and the ``entry`` it is for; say what it proves.

    Returns one line, e.g. ``entry 42 is in log example.org/log at size 100, cosigned by 2
    of 3 witnesses: a, b``. Raises ReceiptError saying exactly what failed. Without
    ``entry`` only the checkpoint can be checked, and the line says the inclusion was not.
    """
    parsed = parse_receipt(receipt)
    try:
        met, check = policy.satisfied(parsed.checkpoint)
    except LedgerError as exc:
        raise ReceiptError(f"the receipt's checkpoint does not verify: {exc}") from exc
    cp = check.checkpoint
    where = f"log {cp.origin} at size {cp.size}"
    if not met:
        raise ReceiptError(f"the checkpoint of {where} is {check.summary()}")
    if parsed.index >= cp.size:
        raise ReceiptError(f"entry {parsed.index} is not in a tree of size {cp.size}")
    if entry is None:
        return (
            f"the checkpoint of {where} is valid, {check.summary()}; entry {parsed.index}'s "
            "inclusion was NOT checked (no entry given)"
        )
    try:
        merkle.verify_inclusion(
            parsed.index, cp.size, merkle.leaf_hash(entry), parsed.proof, cp.root_hash
        )
    except ProofError as exc:
        raise ReceiptError(
            f"the entry given is not entry {parsed.index} of {where} under this proof "
            f"(a different entry, index or proof hash): {exc}"
        ) from exc
    return f"entry {parsed.index} is in {where}, {check.summary()}"


def _b64(text: str, what: str, length: int | None) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptError(f"receipt {what} is not base64") from exc
    # Canonical only, so one receipt has one spelling (a re-encoding must give the same text).
    if base64.b64encode(raw).decode() != text:
        raise ReceiptError(f"receipt {what} is not canonical base64")
    if length is not None and len(raw) != length:
        raise ReceiptError(f"receipt {what} is {len(raw)} bytes, not {length}")
    return raw
