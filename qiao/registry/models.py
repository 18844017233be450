"""Tables of the registry: organizations, apps, nodes, certificates, tokens, resources."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from qiao.db import HubBase, UTCDateTime, utcnow


class Organization(HubBase):
    """A department, enterprise or bank, identified by its unified social credit code."""

    __tablename__ = "organizations"

    code: Mapped[str] = mapped_column(String(18), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(32), default="government")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    apps: Mapped[list[App]] = relationship(back_populates="organization", order_by="App.code")


class App(HubBase):
    """A subsystem of an organization that calls other organizations' resources."""

    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("org_code", "code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_code: Mapped[str] = mapped_column(ForeignKey("organizations.code"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    organization: Mapped[Organization] = relationship(back_populates="apps")


class Node(HubBase):
    """A department's gateway, known by name and the address other nodes call."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    org_code: Mapped[str] = mapped_column(ForeignKey("organizations.code"), index=True)
    address: Mapped[str] = mapped_column(String(300))
    # The node's ledger witness: its C2SP verifier key (cosignature type) and where the hub
    # sends checkpoints to be cosigned. Empty for a node that does not witness.
    witness_key: Mapped[str] = mapped_column(String(300), default="")
    witness_url: Mapped[str] = mapped_column(String(300), default="")
    # The node's event key: base64 X25519 public key that providers seal events to (HPKE,
    # RFC 9180; qiao.events.envelope). Empty for a node enrolled before event streams until
    # it registers one.
    events_key: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Certificate(HubBase):
    """A node certificate issued by the hub's CA; revocation is recorded here."""

    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    pem: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revocation_reason: Mapped[str] = mapped_column(String(200), default="")


class EnrollmentToken(HubBase):
    """A one-time secret an operator hands to an organization so its node can enroll."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_code: Mapped[str] = mapped_column(ForeignKey("organizations.code"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    used_by_node: Mapped[str] = mapped_column(String(64), default="")


class Resource(HubBase):
    """A resource an organization provides through its node (the catalog issue extends it)."""

    __tablename__ = "resources"
    __table_args__ = (UniqueConstraint("org_code", "code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_code: Mapped[str] = mapped_column(ForeignKey("organizations.code"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OperatorToken(HubBase):
    """A bearer token for the hub's API (stored as a SHA-256 hash).

    Without ``org_code`` it is an operator token: the platform administrator's. With one, it
    is an access token for automation (a steward's catalog pipeline, say) holding ``roles``
    (comma-separated) in that organization only."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    label: Mapped[str] = mapped_column(String(100))
    org_code: Mapped[str | None] = mapped_column(String(18), nullable=True)
    roles: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # None: made before tokens had an expiry (hub migration 0015), valid until revoked.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RegistryRevision(HubBase):
    """One row whose counter rises with every registry change: the configuration serial."""

    __tablename__ = "registry_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[int] = mapped_column(Integer, default=1)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AdminEvent(HubBase):
    """An administrative action on the hub, on its way to the ledger (the admin outbox)."""

    __tablename__ = "admin_events"
    __table_args__ = (Index("ix_admin_events_ledger_index", "ledger_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ledger_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
