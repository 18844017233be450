"""Exchange records on the ledger: nodes submit them, the hub appends them as entries.

A node signs each batch of its records with its node key (ECDSA P-256, the key its hub-issued
certificate certifies), so the hub accepts records only from enrolled, unrevoked nodes and
each entry names the node that vouched for it. Entries carry who, what, when, why and the
request/response hashes: never a payload, and not the request path either (a query string
can hold a person's identifiers; the request hash binds it instead).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import BigInteger, Float, Index, Integer, String, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from qiao import problems
from qiao.canonical import canonical_json
from qiao.db import HubBase, UTCDateTime
from qiao.problems import Problem
from qiao.registry.models import Certificate, Node

log = logging.getLogger("qiao.ledger.exchanges")

SUBMISSION_KIND = "qiao-ledger-submission/1"
MAX_BATCH = 1000
# The record fields that become part of a ledger entry (see the module docstring).
ENTRY_FIELDS = (
    "exchange_id",
    "role",
    "client",
    "provider_org",
    "resource",
    "method",
    "purpose",
    "end_user",
    "peer_node",
    "started_at",
    "duration_ms",
    "status",
    "problem_type",
    "request_bytes",
    "response_bytes",
    "request_hash",
    "response_hash",
)
# Fields an entry carries only when set: the agreement an exchange was admitted under and the
# emergency, if any (docs/agreements.md). Optional so that nodes of an earlier release, whose
# records lack them, can still submit.
OPTIONAL_ENTRY_FIELDS = ("agreement", "emergency")


class LedgerExchange(HubBase):
    """Which ledger entry holds which node's record of an exchange (for receipts), with the
    entry's who, what, when and why copied out so that audit searches and the dashboard's
    figures read indexed columns, not a million JSON entries (docs/console.md, "Audit").

    ``org`` is the organization of the node that recorded it: each party's node records an
    exchange, so an organization's own rows are every exchange it took part in. The copied
    columns are NULL for rows from before migration 0014 that it could not fill."""

    __tablename__ = "ledger_exchanges"
    __table_args__ = (
        Index("ix_ledger_exchanges_exchange_id", "exchange_id"),
        # Keyset paging runs on idx (newest first) within each filter. A search by one
        # organization reads (filter, org, idx); the platform's, across organizations, reads
        # (filter, idx) where a filter matches many rows (purpose, resource). An end user's
        # or an exchange's rows are few: sorting them costs nothing.
        Index("ix_ledger_exchanges_org_idx", "org", "idx"),
        Index("ix_ledger_exchanges_xid_org_idx", "exchange_id", "org", "idx"),
        Index("ix_ledger_exchanges_end_user_idx", "end_user", "org", "idx"),
        Index("ix_ledger_exchanges_purpose_idx", "purpose", "idx"),
        Index("ix_ledger_exchanges_purpose_org_idx", "purpose", "org", "idx"),
        Index("ix_ledger_exchanges_resource_idx", "provider_org", "resource", "idx"),
        Index("ix_ledger_exchanges_resource_org_idx", "provider_org", "resource", "org", "idx"),
        # Time windows: the audit's time range and the dashboard's last 24 h / 14 days;
        # covering, so the dashboard's figures never read the table itself.
        Index("ix_ledger_exchanges_started_at", "started_at", "org", "status", "duration_ms"),
        Index("ix_ledger_exchanges_org_started_at", "org", "started_at", "status", "duration_ms"),
    )

    idx: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    exchange_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(String(64))
    org: Mapped[str | None] = mapped_column(String(18), nullable=True)
    client: Mapped[str | None] = mapped_column(String(200), nullable=True)
    provider_org: Mapped[str | None] = mapped_column(String(18), nullable=True)
    resource: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(200), nullable=True)
    end_user: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)


# The entry fields copied into LedgerExchange's columns (the rest stay in the entry only).
INDEXED_FIELDS = (
    "client",
    "provider_org",
    "resource",
    "method",
    "purpose",
    "end_user",
    "started_at",
    "duration_ms",
    "status",
)


def indexed_columns(org: str, rec: dict[str, Any]) -> dict[str, Any]:
    """The columns of a record's row (``started_at`` parsed; a malformed value is left NULL:
    the entry itself is the record, these columns only find it)."""
    out: dict[str, Any] = {"org": org[:18]}
    for name in INDEXED_FIELDS:
        out[name] = rec.get(name)
    for name, size in (("client", 200), ("purpose", 200), ("end_user", 200), ("resource", 64)):
        if isinstance(out[name], str):
            out[name] = out[name][:size]
    try:
        when = datetime.fromisoformat(str(out["started_at"]))
        out["started_at"] = when if when.tzinfo else when.replace(tzinfo=UTC)
    except ValueError:
        out["started_at"] = None
    for name, kind in (("duration_ms", float), ("status", int)):
        try:
            out[name] = kind(out[name]) if out[name] is not None else None
        except (TypeError, ValueError):
            out[name] = None
    return out


def encode_batch(node: str, records: list[dict[str, Any]]) -> bytes:
    """The batch as sent. The signature covers these exact bytes, so neither side needs to
    canonicalize them (RFC 8785 in pure Python costs ~46 µs a record; see BENCHMARKS.md)."""
    return orjson.dumps({"kind": SUBMISSION_KIND, "node": node, "records": records})


def sign_batch(key: ec.EllipticCurvePrivateKey, batch: bytes) -> str:
    return base64.b64encode(key.sign(batch, ec.ECDSA(hashes.SHA256()))).decode()


def record_for_ledger(row: Any) -> dict[str, Any]:
    """A node's stored record as it travels to the hub (JSON-safe, entry fields only)."""
    out: dict[str, Any] = {"record_id": int(row["id"])}
    for name in ENTRY_FIELDS:
        value = row[name]
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, float):
            value = round(value, 3)
        out[name] = value
    for name in OPTIONAL_ENTRY_FIELDS:
        if row.get(name):
            out[name] = str(row[name])
    return out


def ledger_entry(instance: str, node: str, org: str, rec: dict[str, Any]) -> dict[str, Any]:
    """The ledger entry for a record as submitted (``record_for_ledger``'s form): what the hub
    appends, and what an auditor of the node's records recomputes (``record_differences``).
    Raises KeyError, TypeError or ValueError for a record that lacks a field."""
    entry = {
        "type": "exchange",
        "instance": instance,
        "node": node,
        "org": org,
        "record_id": int(rec["record_id"]),
        **{k: rec[k] for k in ENTRY_FIELDS},
    }
    for k in OPTIONAL_ENTRY_FIELDS:
        if rec.get(k):
            entry[k] = str(rec[k])[:64]
    return entry


def record_differences(node: str, rec: dict[str, Any], entry: bytes) -> list[str]:
    """How a node's record (``record_for_ledger``'s form) differs from the ledger entry it was
    appended as: [] when the entry is still exactly this record, else one phrase per field
    ("status: 200 here, 500 on the ledger"). The hub adds only its instance and the node's
    organization, which the node's copy does not hold; everything else must match."""
    try:
        on_ledger = orjson.loads(entry)
    except orjson.JSONDecodeError:
        return ["the ledger entry is not JSON"]
    if not isinstance(on_ledger, dict) or on_ledger.get("type") != "exchange":
        return ["the ledger entry is not an exchange record"]
    expected = ledger_entry("", node, "", rec)
    out = []
    for name, value in expected.items():
        if name in ("instance", "org"):
            continue
        held = on_ledger.get(name, "" if name in OPTIONAL_ENTRY_FIELDS else None)
        if held != value:
            out.append(f"{name}: {value!r} here, {held!r} on the ledger")
    for name in OPTIONAL_ENTRY_FIELDS:
        if name not in expected and on_ledger.get(name):
            out.append(f"{name}: '' here, {on_ledger[name]!r} on the ledger")
    return out


class ExchangeLedger:
    """Hub side: check a node's signed batch and append its records to the ledger."""

    def __init__(self, sessions: sessionmaker[Session], store: Any, instance: str) -> None:
        self.sessions = sessions
        self._store = store
        self.instance = instance
        # Told of every exchange admitted under an emergency (the emergency service's review
        # list); set by the hub.
        self.on_emergency_access: Callable[[str, str, dict[str, Any], int], None] | None = None

    def _node_key(self, node: str, fingerprint: str) -> tuple[str, Any]:
        with self.sessions() as s:
            row = s.execute(
                select(
                    Node.org_code, Certificate.pem, Certificate.revoked_at, Certificate.not_after
                )
                .join(Certificate, Certificate.node_id == Node.id)
                .where(Node.name == node, Certificate.fingerprint == fingerprint)
            ).one_or_none()
        if row is None:
            raise Problem(problems.FORBIDDEN, f"no certificate {fingerprint[:16]}… for node {node}")
        if row.revoked_at is not None:
            raise Problem(problems.FORBIDDEN, f"node {node}'s certificate is revoked")
        # An expired certificate vouches for nothing (RFC 5280 §4.1.2.5), as for the
        # configuration fetch and the event broker (RegistryService.verify_node_signature).
        if row.not_after <= datetime.now(UTC):
            raise Problem(problems.FORBIDDEN, f"node {node}'s certificate has expired")
        return row.org_code, x509.load_pem_x509_certificate(row.pem.encode()).public_key()

    def submit(self, node: str, fingerprint: str, batch: str, signature: str) -> list[int]:
        org, public_key = self._node_key(node, fingerprint)
        raw = batch.encode()
        try:
            public_key.verify(
                base64.b64decode(signature, validate=True), raw, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError) as exc:
            raise Problem(problems.FORBIDDEN, "the submission's signature does not verify") from exc
        try:
            parsed = orjson.loads(raw)
            records = parsed["records"]
            signed_for = (parsed["kind"], parsed["node"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise Problem(problems.VALIDATION, f"the batch is not a submission: {exc}") from exc
        if signed_for != (SUBMISSION_KIND, node):
            raise Problem(problems.FORBIDDEN, f"the batch was signed for {signed_for}, not {node}")
        if not isinstance(records, list) or not records or len(records) > MAX_BATCH:
            raise Problem(problems.VALIDATION, f"submit 1 to {MAX_BATCH} records at a time")
        entries: list[tuple[str, bytes]] = []
        for rec in records:
            try:
                entry = ledger_entry(self.instance, node, org, rec)
            except (KeyError, TypeError, ValueError) as exc:
                raise Problem(problems.VALIDATION, f"record lacks {exc}") from exc
            entries.append((f"exchange:{node}:{entry['record_id']}", canonical_json(entry)))
        indices: list[int] = self._store.append(entries)
        self._remember(node, org, records, indices)
        if self.on_emergency_access is not None:
            for rec, index in zip(records, indices, strict=True):
                if rec.get("emergency"):
                    # Every access under an emergency is flagged for review afterwards.
                    self.on_emergency_access(node, org, rec, index)
        return indices

    def _remember(
        self, node: str, org: str, records: list[dict[str, Any]], indices: list[int]
    ) -> None:
        rows = [
            {
                "idx": i,
                "exchange_id": r["exchange_id"],
                "role": r["role"],
                "node": node,
                **indexed_columns(org, r),
            }
            for r, i in zip(records, indices, strict=True)
        ]
        with self.sessions.begin() as s:
            dialect = s.get_bind().dialect.name
            ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(LedgerExchange)
            # A resubmitted batch maps to the same indices: inserting it again changes nothing.
            s.execute(ins.on_conflict_do_nothing(index_elements=["idx"]), rows)

    def audit_index(self, entries: Iterable[tuple[int, bytes]], page: int = 4096) -> list[str]:
        """Compare the exchange index (``ledger_exchanges``, what receipts and audit searches
        read) with the log's exchange entries (``entries`` in index order): one line per row
        that no longer says what its entry says, per exchange entry without a row, and per
        row whose entry is not an exchange record. [] when they agree."""
        findings: list[str] = []
        t = LedgerExchange.__table__
        columns = ("exchange_id", "role", "node", "org", *INDEXED_FIELDS)

        def rows() -> Iterator[Any]:
            after = -1
            while True:
                with self.sessions() as s:
                    batch = list(
                        s.execute(
                            select(t).where(t.c.idx > after).order_by(t.c.idx).limit(page)
                        ).mappings()
                    )
                if not batch:
                    return
                yield from batch
                after = batch[-1]["idx"]

        stored = rows()
        row = next(stored, None)
        for idx, data in entries:
            while row is not None and row["idx"] < idx:
                findings.append(f"exchange index row {row['idx']}: no such entry in the log")
                row = next(stored, None)
            mine = row if row is not None and row["idx"] == idx else None
            if mine is not None:
                row = next(stored, None)
            if b'"type":"exchange"' not in data:
                if mine is not None:
                    findings.append(f"exchange index row {idx}: entry {idx} is no exchange record")
                continue
            try:
                entry = orjson.loads(data)
                expected = {
                    "exchange_id": entry["exchange_id"],
                    "role": entry["role"],
                    "node": entry["node"],
                    **indexed_columns(str(entry["org"]), entry),
                }
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # the log's own checks report an entry that is not what it was
            if mine is None:
                findings.append(
                    f"entry {idx}: missing from the exchange index (its receipt and audit "
                    "searches would not find it)"
                )
                continue
            differ = [c for c in columns if mine[c] != expected[c]]
            if differ:
                findings.append(
                    f"exchange index row {idx}: "
                    + "; ".join(f"{c} {mine[c]!r}, entry {expected[c]!r}" for c in differ)
                )
        while row is not None:
            findings.append(f"exchange index row {row['idx']}: no such entry in the log")
            row = next(stored, None)
        return findings

    def find(self, exchange_id: str) -> list[LedgerExchange]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(LedgerExchange)
                    .where(LedgerExchange.exchange_id == exchange_id)
                    .order_by(LedgerExchange.idx)
                )
            )


@dataclass(frozen=True)
class ExchangeQuery:
    """An audit search of the exchanges on the ledger. ``org`` limits it to the rows one
    organization's nodes recorded (every exchange it took part in); ``department`` is the
    same filter chosen by the searcher. Pages run newest first, keyed on the ledger index
    (``before``: the last index of the previous page), so page 1,000 costs what page 1 does."""

    org: str | None = None
    department: str | None = None
    provider_org: str | None = None
    resource: str | None = None
    end_user: str | None = None
    purpose: str | None = None
    exchange_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 20


def search_exchanges(s: Session, q: ExchangeQuery) -> list[LedgerExchange]:
    """One page of ``q`` from the indexed columns (docs/console.md, "Audit")."""
    t = LedgerExchange
    stmt = select(t)
    for column, value in (
        (t.org, q.org),
        (t.org, q.department),
        (t.provider_org, q.provider_org),
        (t.resource, q.resource),
        (t.end_user, q.end_user),
        (t.purpose, q.purpose),
        (t.exchange_id, q.exchange_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if q.since is not None:
        stmt = stmt.where(t.started_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(t.started_at < q.until)
    if q.before is not None:
        stmt = stmt.where(t.idx < q.before)
    return list(s.scalars(stmt.order_by(t.idx.desc()).limit(q.limit)))


def exchange_window(
    s: Session, since: datetime, until: datetime, org: str | None = None
) -> list[tuple[datetime | None, str | None, int | None, float | None]]:
    """(started_at, org, status, duration_ms) of every row started in [since, until), read
    from the covering time index only: the dashboard's last 24 hours."""
    t = LedgerExchange
    stmt = select(t.started_at, t.org, t.status, t.duration_ms).where(
        t.started_at >= since, t.started_at < until
    )
    if org is not None:
        stmt = stmt.where(t.org == org)
    return [(r[0], r[1], r[2], r[3]) for r in s.execute(stmt)]


def exchange_counts(
    s: Session, since: datetime, until: datetime, org: str | None = None
) -> dict[str | None, int]:
    """How many rows started in [since, until), per recording organization (an index range
    count, never the table)."""
    t = LedgerExchange
    stmt = (
        select(t.org, func.count())
        .where(t.started_at >= since, t.started_at < until)
        .group_by(t.org)
    )
    if org is not None:
        stmt = stmt.where(t.org == org)
    return {r[0]: int(r[1]) for r in s.execute(stmt)}
