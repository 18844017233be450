"""Tables of a node's own store: the exchange records and the apps' API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import NodeBase, UTCDateTime, utcnow


class ExchangeRecord(NodeBase):
    """What one node saw of one exchange. Never the payload (unless configured)."""

    __tablename__ = "exchange_records"
    __table_args__ = (
        # Not unique: an app may retry with the same X-Qiao-Id, and each attempt is recorded.
        Index("ix_exchange_records_exchange_id", "exchange_id"),
        Index("ix_exchange_records_started_at", "started_at"),
        Index("ix_exchange_records_ledger_index", "ledger_index"),
        # The limiters count an agreement's calls today and in its window from here.
        Index("ix_exchange_records_agreement_started_at", "agreement", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    exchange_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # "consumer" or "provider"
    client: Mapped[str] = mapped_column(String(200))
    provider_org: Mapped[str] = mapped_column(String(18))
    resource: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2000))
    purpose: Mapped[str] = mapped_column(String(200), default="")
    end_user: Mapped[str] = mapped_column(String(200), default="")
    peer_node: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    problem_type: Mapped[str] = mapped_column(String(120), default="")
    request_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    response_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    response_hash: Mapped[str] = mapped_column(String(64), default="")
    # The agreement the call was decided under, and the emergency that admitted it if one
    # did ("" otherwise): audit asks "who used which agreement", review asks for emergencies.
    agreement: Mapped[str] = mapped_column(String(64), default="", server_default="")
    emergency: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The record's index in the hub's ledger once the hub accepted it; NULL until then (the
    # records table is the ledger outbox).
    ledger_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(NodeBase):
    """An app's API key at its own node: only a SHA-256 hash of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    client: Mapped[str] = mapped_column(String(200), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the key may call: "*", "{provider org}/*" or "{provider org}/{resource}", space-
    # separated; and the key that replaced it when it was rotated.
    scopes: Mapped[str] = mapped_column(String(2000), default="*")
    replaced_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
