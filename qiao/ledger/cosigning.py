"""Hub side: sign checkpoints, have the witnesses cosign them, keep the cosigned ones.

Each round signs a checkpoint for the log's current size (if it grew), sends it to every
registered witness with a consistency proof from the size that witness last saw
(c2sp.org/tlog-witness), and stores the checkpoint note with the cosignature lines it
gathered. A checkpoint counts once a quorum of witnesses cosigned it; receipts and the
published checkpoint use only such checkpoints. A witness that is offline is simply missing
from that round and catches up in a later one: the hub then proves consistency from the
size it last cosigned, however far back.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import BigInteger, Boolean, Integer, LargeBinary, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from qiao.db import HubBase, UTCDateTime, utcnow
from qiao.ledger import note
from qiao.ledger.errors import NoteError
from qiao.registry.models import Node

# How much longer the other witnesses may take once a quorum has cosigned a checkpoint.
QUORUM_GRACE_SECONDS = 0.5

log = logging.getLogger("qiao.ledger.cosigning")


class CosignedCheckpoint(HubBase):
    """A signed checkpoint with the witnesses' cosignatures appended (a C2SP signed note)."""

    __tablename__ = "ledger_cosigned"

    # BigInteger on PostgreSQL: a log outgrows 2^31 entries long before it is retired.
    size: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    note: Mapped[bytes] = mapped_column(LargeBinary)
    cosignatures: Mapped[int] = mapped_column(Integer)
    quorum_met: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@dataclass
class WitnessStatus:
    name: str
    url: str
    size: int = 0  # the size this witness last cosigned (as far as the hub knows)
    last_cosigned_at: str = ""
    last_error: str = ""


@dataclass
class Cosigning:
    sessions: sessionmaker[Session]
    store: Any  # qiao.ledger.store.LedgerStore
    quorum: int | None = None  # None: a majority of the registered witnesses
    timeout: float = 5.0
    witnesses: dict[str, WitnessStatus] = field(default_factory=dict)
    # Work to do at the start of every round (e.g. moving admin events onto the log).
    before_round: list[Callable[[], object]] = field(default_factory=list)

    def registered_keys(self) -> list[tuple[str, str]]:
        """(verifier key, URL) of every registered witness."""
        with self.sessions() as s:
            rows = s.execute(
                select(Node.witness_key, Node.witness_url)
                .where(Node.witness_key != "")
                .order_by(Node.name)
            ).all()
        return [(key, url.rstrip("/")) for key, url in rows]

    def registered(self) -> list[tuple[str, str]]:
        """(name, URL) of every registered witness."""
        return [(note.parse_verifier_key(k).name, u) for k, u in self.registered_keys()]

    def all_cosigned(self) -> list[tuple[int, bytes, int]]:
        with self.sessions() as s:
            return [
                (r.size, r.note, r.cosignatures)
                for r in s.execute(
                    select(
                        CosignedCheckpoint.size,
                        CosignedCheckpoint.note,
                        CosignedCheckpoint.cosignatures,
                    ).order_by(CosignedCheckpoint.size)
                )
            ]

    def needed(self, registered: int) -> int:
        return self.quorum if self.quorum is not None else registered // 2 + 1 if registered else 0

    def round(self, client: httpx.Client) -> CosignedCheckpoint | None:
        size = self.store.size()
        if size == 0:
            return None
        latest = self.latest(quorum_only=False)
        if latest is not None and latest.size == size and latest.quorum_met:
            return latest
        # Sign exactly the size read above: entries appended meanwhile wait for the next round,
        # so the stored row's size and its note always agree.
        signed: bytes = self.store.sign_checkpoint(size)
        registered = self.registered_keys()
        asks: list[tuple[WitnessStatus, note.NoteVerifier]] = []
        for key, url in registered:
            verifier = note.parse_verifier_key(key)
            status = self.witnesses.setdefault(verifier.name, WitnessStatus(verifier.name, url))
            status.url = url
            asks.append((status, verifier))
        lines = self._ask_all(client, asks, signed, size, self.needed(len(registered)))
        cosigned = signed + "".join(lines).encode()
        row = CosignedCheckpoint(
            size=size,
            note=cosigned,
            cosignatures=len(lines),
            quorum_met=len(lines) >= self.needed(len(registered)),
        )
        with self.sessions.begin() as s:
            s.merge(row)
        if not row.quorum_met:
            log.warning(
                "checkpoint %d has %d of %d needed cosignatures",
                size,
                len(lines),
                self.needed(len(registered)),
            )
        return row

    def _ask_all(
        self,
        client: httpx.Client,
        asks: list[tuple[WitnessStatus, note.NoteVerifier]],
        signed: bytes,
        size: int,
        needed: int,
    ) -> list[str]:
        """Ask every witness at once, so that one that is away or slow costs a round its own
        timeout, not the sum of everyone's. Once a quorum has cosigned, the others get
        ``QUORUM_GRACE_SECONDS`` more: a slow witness then adds its cosignature in a later
        round (it has seen this checkpoint; the hub proves consistency from it next time)."""
        if not asks:
            return []
        pool = ThreadPoolExecutor(max_workers=len(asks), thread_name_prefix="cosign")
        try:
            futures = [
                pool.submit(self._ask, client, status, signed, size, verifier)
                for status, verifier in asks
            ]
            lines: dict[int, str] = {}
            pending = set(futures)
            deadline: float | None = None
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                if not done:
                    break  # the grace after the quorum ran out
                for f in done:
                    if line := f.result():
                        lines[futures.index(f)] = line
                if deadline is None and len(lines) >= needed:
                    deadline = time.monotonic() + QUORUM_GRACE_SECONDS
            # In the registered witnesses' order, so the note does not depend on timing.
            return [lines[i] for i in sorted(lines)]
        finally:
            # Stragglers finish on their own (bounded by the request timeout).
            pool.shutdown(wait=False)

    def _ask(
        self,
        client: httpx.Client,
        w: WitnessStatus,
        signed: bytes,
        size: int,
        verifier: note.NoteVerifier,
    ) -> str:
        old = min(w.size, size)
        for _attempt in range(3):
            proof = self.store.consistency_proof(old, size) if 0 < old < size else []
            body = (
                f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n"
            ).encode() + signed
            try:
                r = client.post(f"{w.url}/add-checkpoint", content=body, timeout=self.timeout)
            except httpx.HTTPError as exc:
                w.last_error = f"unreachable: {exc.__class__.__name__}"
                return ""
            if r.status_code == 409 and r.text.strip().isdigit():
                # The witness knows a different size than we thought (a restart on either
                # side): prove consistency from its size instead.
                old = int(r.text.strip())
                if old > size:
                    w.last_error = f"witness has seen size {old}, larger than the log's {size}"
                    return ""
                continue
            if r.status_code != 200:
                w.last_error = f"{r.status_code}: {r.text.strip()[:200]}"
                log.error("witness %s refused checkpoint %d: %s", w.name, size, w.last_error)
                return ""
            cosigned = "".join(line + "\n" for line in r.text.splitlines() if line.startswith("— "))
            try:
                # Only a cosignature by the witness's registered key counts towards the
                # quorum (c2sp.org/tlog-cosignature): a witness whose key was replaced, or
                # anything answering at its URL, must not make a checkpoint look cosigned.
                note.open_note(signed + cosigned.encode(), [verifier])
            except NoteError as exc:
                w.last_error = f"its cosignature does not verify with its registered key: {exc}"
                log.error("witness %s: %s", w.name, w.last_error)
                return ""
            w.size, w.last_error = size, ""
            w.last_cosigned_at = utcnow().isoformat()
            return cosigned
        w.last_error = "the witness kept answering 409"
        return ""

    def latest(self, *, quorum_only: bool = True, covering: int = 0) -> CosignedCheckpoint | None:
        with self.sessions() as s:
            q = select(CosignedCheckpoint).where(CosignedCheckpoint.size > covering)
            if quorum_only:
                q = q.where(CosignedCheckpoint.quorum_met.is_(True))
            return s.scalar(q.order_by(CosignedCheckpoint.size.desc()).limit(1))

    def run_forever(self, interval: float, stop: threading.Event) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                t0 = time.monotonic()
                for step in self.before_round:
                    try:
                        step()
                    except Exception:  # the round itself must still happen
                        log.exception("ledger step %s failed", getattr(step, "__name__", step))
                try:
                    self.round(client)
                except Exception:  # a round must never kill the loop; the next one retries
                    log.exception("ledger cosigning round failed")
                stop.wait(max(0.0, interval - (time.monotonic() - t0)))
