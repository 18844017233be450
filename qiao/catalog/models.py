"""Tables of the catalog: code lists, data elements, resources and their immutable versions.

The registry's ``resources`` row (org, code, name, allow-list) stays the exchange-level entry
the nodes route by; ``catalog_resources`` describes it and ``catalog_resource_versions`` keeps
every published version's specification as canonical JSON (RFC 8785) with its SHA-256, so an
agreement can cite ``(org, code, version, hash)`` and find the same bytes years later.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow

# Codes sort the same on both databases: byte order ("C") on PostgreSQL, as SQLite's BINARY.
CodeString = String(64).with_variant(String(64, collation="C"), "postgresql")
OrgString = String(18).with_variant(String(18, collation="C"), "postgresql")


class CatalogCodeList(HubBase):
    """代码集. ``owner_org`` NULL = a platform standard (e.g. GB/T 2261.1)."""

    __tablename__ = "catalog_code_lists"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identifier: Mapped[str] = mapped_column(String(64), unique=True)
    owner_org: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.code"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    document: Mapped[str] = mapped_column(Text)  # canonical JSON of the CodeList
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogCode(HubBase):
    """One code of a code list, so that a value can be looked up without parsing JSON."""

    __tablename__ = "catalog_codes"
    __table_args__ = (UniqueConstraint("code_list_id", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code_list_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_code_lists.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    value: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    label_en: Mapped[str] = mapped_column(String(200), default="")


class CatalogDataElement(HubBase):
    """数据元. ``owner_org`` NULL = a platform standard; else the organization's own."""

    __tablename__ = "catalog_data_elements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identifier: Mapped[str] = mapped_column(String(64), unique=True)
    owner_org: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.code"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    code_list: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    document: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogResource(HubBase):
    """A catalogued resource: its latest version's searchable fields and its status.

    ``search_text`` is the lower-cased concatenation of every searched field (name, abstract,
    keywords, provider name, item and data element names); both databases index it for
    substring search (``qiao.catalog.search``)."""

    __tablename__ = "catalog_resources"
    __table_args__ = (
        UniqueConstraint("org_code", "code"),
        Index("ix_catalog_resources_order", "org_code", "code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_id: Mapped[int] = mapped_column(
        ForeignKey("resources.id", ondelete="CASCADE"), unique=True
    )
    org_code: Mapped[str] = mapped_column(OrgString)
    code: Mapped[str] = mapped_column(CodeString)
    name: Mapped[str] = mapped_column(String(200))
    provider_name: Mapped[str] = mapped_column(String(200), default="")
    sharing_type: Mapped[str] = mapped_column(String(16), index=True)
    classification: Mapped[str] = mapped_column(String(16), index=True)
    sharing_methods: Mapped[str] = mapped_column(String(64))  # ",service,events,"
    status: Mapped[str] = mapped_column(String(16), index=True)
    latest_version: Mapped[int] = mapped_column(Integer)
    search_text: Mapped[str] = mapped_column(Text)
    short_grams: Mapped[str] = mapped_column(Text, default="")  # qiao.catalog.search
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogResourceVersion(HubBase):
    """One published version of a resource specification; never updated once written."""

    __tablename__ = "catalog_resource_versions"
    __table_args__ = (UniqueConstraint("catalog_resource_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    catalog_resource_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_resources.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[str] = mapped_column(Text)  # canonical JSON (RFC 8785) of the spec
    sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_by: Mapped[str] = mapped_column(String(200), default="")


class CatalogElementUse(HubBase):
    """Which data elements a resource version binds (items and parameters): what makes an
    element "in use" and therefore frozen."""

    __tablename__ = "catalog_element_uses"
    __table_args__ = (UniqueConstraint("version_id", "element"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_resource_versions.id", ondelete="CASCADE")
    )
    element: Mapped[str] = mapped_column(String(64), index=True)
