"""Records of published and delivered events, and their digests on the ledger.

Every event a node publishes and every event it delivers to one of its apps or backends is
recorded at that node (``event_records``), with the SHA-256 digest of the event as it was
published or delivered: its RFC 8785 canonical JSON, so any party holding the event computes
the same digest from it.

The ledger gets the digests through the node's exchange records, the ledger's outbox. The
events of one publish call, or of one delivery (a pull, a webhook call, a burst of
server-sent events), form a batch, and each batch is ONE exchange record: its id is the
batch's id, and its request hash is the SHA-256 of the canonical JSON list of the batch's
``[event_id, digest]`` pairs in order. The node's ``LedgerSubmitter`` sends it to the hub like
any exchange record, so each event's digest is committed on the ledger, and an auditor who
recomputes the hash from ``event_records`` (``qiao events records --verify BATCH``) finds out
whether those rows are still what the node recorded at the time.

The rows of a batch and its exchange record are committed in one transaction by the node's
record writer (group commit: one commit covers every batch and exchange that arrived during
the previous one) before ``published`` or ``delivered`` return.

Batch records have roles ``publisher`` and ``subscriber``; the rate limiters count only
``consumer`` and ``provider`` records (qiao.exchange.limits), so events never use up an
agreement's exchange quota.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
import typer
from sqlalchemy import Engine, Table, select

from qiao.canonical import canonical_json, sha256_hex
from qiao.db import utcnow
from qiao.events.record_models import EventRecord
from qiao.exchange.models import ExchangeRecord
from qiao.exchange.records import Record, RecordWriter

PUBLISHER = "publisher"
SUBSCRIBER = "subscriber"
PUBLISH_METHOD = "PUBLISH"
DELIVER_METHOD = "DELIVER"
VIA_PUBLISH = "publish"

_TABLE = cast(Table, EventRecord.__table__)


@dataclass(frozen=True)
class PublishedRecord:
    """One event as the provider's backend published it (before any masking)."""

    event_id: str
    event: dict[str, Any]
    offsets: dict[str, int]  # subscriber node name -> offset in that node's log


@dataclass(frozen=True)
class DeliveredRecord:
    """One event as this node handed it to an app or a backend (as masked for it)."""

    offset: int
    event_id: str
    event: dict[str, Any]
    agreement: str


# --- digests (pure) ------------------------------------------------------------------------
def event_digest(event: dict[str, Any]) -> tuple[str, int]:
    """(SHA-256 hex, length) of the event's RFC 8785 canonical JSON."""
    data = canonical_event(event)
    return sha256_hex(data), len(data)


def canonical_event(event: Any) -> bytes:
    """RFC 8785 canonical JSON of ``event``, exactly ``qiao.canonical.canonical_json``'s bytes.

    Every published and delivered event is digested, and the pure-Python RFC 8785 encoder
    costs ~30 µs for a small event, most of a node's cost per event. orjson with sorted keys
    writes the same bytes for most events at a tenth of that: its string escapes are
    RFC 8785 §3.2.2.2's, its integers and non-integral floats between 1e-5 and 1e16 print as
    ECMAScript does (§3.2.2.3: shortest round-trip digits, no exponent). Anything else (keys
    outside the Basic Multilingual Plane, which §3.2.3 sorts by UTF-16 code units, not code
    points; integral or very small or large floats; integers beyond 2^53) goes to the full
    encoder (tests/events/test_records.py checks the two agree on arbitrary JSON)."""
    if _orjson_is_canonical(event):
        try:
            return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: the full encoder decides
            pass
    return canonical_json(event)


_SAFE_INTEGER = 2**53 - 1  # RFC 8785 §3.2.2.3: I-JSON numbers are IEEE 754 doubles


def _orjson_is_canonical(value: Any) -> bool:
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_SAFE_INTEGER <= value <= _SAFE_INTEGER)
    if t is float:
        return bool(1e-5 <= abs(value) < 1e16 and not value.is_integer())
    if t is dict:
        return all(
            type(k) is str and (k.isascii() or max(k) <= "\uffff") and _orjson_is_canonical(v)
            for k, v in value.items()
        )
    if t is list:
        return all(_orjson_is_canonical(v) for v in value)
    return False


def batch_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """The request hash of a batch's exchange record: SHA-256 of the RFC 8785 canonical JSON
    of its ``[event_id, digest]`` pairs, in the order the events were recorded."""
    return sha256_hex(canonical_event([[event_id, digest] for event_id, digest in pairs]))


class EventRecorder:
    """Records events at a node. ``via`` says how they were delivered: ``"pull"``,
    ``"sse"`` or ``"webhook:<name>"``. Both calls return once the records are durable.

    ``org`` is this node's organization (the provider of what it publishes); ``writer`` the
    node's record writer, whose transaction also commits the batch's exchange record."""

    def __init__(self, writer: RecordWriter, org: str) -> None:
        self._writer = writer
        self._org = org

    async def published(
        self,
        *,
        client: str,
        stream: str,
        events: Sequence[PublishedRecord],
        started_at: datetime,
    ) -> None:
        """``client`` (an app of this node's organization) published ``events`` of this
        organization's ``stream``."""
        rows = [
            {
                "offset": None,
                "offsets": e.offsets,
                "agreement": "",
                "event": e.event,
                "event_id": e.event_id,
            }
            for e in events
        ]
        # One publish reaches every subscriber's agreement: the batch has no single one.
        await self._record(
            role=PUBLISHER,
            client=client,
            provider_org=self._org,
            stream=stream,
            rows=rows,
            via=VIA_PUBLISH,
            method=PUBLISH_METHOD,
            status=202,
            started_at=started_at,
        )

    async def delivered(
        self,
        *,
        client: str,
        provider_org: str,
        stream: str,
        events: Sequence[DeliveredRecord],
        via: str,
        started_at: datetime,
    ) -> None:
        """``events`` of ``provider_org``'s ``stream`` were handed to ``client`` ``via`` a
        pull, server-sent events or a webhook."""
        rows = [
            {
                "offset": e.offset,
                "offsets": None,
                "agreement": e.agreement,
                "event": e.event,
                "event_id": e.event_id,
            }
            for e in events
        ]
        await self._record(
            role=SUBSCRIBER,
            client=client,
            provider_org=provider_org,
            stream=stream,
            rows=rows,
            via=via,
            method=DELIVER_METHOD,
            status=200,
            started_at=started_at,
        )

    async def _record(
        self,
        *,
        role: str,
        client: str,
        provider_org: str,
        stream: str,
        rows: list[dict[str, Any]],
        via: str,
        method: str,
        status: int,
        started_at: datetime,
    ) -> None:
        if not rows:
            return
        batch = str(uuid.uuid4())
        now = utcnow()
        name = f"{provider_org}/{stream}"
        pairs: list[tuple[str, str]] = []
        total = 0
        for row in rows:
            digest, size = event_digest(row.pop("event"))
            pairs.append((row["event_id"], digest))
            total += size
            row.update(
                batch=batch,
                role=role,
                stream=name,
                client=client,
                via=via,
                digest=digest,
                bytes=size,
                at=now,
            )
        agreements = {row["agreement"] for row in rows}
        record = Record(
            exchange_id=batch,
            role=role,
            client=client,
            provider_org=provider_org,
            resource=stream,
            method=method,
            path=via,
            started_at=started_at,
            duration_ms=(now - started_at).total_seconds() * 1000,
            status=status,
            request_bytes=total,
            request_hash=batch_hash(pairs),
            agreement=agreements.pop() if len(agreements) == 1 else "",
        )
        await self._writer.write(record, (_TABLE, rows))


# --- reading and verifying -----------------------------------------------------------------
def list_records(
    engine: Engine,
    *,
    stream: str | None = None,
    event_id: str | None = None,
    batch: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest event records first (all of a batch in order when ``batch`` is given)."""
    t = _TABLE
    q = select(t)
    if stream:
        q = q.where(t.c.stream == stream)
    if event_id:
        q = q.where(t.c.event_id == event_id)
    if batch:
        q = q.where(t.c.batch == batch).order_by(t.c.id)
    else:
        q = q.order_by(t.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found for one batch: the hash recomputed from ``event_records`` and
    the one in the ledger entry (None when the batch has not reached the ledger)."""

    batch: str
    events: int
    recomputed: str
    ledger_index: int | None
    on_ledger: str | None
    problem: str = ""  # why it is not verified, in words

    @property
    def verified(self) -> bool:
        return not self.problem and self.on_ledger == self.recomputed


def ledger_index(engine: Engine, batch: str) -> int | None:
    """The ledger index of a batch's exchange record (None until the hub accepted it)."""
    t = ExchangeRecord.__table__
    with engine.connect() as conn:
        return conn.execute(
            select(t.c.ledger_index)
            .where(t.c.exchange_id == batch, t.c.role.in_((PUBLISHER, SUBSCRIBER)))
            .order_by(t.c.id)
            .limit(1)
        ).scalar_one_or_none()


def verify(
    rows: Sequence[dict[str, Any]],
    batch: str,
    index: int | None,
    entry: dict[str, Any] | None,
    node: str,
) -> Verification:
    """Compare a batch's event records at ``node`` (in order) with its ledger entry (pure)."""
    recomputed = batch_hash((r["event_id"], r["digest"]) for r in rows)

    def found(problem: str, on_ledger: str | None = None) -> Verification:
        return Verification(batch, len(rows), recomputed, index, on_ledger, problem)

    if not rows:
        return found(f"this node has no event records of batch {batch}")
    if index is None or entry is None:
        return found("the batch is not on the ledger yet (the node has not submitted it)")
    on_ledger = entry.get("request_hash")
    vouched = (entry.get("exchange_id"), entry.get("role"), entry.get("node"))
    if vouched != (batch, rows[0]["role"], node):
        return found(f"ledger entry {index} is not this batch's record at {node}: {vouched}")
    if on_ledger != recomputed:
        return found(
            f"the event records hash to {recomputed}, ledger entry {index} holds "
            f"{on_ledger}: the records were changed after they were sent",
            on_ledger if isinstance(on_ledger, str) else None,
        )
    # The hash covers each event's id and digest; the batch's exchange record, on the ledger
    # with it, also vouches for who, which stream, how many bytes and under which agreement.
    stream = f"{entry.get('provider_org')}/{entry.get('resource')}"
    agreements = {r["agreement"] for r in rows}
    vouched_agreement = entry.get("agreement", "")
    for r in rows:
        held = (r["role"], r["stream"], r["client"])
        if held != (entry.get("role"), stream, entry.get("client")):
            return found(
                f"event record {r['id']} says {held}, ledger entry {index} "
                f"{(entry.get('role'), stream, entry.get('client'))}",
                on_ledger,
            )
    if sum(int(r["bytes"]) for r in rows) != entry.get("request_bytes"):
        return found(
            f"the event records count {sum(int(r['bytes']) for r in rows)} bytes, ledger "
            f"entry {index} {entry.get('request_bytes')}",
            on_ledger,
        )
    if vouched_agreement and agreements != {vouched_agreement}:
        return found(
            f"the event records name agreements {sorted(agreements)}, ledger entry {index} "
            f"{vouched_agreement}",
            on_ledger,
        )
    return found("", on_ledger)


# --- command line (registered as ``qiao events records`` in qiao.events.cli) ---------------
def records_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The node's TOML configuration file (or set QIAO_CONFIG).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    stream: Annotated[
        str | None, typer.Option(help="Only this stream: {provider org}/{code}.")
    ] = None,
    event_id: Annotated[str | None, typer.Option(help="Only this event.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 50,
    verify_batch: Annotated[
        str | None,
        typer.Option(
            "--verify",
            metavar="BATCH",
            help="Recompute the batch's hash from this node's records and compare it with "
            "its ledger entry at the hub.",
        ),
    ] = None,
) -> None:
    """Print this node's records of published and delivered events (one JSON object per
    line), or check one batch against the ledger (exit 1 when it does not verify)."""
    import httpx

    from qiao.cli import _fail
    from qiao.config import NodeSettings
    from qiao.db import make_engine, migrate

    try:
        settings = NodeSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc
    migrate("node", settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        if verify_batch is None:
            for row in list_records(engine, stream=stream, event_id=event_id, limit=limit):
                row["at"] = row["at"].isoformat()
                typer.echo(json.dumps(row, ensure_ascii=False))
            return
        rows = list_records(engine, batch=verify_batch)
        index = ledger_index(engine, verify_batch)
    finally:
        engine.dispose()
    entry: dict[str, Any] | None = None
    if rows and index is not None:
        try:
            r = httpx.get(f"{settings.hub_url}/ledger/entries/{index}", timeout=30)
            r.raise_for_status()
            entry = json.loads(r.content)
        except (httpx.HTTPError, ValueError) as exc:
            raise _fail(f"could not fetch ledger entry {index} from the hub: {exc}") from exc
    result = verify(rows, verify_batch, index, entry, settings.name)
    if not result.verified:
        typer.echo(f"not verified: {result.problem}")
        raise typer.Exit(1)
    typer.echo(
        f"verified: batch {verify_batch}, {result.events} events, ledger entry "
        f"{result.ledger_index}, request_hash {result.recomputed}"
    )
