"""Node side: send this node's exchange records to the hub's ledger, durably and once.

The exchange records table is the outbox: a record without a ledger index has not been
accepted yet. The submitter sends the oldest such records in signed batches and stores the
indices the hub returns. A node that cannot reach the hub keeps its records and sends them
later; a batch sent twice (the answer was lost) gets the same indices back, because the hub
appends by ``exchange:<node>:<record id>`` only once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine, Table, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from qiao import pki
from qiao.exchange.models import ExchangeRecord
from qiao.ledger.exchanges import (
    MAX_BATCH,
    encode_batch,
    record_differences,
    record_for_ledger,
    sign_batch,
)
from qiao.node.identity import NodeIdentity

log = logging.getLogger("qiao.ledger.submit")


class LedgerSubmitter:
    def __init__(self, engine: Engine, identity: NodeIdentity, hub_url: str) -> None:
        self._engine = engine
        self._identity = identity
        self._url = f"{hub_url}/api/v1/ledger/submissions"
        self._key = pki.load_key_pem(identity.key_file.read_bytes())
        self.submitted = 0
        self.last_error = ""

    def pending(self) -> int:
        with self._engine.connect() as c:
            return int(
                c.execute(
                    select(func.count())
                    .select_from(ExchangeRecord)
                    .where(ExchangeRecord.ledger_index.is_(None))
                ).scalar_one()
            )

    def submit_once(self, client: httpx.Client) -> int:
        """Send one batch of pending records; returns how many the hub accepted."""
        table = ExchangeRecord.__table__
        assert isinstance(table, Table)
        with self._engine.connect() as c:
            rows = list(
                c.execute(
                    select(table)
                    .where(table.c.ledger_index.is_(None))
                    .order_by(table.c.id)
                    .limit(MAX_BATCH)
                ).mappings()
            )
        if not rows:
            return 0
        batch = encode_batch(self._identity.name, [record_for_ledger(r) for r in rows])
        body: dict[str, Any] = {
            "node": self._identity.name,
            "fingerprint": self._identity.fingerprint,
            "batch": batch.decode(),
            "signature": sign_batch(self._key, batch),
        }
        resp = client.post(self._url, json=body, timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"hub refused the records ({resp.status_code}): {resp.text[:300]}")
        indices = resp.json()["indices"]
        if len(indices) != len(rows):
            raise RuntimeError(f"hub returned {len(indices)} indices for {len(rows)} records")
        with self._engine.begin() as c:
            c.execute(
                update(table)
                .where(table.c.id == bindparam("rid"))
                .values(ledger_index=bindparam("lix")),
                [{"rid": r["id"], "lix": i} for r, i in zip(rows, indices, strict=True)],
            )
        self.submitted += len(rows)
        return len(rows)

    async def run(self, interval: float) -> None:
        """Submit until cancelled: batches back to back while there is a backlog."""
        with httpx.Client() as client:
            while True:
                try:
                    sent = await asyncio.to_thread(self.submit_once, client)
                    self.last_error = ""
                # SQLAlchemyError: the node's database dropped the connection (PostgreSQL
                # restarted, or pg_terminate_backend) mid-batch. Uncaught, it would end this
                # task silently and leave every later record off the ledger until a restart;
                # a batch the hub took but whose indices were not stored is sent again and
                # gets the same indices (the hub appends each record once).
                except (
                    httpx.HTTPError,
                    SQLAlchemyError,
                    RuntimeError,
                    ValueError,
                    KeyError,
                ) as exc:
                    sent = 0
                    if not self.last_error:
                        log.warning("ledger submission failed, will retry: %s", exc)
                    self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
                if sent < MAX_BATCH:
                    await asyncio.sleep(interval)


@dataclass
class RecordsAudit:
    """What ``verify_records`` found: records compared with their entries, records not on the
    ledger yet, and one line per record that no longer matches its entry."""

    checked: int = 0
    pending: int = 0
    findings: list[str] = field(default_factory=list)


def verify_records(
    engine: Engine,
    node: str,
    fetch_entry: Callable[[int], bytes | None],
    *,
    page: int = 1000,
    max_findings: int = 1000,
) -> RecordsAudit:
    """Compare each of this node's exchange records that the hub accepted with the ledger
    entry at its index (``fetch_entry``: the entry's bytes, None when the log has no such
    entry), as ``qiao node records --verify`` does.

    The entry is the record as the node signed and sent it, so a record changed at the node
    afterwards (any field the entry carries), or a ledger index moved to another entry, is
    named here with the fields that differ. The request path is not on the ledger (it may
    hold a person's identifiers; docs/ledger.md), so it cannot be checked this way."""
    table = ExchangeRecord.__table__
    assert isinstance(table, Table)
    audit = RecordsAudit()
    after = -1
    while True:
        with engine.connect() as c:
            rows = list(
                c.execute(
                    select(table).where(table.c.id > after).order_by(table.c.id).limit(page)
                ).mappings()
            )
        if not rows:
            return audit
        for row in rows:
            after = row["id"]
            index = row["ledger_index"]
            if index is None:
                audit.pending += 1
                continue
            audit.checked += 1
            entry = fetch_entry(int(index))
            if entry is None:
                problems = ["the ledger has no such entry"]
            else:
                problems = record_differences(node, record_for_ledger(row), entry)
            if problems and len(audit.findings) < max_findings:
                audit.findings.append(
                    f"record {row['id']} (exchange {row['exchange_id']}, {row['role']}), "
                    f"ledger entry {index}: " + "; ".join(problems)
                )
