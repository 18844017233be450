"""A C2SP tlog-witness for one node: cosign the hub's checkpoints, never two histories.

The hub (the log) posts each new checkpoint with a consistency proof from the size this
witness last cosigned (c2sp.org/tlog-witness "add-checkpoint"). The witness checks, in the
spec's order: the request's form (400), the origin (404), the log's signature (403), that the
old size does not exceed the new (400), that the old size is the one it stored (409), and the
proof from its stored root (422). Only then does it store the new checkpoint and answer with
its cosignature (c2sp.org/tlog-cosignature).

A log that shows this witness a history not extending the one it cosigned -- another
checkpoint of the same size with a different root (409), or one whose proof does not lead
from the stored root (422) -- is refused, and the request is kept as an alert together with
the checkpoint cosigned before it, for the operator to see and an auditor to settle ("the
witness MAY log the request ... as it might be proof of log misbehavior").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from qiao.db import utcnow
from qiao.ledger import merkle, note
from qiao.ledger.errors import NoteError, ProofError
from qiao.ledger.witness_models import MAX_ORIGIN, WitnessAlert, WitnessState

log = logging.getLogger("qiao.ledger.witness")

# c2sp.org/tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
# A checkpoint is three short lines plus signatures; 64 KiB leaves room for many cosignatures
# while keeping a request from tying up memory.
MAX_REQUEST_BYTES = 64 * 1024
# The stored size is a signed 64-bit column; a real log is nowhere near this.
MAX_STORED_SIZE = 2**63 - 1
# c2sp.org/tlog-witness "add-checkpoint": the 409 body's content type.
SIZE_CONTENT_TYPE = "text/x.tlog.size"
ALERT_INCONSISTENT = "inconsistent-checkpoint"
# The witness's own stored state no longer is the log-signed checkpoint it cosigned.
ALERT_STATE_DAMAGED = "damaged-state"

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class LogState:
    """The latest checkpoint this witness cosigned for one log (size 0: none yet)."""

    origin: str
    size: int
    root_hash: bytes
    checkpoint: bytes
    updated_at: datetime


@dataclass(frozen=True)
class Alert:
    """A log caught signing a checkpoint inconsistent with one this witness cosigned."""

    id: int
    origin: str
    kind: str
    detail: str
    evidence: bytes  # the refused add-checkpoint request
    cosigned: bytes  # the log-signed checkpoint this witness had cosigned then
    created_at: datetime


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint request body; the checkpoint's signatures are not yet checked."""

    old_size: int
    proof: tuple[bytes, ...]
    signed_note: bytes
    checkpoint: note.Checkpoint


class _Refused(Exception):
    """An answer other than 200: the status and the sentence the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ForkRefused(_Refused):
    """A refusal that is evidence: the log signed two inconsistent checkpoints (or, with
    ``kind`` ALERT_STATE_DAMAGED, this witness's record of what it cosigned was altered)."""

    def __init__(
        self, status: int, message: str, detail: str, kind: str = ALERT_INCONSISTENT
    ) -> None:
        super().__init__(status, message)
        self.detail = detail
        self.kind = kind


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """The request of c2sp.org/tlog-witness "add-checkpoint": an ``old <size>`` line, zero or
    more base64 proof hashes, an empty line, then the signed checkpoint note.

    Raises ValueError saying what is malformed (the witness answers 400).
    """
    head, blank, signed = body.partition(b"\n\n")
    if not blank:
        raise ValueError("request has no empty line between the proof and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError("old size and proof lines must be ASCII") from exc
    first, proof_lines = lines[0], lines[1:]
    if not first.startswith("old "):
        raise ValueError("request does not start with an 'old <size>' line")
    # "ASCII decimal with no leading zeroes": one size, one spelling.
    if not _DECIMAL.fullmatch(first[4:]):
        raise ValueError(f"old size {first[4:44]!r} is not a decimal number")
    old_size = int(first[4:])
    if len(proof_lines) > MAX_PROOF_LINES:
        raise ValueError(f"{len(proof_lines)} consistency proof lines, more than {MAX_PROOF_LINES}")
    proof = tuple(_proof_hash(line, i) for i, line in enumerate(proof_lines, start=1))
    # Split the note as open_note does (its text ends at the last blank line), so the
    # checkpoint parsed here is exactly the text whose signature gets checked.
    try:
        text = signed.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"checkpoint note is not UTF-8 (byte {exc.start})") from exc
    split = text.rfind("\n\n")
    if split < 0:
        raise ValueError("checkpoint note has no blank line before its signatures")
    try:
        checkpoint = note.Checkpoint.parse(text[: split + 1])
    except NoteError as exc:
        raise ValueError(str(exc)) from exc
    return AddCheckpoint(old_size, proof, signed, checkpoint)


def _proof_hash(line: str, number: int) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"consistency proof line {number} is not base64") from exc
    if len(raw) != merkle.HASH_SIZE or base64.b64encode(raw).decode() != line:
        raise ValueError(
            f"consistency proof line {number} is not one base64 SHA-256 hash (44 characters)"
        )
    return raw


class Witness:
    """Cosigns checkpoints of the logs in ``logs`` (origin → the log's public key).

    ``logs`` is read on every request, not copied: the node updates it in place when the
    signed global configuration names a new log key.
    """

    def __init__(
        self, engine: Engine, cosigner: note.Cosigner, logs: Mapping[str, note.Verifier]
    ) -> None:
        self._engine = engine
        self._cosigner = cosigner
        self._logs = logs

    @property
    def name(self) -> str:
        return self._cosigner.name

    def verifier(self) -> note.CosignatureVerifier:
        """The public key a log or a policy checks this witness's cosignatures with."""
        return self._cosigner.verifier()

    def add_checkpoint(self, body: bytes, now: int) -> tuple[int, bytes]:
        """Answer one add-checkpoint request: (HTTP status, response body).

        200 carries the cosignature line, timestamped ``now`` (POSIX seconds); 409 the size
        this witness last cosigned, as the spec requires; every other status a sentence.
        Database failures raise (the route turns them into 500, and nothing was cosigned).
        """
        try:
            return 200, self._add(body, now).encode()
        except _Refused as refusal:
            # 409 is routine (a log catching up after a restart); 422 is not.
            if refusal.status == 422:
                log.warning("witness refused a checkpoint: %s", refusal.message.strip())
            return refusal.status, refusal.message.encode()

    def _add(self, body: bytes, now: int) -> str:
        try:
            request = parse_add_checkpoint(body)
        except ValueError as exc:
            raise _Refused(400, f"malformed add-checkpoint request: {exc}\n") from exc
        checkpoint = request.checkpoint
        origin = checkpoint.origin
        # Spec order: unknown origin (404), then the signature (403), then the sizes (400).
        verifier = self._logs.get(origin)
        if verifier is None:
            raise _Refused(404, f"this witness does not follow a log with origin {origin!r}\n")
        try:
            # Signatures by other keys (other witnesses' cosignatures) are ignored, as the
            # spec requires; the log's own must be there and verify.
            text, _ = note.open_note(request.signed_note, [verifier])
        except NoteError as exc:
            raise _Refused(403, f"checkpoint is not signed by log {origin!r}: {exc}\n") from exc
        if request.old_size > checkpoint.size:
            raise _Refused(
                400,
                f"old size {request.old_size} is larger than the checkpoint's size "
                f"{checkpoint.size}\n",
            )
        if checkpoint.size > MAX_STORED_SIZE or len(origin.encode()) > MAX_ORIGIN:
            raise _Refused(400, "checkpoint size or origin exceeds what this witness stores\n")

        with self._transaction() as conn:
            stored = self._lock_state(conn, origin)
            refusal = (
                self._damaged(stored, verifier)
                or self._moved(conn, stored)
                or self._check(request, stored)
            )
            if refusal is None:
                conn.execute(
                    update(WitnessState)
                    .where(WitnessState.origin == origin)
                    .values(
                        size=checkpoint.size,
                        root_hash=checkpoint.root_hash,
                        checkpoint=request.signed_note,
                        updated_at=utcnow(),
                    )
                )
            elif isinstance(refusal, _ForkRefused):
                self._record_alert(conn, stored, refusal.detail, body, refusal.kind)
        # Committed: only now may the witness answer ("MUST persist the new checkpoint
        # before responding"), and a refusal's alert is stored even though it refuses.
        if refusal is not None:
            raise refusal
        # Cosign exactly the text whose log signature verified.
        return self._cosigner.cosign(text.encode(), now)

    @staticmethod
    def _damaged(stored: LogState, verifier: note.Verifier) -> _Refused | None:
        """Whether the stored state is still the log-signed checkpoint it was stored from.

        Every check below trusts the stored size and root; if someone with access to the
        node's database changed them (to make the witness cosign another history, or to
        rewind it), the witness must not cosign from them. The stored note carries the
        log's signature over the size and root, so it settles what they were."""
        if stored.size == 0 and not stored.checkpoint:
            return None  # nothing cosigned yet
        try:
            _text, _sigs = note.open_note(stored.checkpoint, [verifier])
            held = parse_add_checkpoint(b"old 0\n\n" + stored.checkpoint).checkpoint
        except (NoteError, ValueError) as exc:
            problem = f"its stored checkpoint does not verify with the log's key: {exc}"
        else:
            if (held.origin, held.size, held.root_hash) == (
                stored.origin,
                stored.size,
                stored.root_hash,
            ):
                return None
            problem = (
                f"it stores size {stored.size} and root {_b64(stored.root_hash)}, but the "
                f"log-signed checkpoint it stored says size {held.size} and root "
                f"{_b64(held.root_hash)}"
            )
        detail = (
            f"the witness state for log {stored.origin!r} was altered: {problem}. The witness "
            "cosigns nothing for this log until an operator restores it."
        )
        return _ForkRefused(500, f"witness state damaged: {problem}\n", detail, ALERT_STATE_DAMAGED)

    @staticmethod
    def _moved(conn: Connection, stored: LogState) -> _Refused | None:
        """A log this witness seems never to have cosigned for, whose cosigned checkpoint is
        stored under another origin: the row's origin was changed, which would let the log
        start its history afresh here. (Each stored note names its own origin.)"""
        if stored.size != 0 or stored.checkpoint:
            return None
        prefix = stored.origin.encode() + b"\n"
        for origin, checkpoint in conn.execute(
            select(WitnessState.origin, WitnessState.checkpoint).where(
                WitnessState.origin != stored.origin
            )
        ):
            if bytes(checkpoint).startswith(prefix):
                problem = (
                    f"the checkpoint it cosigned for log {stored.origin!r} is stored under "
                    f"origin {origin!r}"
                )
                detail = (
                    f"the witness state was altered: {problem}. The witness cosigns nothing "
                    "for this log until an operator restores it."
                )
                return _ForkRefused(
                    500, f"witness state damaged: {problem}\n", detail, ALERT_STATE_DAMAGED
                )
        return None

    def _check(self, request: AddCheckpoint, stored: LogState) -> _Refused | None:
        """The checks against stored state; must run inside the transaction that holds it."""
        checkpoint = request.checkpoint
        old, new = request.old_size, checkpoint.size
        if old != stored.size:
            # The body lets the log retry from the right size (c2sp.org/tlog-witness).
            return _Refused(409, f"{stored.size}\n")
        if old == 0:
            # Nothing cosigned yet: any checkpoint starts the history. "The proof MUST be
            # empty if the old size is zero"; at size 0 only the empty tree's root exists.
            if request.proof:
                return _Refused(422, "the consistency proof must be empty when old size is 0\n")
            if new == 0 and checkpoint.root_hash != merkle.EMPTY_ROOT:
                return _Refused(422, "a checkpoint of size 0 must carry the empty tree's root\n")
            return None
        if old == new:
            if checkpoint.root_hash != stored.root_hash:
                # "If the old size matches the checkpoint size, the witness MUST check that
                # the root hashes are also identical. If they don't match, ... 409". Both
                # heads carry the log's signature: this is proof the log forked.
                return _ForkRefused(
                    409,
                    f"{stored.size}\n",
                    f"log {checkpoint.origin!r} signed two different checkpoints of size {new}: "
                    f"root {_b64(stored.root_hash)} (cosigned) and {_b64(checkpoint.root_hash)}",
                )
            if request.proof:
                return _Refused(422, f"checkpoints of equal size {new} need an empty proof\n")
            return None
        try:
            merkle.verify_consistency(
                old, new, request.proof, stored.root_hash, checkpoint.root_hash
            )
        except ProofError as exc:
            # Requests are not authenticated (c2sp.org/tlog-witness "Introduction"): anyone
            # can pair a genuine checkpoint with a wrong proof, so this alone is not proof of
            # a fork. It is what a fork looks like, though, so the operator sees it, with both
            # signed checkpoints kept to settle it against the log's tiles.
            message = (
                f"checkpoint of size {new} is not consistent with the checkpoint of size {old} "
                f"this witness cosigned (root {_b64(stored.root_hash)}): {exc}"
            )
            detail = (
                f"log {checkpoint.origin!r} may have forked: {message}. Either the log shows "
                "another history or the request's proof is wrong; check the evidence."
            )
            return _ForkRefused(422, message + "\n", detail)
        return None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            if conn.dialect.name == "sqlite":
                # The old-size check and the update must be atomic (the spec's rollback race:
                # an older checkpoint stored after a newer one). pysqlite starts transactions
                # as readers; two could read the same size. BEGIN IMMEDIATE takes the write
                # lock first, so the second request waits and then reads the first's result.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def _lock_state(self, conn: Connection, origin: str) -> LogState:
        """The origin's row, locked until commit (PostgreSQL: SELECT ... FOR UPDATE).

        The row is created at size 0 first, so even the first checkpoint has a row to lock:
        two first checkpoints cannot both start the history.
        """
        dialect = conn.dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(WitnessState)
        conn.execute(
            ins.values(
                origin=origin,
                size=0,
                root_hash=merkle.EMPTY_ROOT,
                checkpoint=b"",
                updated_at=utcnow(),
            ).on_conflict_do_nothing(index_elements=["origin"])
        )
        row = conn.execute(
            select(WitnessState.__table__).where(WitnessState.origin == origin).with_for_update()
        ).one()
        return LogState(row.origin, row.size, row.root_hash, row.checkpoint, row.updated_at)

    def _record_alert(
        self,
        conn: Connection,
        stored: LogState,
        detail: str,
        body: bytes,
        kind: str = ALERT_INCONSISTENT,
    ) -> None:
        # A replayed request is one incident, not many: keep the first alert only. Damaged
        # state is one incident whatever the log sends next, until the state changes.
        same = (
            WitnessAlert.evidence == body
            if kind == ALERT_INCONSISTENT
            else (WitnessAlert.kind == kind) & (WitnessAlert.cosigned == stored.checkpoint)
        )
        seen = conn.execute(
            select(WitnessAlert.id).where(WitnessAlert.origin == stored.origin, same).limit(1)
        ).first()
        if seen is not None:
            return
        log.error("witness %s: %s", self.name, detail)
        conn.execute(
            insert(WitnessAlert).values(
                origin=stored.origin,
                kind=kind,
                detail=detail,
                evidence=body,
                cosigned=stored.checkpoint,
                created_at=utcnow(),
            )
        )

    def state(self, origin: str) -> LogState | None:
        """What this witness last cosigned for ``origin`` (None: never asked)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(WitnessState.__table__).where(WitnessState.origin == origin)
            ).one_or_none()
        if row is None:
            return None
        return LogState(row.origin, row.size, row.root_hash, row.checkpoint, row.updated_at)

    def alerts(self, limit: int = 50) -> list[Alert]:
        """The most recent alerts first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(WitnessAlert.__table__).order_by(WitnessAlert.id.desc()).limit(limit)
            ).all()
        return [
            Alert(r.id, r.origin, r.kind, r.detail, r.evidence, r.cosigned, r.created_at)
            for r in rows
        ]


def witness_routes(witness: Witness, prefix: str = "/witness") -> list[web.RouteDef]:
    """``POST <prefix>/add-checkpoint`` (c2sp.org/tlog-witness), for a node's app listener."""

    async def add_checkpoint(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return _too_large()
        body = bytearray()
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return _too_large()
        # The check-and-store transaction blocks (it may wait for another request's lock):
        # run it off the event loop.
        status, answer = await asyncio.to_thread(
            witness.add_checkpoint, bytes(body), int(time.time())
        )
        if status == 409:
            return web.Response(status=409, body=answer, content_type=SIZE_CONTENT_TYPE)
        return web.Response(status=status, body=answer, content_type="text/plain", charset="utf-8")

    return [web.post(f"{prefix.rstrip('/')}/add-checkpoint", add_checkpoint)]


def _too_large() -> web.Response:
    return web.Response(
        status=413, text=f"add-checkpoint requests are at most {MAX_REQUEST_BYTES} bytes\n"
    )


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()
