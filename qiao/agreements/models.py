"""Tables of the sharing workflow: organizations' agreement keys, sharing requests, agreements
and the history of each agreement's state (docs/agreements.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow


class OrganizationAgreementKey(HubBase):
    """The Ed25519 key the hub holds on an organization's behalf to sign its agreements.

    The private half is stored encrypted (AES-GCM under the hub's wrapping key file, the
    organization's code as associated data, so a row copied to another organization does not
    decrypt); the public half is published in the global configuration."""

    __tablename__ = "organization_agreement_keys"

    org_code: Mapped[str] = mapped_column(ForeignKey("organizations.code"), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))  # base64 of the raw 32 bytes
    private_key_encrypted: Mapped[str] = mapped_column(Text)  # base64(nonce || ciphertext)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SharingRequest(HubBase):
    """共享申请: a consumer organization's application for a conditional resource."""

    __tablename__ = "sharing_requests"
    __table_args__ = (
        Index("ix_sharing_requests_provider_org_status", "provider_org", "status"),
        Index("ix_sharing_requests_consumer_org_status", "consumer_org", "status"),
    )

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    consumer_org: Mapped[str] = mapped_column(ForeignKey("organizations.code"))
    applicant: Mapped[str] = mapped_column(String(200))
    provider_org: Mapped[str] = mapped_column(ForeignKey("organizations.code"))
    resource: Mapped[str] = mapped_column(String(64))
    resource_version: Mapped[int] = mapped_column(Integer)
    resource_sha256: Mapped[str] = mapped_column(String(64), default="")
    purposes: Mapped[str] = mapped_column(Text)  # JSON list of purpose codes
    purpose_text: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    fields: Mapped[str] = mapped_column(Text)  # JSON list, or JSON null (uncatalogued)
    methods: Mapped[str] = mapped_column(Text)  # JSON list
    paths: Mapped[str] = mapped_column(Text)  # JSON list
    apps: Mapped[str] = mapped_column(Text)  # JSON list; [] = every app of the consumer
    valid_days: Mapped[int] = mapped_column(Integer)
    daily_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_per_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    end_user_required: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # submitted|approved|refused|withdrawn
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline_provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_by: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    agreement_id: Mapped[str] = mapped_column(String(48), default="")


class AgreementRecord(HubBase):
    """共享协议: a signed agreement document as stored (never changed) and its state."""

    __tablename__ = "agreements"
    __table_args__ = (
        Index("ix_agreements_provider_org_resource", "provider_org", "resource"),
        Index("ix_agreements_consumer_org", "consumer_org"),
        Index("ix_agreements_valid_until", "valid_until"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    document: Mapped[str] = mapped_column(Text)  # RFC 8785 canonical JSON, as signed
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    provider_signature: Mapped[str] = mapped_column(String(100))
    consumer_signature: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))  # active|suspended|revoked
    state_reason: Mapped[str] = mapped_column(Text, default="")
    provider_org: Mapped[str] = mapped_column(ForeignKey("organizations.code"))
    consumer_org: Mapped[str] = mapped_column(ForeignKey("organizations.code"))
    resource: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(20), default="")
    renews: Mapped[str] = mapped_column(String(48), default="")
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    emergency_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgreementEvent(HubBase):
    """One change of an agreement (created, suspended, resumed, revoked, renewed): who, when,
    why. The admin-event outbox carries the same facts to the ledger; this table answers
    "what happened to this agreement" without reading the ledger."""

    __tablename__ = "agreement_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agreement_id: Mapped[str] = mapped_column(ForeignKey("agreements.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
