"""The node's webhook tables: where each webhook has got to, and what it could not deliver.

A webhook keeps its own position in the node's log of its stream, apart from the broker's
acknowledged position (that one belongs to the apps that pull). A dead letter keeps the event
as the broker held it, sealed to this node (HPKE, RFC 9180): nothing is at rest in plaintext.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import NodeBase, UTCDateTime, utcnow


class WebhookPosition(NodeBase):
    """One webhook's position: everything of its stream up to ``position`` is delivered or
    dead-lettered."""

    __tablename__ = "webhook_positions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    stream: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped by every rewind: the dispatcher moves the position only if the generation it
    # read is still the stored one, so a rewind is never overwritten by a batch in flight.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Why delivery is paused ("" while it runs): the refusal of the agreement check.
    paused: Mapped[str] = mapped_column(String(500), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDeadLetter(NodeBase):
    """An event a webhook gave up on after its attempts, kept for replay."""

    __tablename__ = "webhook_dead_letters"
    __table_args__ = (Index("ix_webhook_dead_letters_webhook_state", "webhook", "state"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    webhook: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    stream: Mapped[str] = mapped_column(String(64))
    offset: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(128))
    # The broker's partition key: an HMAC under the agreement's pseudonym key, not the value.
    partition_key: Mapped[str] = mapped_column(String(256))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)  # as fetched: sealed to this node
    attempts: Mapped[int] = mapped_column(Integer)
    # The last failure: "HTTP 503" or an exception's class, never the receiver's body.
    last_error: Mapped[str] = mapped_column(String(200))
    # "dead", or "replay" once an operator asked the dispatcher to deliver it again.
    state: Mapped[str] = mapped_column(String(16), default="dead")
    first_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
