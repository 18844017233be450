"""The node table of event records: one row per event published or delivered at this node."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import NodeBase, UTCDateTime


class EventRecord(NodeBase):
    """One event as this node published it or handed it to an app, with its digest.

    The events of one publish call or one delivery share a ``batch``: the id of the exchange
    record that carries the batch's digests to the ledger (qiao.events.records)."""

    __tablename__ = "event_records"
    __table_args__ = (
        Index("ix_event_records_batch", "batch"),
        Index("ix_event_records_event_id", "event_id"),
        Index("ix_event_records_stream_id", "stream", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    batch: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # "publisher" or "subscriber"
    stream: Mapped[str] = mapped_column(String(83))  # "{org}/{code}"
    client: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(128))
    # The subscriber's offset in its node's log; the publisher's offsets, subscriber node ->
    # offset (one event lands in every subscribing node's log).
    offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    offsets: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    agreement: Mapped[str] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(80))  # "publish", "pull", "sse", "webhook:<name>"
    # SHA-256 (hex) of the event's RFC 8785 canonical JSON as published or as delivered, and
    # the length of that JSON.
    digest: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
