"""C2SP tlog-policy: which logs and witnesses a verifier trusts, and how many must cosign.

A policy file (c2sp.org/tlog-policy) lists logs (``log <vkey> [url]``), witnesses
(``witness <name> <vkey> [url]``), groups of them with a threshold
(``group <name> <k|any|all> <member>...``) and one ``quorum <name|none>``. A checkpoint is
valid under the policy when one of its logs signed it and the quorum cosigned it.

Pure functions, no I/O. A malformed policy raises :class:`PolicyError` naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import NoReturn

from qiao.ledger import note
from qiao.ledger.errors import NoteError, PolicyError

NONE = "none"  # c2sp.org/tlog-policy: "The special name `none` is predefined".
# "Implementation limits": verifiers should support at least 32 of each; a generous cap keeps
# a hostile policy from making evaluation expensive.
MAX_ENTRIES = 1000

# "Structure": items are separated by ASCII spaces and tabs *only*.
_WHITESPACE = re.compile(r"[ \t]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class PolicyLog:
    verifier: note.Verifier
    url: str | None = None


@dataclass(frozen=True)
class PolicyWitness:
    name: str
    verifier: note.CosignatureVerifier
    url: str | None = None


@dataclass(frozen=True)
class PolicyGroup:
    """Witnessed when at least ``threshold`` of ``members`` (witnesses or groups) are."""

    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Cosignature:
    """A witness cosignature that verified: the witness's policy name and its timestamp."""

    witness: str
    timestamp: int


@dataclass(frozen=True)
class QuorumCheck:
    """What :meth:`Policy.satisfied` found in a checkpoint."""

    checkpoint: note.Checkpoint
    log: str  # the key name of the policy log that signed it
    cosignatures: tuple[Cosignature, ...]  # in policy order
    witnesses: int  # how many witnesses the policy lists
    quorum: str  # the quorum rule, in words
    met: bool

    @property
    def cosigned_by(self) -> tuple[str, ...]:
        return tuple(c.witness for c in self.cosignatures)

    def summary(self) -> str:
        """``cosigned by 2 of 3 witnesses: a, b`` (and the rule, when it is not met)."""
        text = f"cosigned by {len(self.cosignatures)} of {self.witnesses} witnesses"
        if self.cosignatures:
            text += ": " + ", ".join(self.cosigned_by)
        if not self.met:
            text += f"; the policy needs {self.quorum}"
        return text


@dataclass(frozen=True)
class Policy:
    logs: tuple[PolicyLog, ...]
    witnesses: tuple[PolicyWitness, ...]
    groups: tuple[PolicyGroup, ...]
    quorum: str  # a witness or group name, or "none"

    @classmethod
    def parse(cls, text: str | bytes) -> Policy:
        """Parse a policy file; raises PolicyError naming the line and what is wrong."""
        if isinstance(text, bytes):
            # "Character set": high-bit octets are opaque; UTF-8 is recommended, and names
            # compare as strings here, so a byte sequence means its UTF-8 reading.
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PolicyError(f"policy is not UTF-8 (byte {exc.start})") from exc
        return _Parser().parse(text)

    def format(self) -> str:
        """The policy as a file, in a canonical order: logs, witnesses, groups, quorum."""
        lines = [_join("log", log.verifier.to_text(), log.url) for log in self.logs]
        lines += [_join("witness", w.name, w.verifier.to_text(), w.url) for w in self.witnesses]
        lines += [_join("group", g.name, _threshold_text(g), *g.members) for g in self.groups]
        lines.append(f"quorum {self.quorum}")
        return "".join(line + "\n" for line in lines)

    def describe_quorum(self) -> str:
        """The quorum rule in words, e.g. ``2 of a, b, c``."""
        return self._describe(self.quorum)

    def _describe(self, name: str) -> str:
        if name == NONE:
            return "no cosignatures"
        group = next((g for g in self.groups if g.name == name), None)
        if group is None:
            return f"a cosignature by {name}"
        members = ", ".join(
            m if all(g.name != m for g in self.groups) else f"({self._describe(m)})"
            for m in group.members
        )
        return f"{group.threshold} of {members}"

    def witnessed(self, cosigners: AbstractSet[str]) -> bool:
        """Whether witnesses ``cosigners`` (policy names) meet the quorum."""
        if self.quorum == NONE:
            return True
        # Groups only name earlier lines, so one pass in file order evaluates every group
        # after its members, and no definition can be circular.
        done = {w.name for w in self.witnesses if w.name in cosigners}
        for group in self.groups:
            if sum(m in done for m in group.members) >= group.threshold:
                done.add(group.name)
        return self.quorum in done

    def satisfied(self, checkpoint_note: bytes) -> tuple[bool, QuorumCheck]:
        """Open a cosigned checkpoint and say whether the policy's quorum cosigned it.

        Raises PolicyError if no log of the policy has the checkpoint's origin, NoteError if
        the note is malformed, lacks that log's signature, or carries a signature by a key of
        the policy that does not verify. Cosignatures by keys the policy does not list are
        ignored (c2sp.org/signed-note).
        """
        text = _note_text(checkpoint_note)
        origin = text.split("\n", 1)[0]
        # "The log's vkey includes a key name. This name MUST correspond to the log's origin".
        logs = [log.verifier for log in self.logs if log.verifier.name == origin]
        if not logs:
            known = ", ".join(sorted({log.verifier.name for log in self.logs})) or "none"
            raise PolicyError(
                f"checkpoint is from log {origin!r}, not a log of the policy "
                f"(the policy's logs: {known})"
            )
        witness_keys: list[note.NoteVerifier] = [w.verifier for w in self.witnesses]
        checkpoint, signatures = note.open_checkpoint(checkpoint_note, [*logs, *witness_keys])
        log_keys = {(v.name, v.key_id): v for v in logs}
        signed_by = next((s.name for s in signatures if (s.name, s.key_id) in log_keys), None)
        if signed_by is None:
            # open_note accepts a note any listed key signed; a checkpoint also needs its log.
            raise NoteError(f"checkpoint is not signed by log {origin!r}; only cosignatures")
        by_key = {(w.verifier.name, w.verifier.key_id): w for w in self.witnesses}
        times: dict[str, int] = {}
        for sig in signatures:
            witness = by_key.get((sig.name, sig.key_id))
            if witness is not None:
                times[witness.name] = note.cosignature_timestamp(sig)
        cosignatures = tuple(
            Cosignature(w.name, times[w.name]) for w in self.witnesses if w.name in times
        )
        met = self.witnessed(frozenset(times))
        return met, QuorumCheck(
            checkpoint=checkpoint,
            log=signed_by,
            cosignatures=cosignatures,
            witnesses=len(self.witnesses),
            quorum=self.describe_quorum(),
            met=met,
        )


def policy_text(
    log_key: str,
    witness_keys: Sequence[str],
    quorum: int,
    *,
    log_url: str | None = None,
    witness_urls: Sequence[str | None] | None = None,
) -> str:
    """A policy for one log and these witnesses, ``quorum`` of which must cosign.

    Each witness is named in the policy by its key name. ``quorum`` 0 writes ``quorum none``
    (no cosignatures needed). The text is parsed back before it is returned, so a bad key or
    a quorum larger than the witnesses raises here, not in a verifier later.
    """
    urls = list(witness_urls) if witness_urls is not None else [None] * len(witness_keys)
    if len(urls) != len(witness_keys):
        raise ValueError(f"{len(witness_keys)} witness keys but {len(urls)} witness URLs")
    if not 0 <= quorum <= len(witness_keys):
        raise ValueError(f"quorum {quorum} is not between 0 and {len(witness_keys)} witnesses")
    log_name = note.Verifier.from_text(log_key).name
    lines = [
        "# C2SP tlog-policy (c2sp.org/tlog-policy): a checkpoint of this log counts when",
        f"# {quorum} of these {len(witness_keys)} witnesses cosigned it."
        if quorum
        else "# No witness cosignature is required.",
        _join("log", log_key, log_url),
    ]
    names: list[str] = []
    for key, url in zip(witness_keys, urls, strict=True):
        name = note.CosignatureVerifier.from_text(key).name
        names.append(name)
        lines.append(_join("witness", name, key, url))
    if quorum == 0:
        lines.append(f"quorum {NONE}")
    else:
        group = "witnesses"
        while group in names:
            group += "-group"
        lines.append(_join("group", group, str(quorum), *names))
        lines.append(f"quorum {group}")
    text = "".join(line + "\n" for line in lines)
    try:
        Policy.parse(text)
    except PolicyError as exc:
        raise ValueError(f"these keys do not make a valid policy for {log_name}: {exc}") from exc
    return text


class _Parser:
    """One pass over the lines: every name must be defined before it is used."""

    def __init__(self) -> None:
        self.logs: list[PolicyLog] = []
        self.witnesses: list[PolicyWitness] = []
        self.groups: list[PolicyGroup] = []
        self.names: set[str] = set()
        self.quorum: str | None = None
        self.line = 0

    def parse(self, text: str) -> Policy:
        for self.line, raw in enumerate(text.split("\n"), start=1):
            self._check_characters(raw)
            items = _WHITESPACE.split(raw.strip(" \t"))
            # "Empty lines (whitespace only) and comment lines ... are ignored."
            if items == [""] or items[0].startswith("#"):
                continue
            keyword, args = items[0], items[1:]
            if keyword == "log":
                self._log(args)
            elif keyword == "witness":
                self._witness(args)
            elif keyword == "group":
                self._group(args)
            elif keyword == "quorum":
                self._quorum(args)
            else:
                self._fail(f"unknown keyword {keyword!r}; expected log, witness, group or quorum")
            if len(self.logs) + len(self.witnesses) + len(self.groups) > MAX_ENTRIES:
                self._fail(f"more than {MAX_ENTRIES} logs, witnesses and groups")
        self.line = 0
        if self.quorum is None:
            # "A policy file must include exactly one quorum line."
            raise PolicyError("policy has no quorum line (use 'quorum none' for no witnesses)")
        return Policy(tuple(self.logs), tuple(self.witnesses), tuple(self.groups), self.quorum)

    def _log(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            self._fail("a log line is 'log <vkey> [<url>]'")
        verifier = self._log_key(args[0])
        # "Duplicate logs, i.e., multiple log lines with the same public key, are not allowed"
        # (same key even under another name or key ID).
        if any(_raw(log.verifier) == _raw(verifier) for log in self.logs):
            self._fail(f"log key {verifier.name!r} repeats the public key of an earlier log")
        self.logs.append(PolicyLog(verifier, args[1] if len(args) > 1 else None))

    def _witness(self, args: list[str]) -> None:
        if not 2 <= len(args) <= 3:
            self._fail("a witness line is 'witness <name> <vkey> [<url>]'")
        name = self._new_name(args[0])
        verifier = self._witness_key(args[1])
        if any(_raw(w.verifier) == _raw(verifier) for w in self.witnesses):
            self._fail(f"witness {name!r} repeats the public key of an earlier witness")
        self.witnesses.append(PolicyWitness(name, verifier, args[2] if len(args) > 2 else None))
        self.names.add(name)

    def _group(self, args: list[str]) -> None:
        if len(args) < 3:
            self._fail("a group line is 'group <name> <k|any|all> <member>...' (one or more)")
        name = self._new_name(args[0])
        members = args[2:]
        for member in members:
            if member == NONE:
                self._fail("'none' cannot be a group member")
            if member not in self.names:
                self._fail(f"group member {member!r} is not a witness or group defined above")
        # "Each defined name can be listed as a group member at most once" -- in the whole
        # file, so no witness counts towards the quorum twice by two paths.
        used = {m for g in self.groups for m in g.members}
        for i, member in enumerate(members):
            if member in members[:i] or member in used:
                self._fail(f"{member!r} is already a member of a group")
        k_text = args[1]
        if k_text == "any":
            k = 1
        elif k_text == "all":
            k = len(members)
        elif _DECIMAL.fullmatch(k_text) and 1 <= int(k_text) <= len(members):
            k = int(k_text)
        else:
            self._fail(
                f"group threshold {k_text!r} is not any, all or a number from 1 to "
                f"{len(members)} (its number of members)"
            )
        self.groups.append(PolicyGroup(name, k, tuple(members)))
        self.names.add(name)

    def _quorum(self, args: list[str]) -> None:
        if len(args) != 1:
            self._fail("a quorum line is 'quorum <name>' or 'quorum none'")
        if self.quorum is not None:
            self._fail("a policy has exactly one quorum line; this is the second")
        if args[0] != NONE and args[0] not in self.names:
            self._fail(f"quorum {args[0]!r} is not a witness or group defined above")
        self.quorum = args[0]

    def _new_name(self, name: str) -> str:
        # "Witnesses and groups share a single namespace."
        if name == NONE:
            self._fail("'none' is predefined and cannot name a witness or group")
        if name in self.names:
            self._fail(f"name {name!r} is already a witness or group")
        return name

    def _log_key(self, text: str) -> note.Verifier:
        # c2sp.org/tlog-checkpoint: logs sign with Ed25519 note keys (type 0x01).
        try:
            return note.Verifier.from_text(text)
        except NoteError as exc:
            self._fail(f"log key is not an Ed25519 (type 0x01) verifier key: {exc}")

    def _witness_key(self, text: str) -> note.CosignatureVerifier:
        # c2sp.org/tlog-cosignature: witnesses cosign with cosignature/v1 keys (type 0x04).
        try:
            return note.CosignatureVerifier.from_text(text)
        except NoteError as exc:
            self._fail(f"witness key is not a cosignature/v1 (type 0x04) verifier key: {exc}")

    def _check_characters(self, line: str) -> None:
        # "Character set": the only control characters allowed are tab and newline.
        for ch in line:
            if (ch < " " and ch != "\t") or ch == "\x7f":
                hint = " (save the file with LF line endings)" if ch == "\r" else ""
                self._fail(f"control character U+{ord(ch):04X}{hint}")

    def _fail(self, message: str) -> NoReturn:
        raise PolicyError(f"policy line {self.line}: {message}")


def _join(*items: str | None) -> str:
    return " ".join(item for item in items if item is not None)


def _threshold_text(group: PolicyGroup) -> str:
    return "all" if group.threshold == len(group.members) > 1 else str(group.threshold)


def _raw(verifier: note.Verifier | note.CosignatureVerifier) -> bytes:
    return verifier.public_key.public_bytes_raw()


def _note_text(data: bytes) -> str:
    """The text of a signed note, to read its origin before choosing keys (open_note checks
    the rest)."""
    try:
        message = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"checkpoint is not valid UTF-8 (byte {exc.start})") from exc
    split = message.rfind("\n\n")
    if split < 0:
        raise NoteError("checkpoint has no blank line between its text and its signatures")
    return message[: split + 1]
