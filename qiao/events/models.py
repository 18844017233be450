"""The embedded broker's tables in the hub's database: the event logs and their positions.

``event_log`` holds every (stream, subscriber) log in one table; ``event_positions`` has one
row per log with the last offset handed out (the counter publishers lock to append) and the
subscriber's acknowledged offset. Envelopes are sealed to the subscriber node: the hub stores
bytes it cannot read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow

# "{org}/{code}": 64 + 1 + 64 characters.
MAX_STREAM = 129
MAX_SUBSCRIBER = 64
MAX_EVENT_ID = 128
MAX_PARTITION_KEY = 256

_Id = BigInteger().with_variant(Integer, "sqlite")


class EventLogEntry(HubBase):
    """One sealed event in one subscriber's log of a stream."""

    __tablename__ = "event_log"
    __table_args__ = (
        UniqueConstraint("stream", "subscriber", "offset"),
        # Republishing an event id returns its offset instead of appending it again; the
        # constraint backs up the check publishers make under the log's counter lock.
        UniqueConstraint("stream", "subscriber", "event_id", name="uq_event_log_event_id"),
        # Retention (trim) and replay from a time select by publication time.
        Index("ix_event_log_published_at", "stream", "published_at"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    stream: Mapped[str] = mapped_column(String(MAX_STREAM))
    subscriber: Mapped[str] = mapped_column(String(MAX_SUBSCRIBER))
    offset: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(MAX_EVENT_ID))
    partition_key: Mapped[str] = mapped_column(String(MAX_PARTITION_KEY))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


class EventPosition(HubBase):
    """One log's counter and its subscriber's acknowledged offset."""

    __tablename__ = "event_positions"

    stream: Mapped[str] = mapped_column(String(MAX_STREAM), primary_key=True)
    subscriber: Mapped[str] = mapped_column(String(MAX_SUBSCRIBER), primary_key=True)
    # The last offset handed out; only grows, so trimmed offsets are never handed out again.
    last_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    acked: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
