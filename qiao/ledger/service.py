"""The hub's ledger, composed: the log store, exchange submissions, cosigning, receipts."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, select, update

from qiao import problems
from qiao.canonical import canonical_json
from qiao.ledger.cosigning import Cosigning
from qiao.ledger.exchanges import MAX_BATCH, ExchangeLedger
from qiao.ledger.note import open_note, parse_verifier_key
from qiao.ledger.policy import policy_text
from qiao.ledger.receipt import format_receipt
from qiao.problems import Problem
from qiao.registry.models import AdminEvent

TEXT = "text/plain; charset=utf-8"


class SubmissionIn(BaseModel):
    node: str = Field(max_length=64)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    batch: str = Field(max_length=MAX_BATCH * 2000, description="the signed batch, as JSON text")
    signature: str = Field(max_length=200)


@dataclass
class HubLedger:
    store: Any  # qiao.ledger.store.LedgerStore
    origin: str
    log_key: str  # the log's C2SP verifier key
    exchanges: ExchangeLedger
    cosigning: Cosigning
    interval: float = 2.0
    # Further audits of what the ledger vouches for (the stored agreements, say), each
    # giving one line per discrepancy; ``verify`` runs them after the log's own checks.
    audits: list[Callable[[], list[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def pump_admin_events(self, limit: int = 1000) -> int:
        """Append pending administrative actions to the ledger (idempotent by event id)."""

        sessions = self.exchanges.sessions
        with sessions() as s:
            events = list(
                s.scalars(
                    select(AdminEvent)
                    .where(AdminEvent.ledger_index.is_(None))
                    .order_by(AdminEvent.id)
                    .limit(limit)
                )
            )
        if not events:
            return 0
        entries = [
            (
                f"admin:{e.id}",
                canonical_json(
                    {
                        "type": "admin",
                        "instance": self.exchanges.instance,
                        "event_id": e.id,
                        "action": e.action,
                        "actor": e.actor,
                        "at": e.created_at.isoformat(),
                        "detail": json.loads(e.detail),
                    }
                ),
            )
            for e in events
        ]
        indices = self.store.append(entries)
        table = AdminEvent.__table__
        with sessions.begin() as s:
            # Core, not ORM: an executemany UPDATE keyed by a bound parameter.
            s.execute(
                update(table)  # type: ignore[arg-type]
                .where(table.c.id == bindparam("eid"))
                .values(ledger_index=bindparam("lix")),
                [{"eid": e.id, "lix": i} for e, i in zip(events, indices, strict=True)],
            )
        return len(events)

    def start(self) -> None:
        self.cosigning.before_round.append(self.pump_admin_events)
        self._thread = threading.Thread(
            target=self.cosigning.run_forever,
            args=(self.interval, self._stop),
            name="qiao-ledger-cosigning",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def receipt(self, exchange_id: str, role: str | None) -> bytes:
        entries = [e for e in self.exchanges.find(exchange_id) if role in (None, e.role)]
        if not entries:
            raise Problem(
                problems.NOT_FOUND,
                f"no ledger entry for exchange {exchange_id!r}"
                + (f" as {role}" if role else "")
                + " (nodes submit records within seconds; try again shortly)",
            )
        # The provider's record is the authoritative one when both are there.
        entry = next((e for e in entries if e.role == "provider"), entries[0])
        cosigned = self.cosigning.latest(covering=entry.idx)
        if cosigned is None:
            raise Problem(
                problems.NOT_FOUND,
                f"entry {entry.idx} is not yet in a cosigned checkpoint; try again",
            )
        proof = self.store.inclusion_proof(entry.idx, cosigned.size)
        return format_receipt(entry.idx, proof, cosigned.note)

    def policy_text(self) -> str:
        """The C2SP tlog-policy a verifier needs: this log, its witnesses, the quorum."""
        witnesses = [key for key, _url in self.cosigning.registered_keys()]
        return policy_text(
            self.log_key,
            witnesses,
            self.cosigning.needed(len(witnesses)),
        )

    def verify(self) -> list[str]:
        """Everything ``store.verify`` checks, plus every stored cosigned checkpoint: the log's
        signature, each cosignature, and its root against the root recomputed from entries;
        then the ``audits`` of what the log vouches for."""
        findings: list[str] = list(self.store.verify())
        verifiers = [parse_verifier_key(self.log_key)]
        verifiers += [parse_verifier_key(k) for k, _u in self.cosigning.registered_keys()]
        log_size = self.store.size()
        for size, blob, count in self.cosigning.all_cosigned():
            try:
                text, sigs = open_note(blob, verifiers)
            except Exception as exc:
                findings.append(f"cosigned checkpoint {size}: does not verify: {exc}")
                continue
            lines = text.splitlines()
            if len(lines) < 3 or lines[1] != str(size):
                findings.append(f"cosigned checkpoint {size}: names size {lines[1:2]}")
                continue
            try:
                root = self.store.root(size) if size <= log_size else None
            except (IndexError, ValueError) as exc:
                # Tiles missing or cut short: the log's own checks above say which.
                findings.append(
                    f"cosigned checkpoint {size}: the stored tiles cannot give its root: {exc}"
                )
                root = None
            if root is not None and base64.b64decode(lines[2]) != root:
                findings.append(
                    f"cosigned checkpoint {size}: root differs from the root "
                    "recomputed from the stored entries"
                )
            if len(sigs) - 1 < count:
                findings.append(
                    f"cosigned checkpoint {size}: {count} cosignatures recorded, "
                    f"{len(sigs) - 1} verify"
                )
        for audit in self.audits:
            findings += audit()
        return findings

    def status(self) -> dict[str, Any]:
        latest = self.cosigning.latest()
        registered = self.cosigning.registered()
        return {
            "size": self.store.size(),
            "origin": self.origin,
            "cosigned_size": latest.size if latest else 0,
            "cosigned_at": latest.created_at.isoformat() if latest else None,
            "quorum": self.cosigning.needed(len(registered)),
            "witnesses": [
                {
                    "name": name,
                    "url": url,
                    **(
                        {
                            "size": w.size,
                            "last_cosigned_at": w.last_cosigned_at,
                            "last_error": w.last_error,
                        }
                        if (w := self.cosigning.witnesses.get(name))
                        else {}
                    ),
                }
                for name, url in registered
            ],
        }


def ledger_api(ledger: HubLedger) -> APIRouter:
    """Routes under /ledger that the store's C2SP tile routes do not cover."""
    router = APIRouter(tags=["ledger"])

    @router.get("/checkpoint", response_class=Response)
    def checkpoint() -> Response:
        """The latest checkpoint a quorum of witnesses cosigned (C2SP signed note)."""
        latest = ledger.cosigning.latest()
        if latest is None:
            raise Problem(problems.NOT_FOUND, "no checkpoint has been cosigned yet")
        return Response(latest.note, media_type=TEXT, headers={"Cache-Control": "no-cache"})

    @router.get("/receipts/{exchange_id}", response_class=Response)
    def receipt(exchange_id: str, role: str | None = None) -> Response:
        """A C2SP tlog-proof that this exchange's record is in the cosigned log."""
        # Event batches are recorded by the publishing and the subscribing node
        # (docs/events.md#records-and-the-ledger) under the same exchange-record shape.
        if role not in (None, "consumer", "provider", "publisher", "subscriber"):
            raise Problem(
                problems.VALIDATION, "role is consumer, provider, publisher or subscriber"
            )
        return Response(ledger.receipt(exchange_id, role), media_type=TEXT)

    @router.get("/entries/{index}", response_class=Response)
    def entry(index: int) -> Response:
        """The canonical JSON of one entry (what a receipt's leaf hash covers)."""
        if index < 0 or index >= ledger.store.size():
            raise Problem(problems.NOT_FOUND, f"no entry {index}")
        return Response(ledger.store.entry(index), media_type="application/json")

    @router.get("/policy", response_class=Response)
    def policy() -> Response:
        """The C2SP tlog-policy to verify receipts with (public keys only)."""
        return Response(ledger.policy_text(), media_type=TEXT)

    @router.get("/status")
    def status() -> dict[str, Any]:
        return ledger.status()

    return router


def submissions_api(ledger: HubLedger) -> APIRouter:
    router = APIRouter(tags=["ledger"])

    @router.post("/api/v1/ledger/submissions")
    def submit(body: SubmissionIn, request: Request) -> dict[str, list[int]]:
        """A node's signed batch of exchange records; answers their ledger indices."""
        return {
            "indices": ledger.exchanges.submit(
                body.node, body.fingerprint, body.batch, body.signature
            )
        }

    return router
