"""The agreement document (共享协议): the machine-enforced contract between two organizations.

An agreement is a JSON document that names both parties, the resource and the catalog version
it was agreed on, the operations allowed, the field projection and per-field masking, the
purposes, the validity window, rate limit and daily quota, and conditions. Its identity is the
SHA-256 of its RFC 8785 canonical form; each party signs that same form with its organization's
Ed25519 key (RFC 8032). The hub keeps the keys on the organizations' behalf and publishes their
public halves in the signed global configuration, so both nodes can check an agreement
themselves: one changed byte anywhere and neither the hash nor either signature verifies.

The document's state (active, suspended, revoked) is not part of it: a signed agreement is
immutable, and a suspension or revocation is a fact the hub publishes beside it.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, time, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qiao.canonical import canonical_json, sha256_hex
from qiao.catalog.spec import SharingType

KIND = "qiao-agreement/1"
# Days, time windows and the daily quota are counted in China Standard Time (UTC+8, no DST).
CST = timezone(timedelta(hours=8), "CST")

AGREEMENT_ID = r"^agr-[0-9a-z]{4,40}$"
PURPOSE_CODE = r"^[a-z0-9][a-z0-9.-]{0,63}$"
# A field path inside one record: item names joined by dots; "[]" after a name means "each
# element of this array", e.g. "owner.name", "violations[].plate".
FIELD_PATH = re.compile(r"^[a-z][a-z0-9_]{0,63}(\[\])?(\.[a-z][a-z0-9_]{0,63}(\[\])?){0,7}$")
# An operation path pattern relative to the resource: segments separated by "/", "*" matches
# one segment, a final "**" matches any rest (also nothing); "" is the resource itself.
PATH_PATTERN = re.compile(r"^(\*\*|[^/?#*]{1,200}|\*)?(/(\*\*|[^/?#*]{1,200}|\*))*$")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class AgreementState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # 暂停: may be resumed
    REVOKED = "revoked"  # 撤销: final


class MaskRule(StrEnum):
    """脱敏规则: what the provider node does to one field before it leaves (docs/agreements.md)."""

    CITIZEN_ID = "citizen-id"  # keep the first 6 and the last 4 characters
    MOBILE = "mobile"  # keep the first 3 and the last 4 digits
    NAME = "name"  # keep the surname, star the given name
    ADDRESS = "address"  # keep down to the district (区/县)
    PLATE = "plate"  # keep the province, the issuing-authority letter and the last character
    BANK_CARD = "bank-card"  # keep the first 6 and the last 4 digits
    EMAIL = "email"  # keep the first character of the local part and the domain
    PSEUDONYM = "pseudonym"  # keyed HMAC: the same value gives the same pseudonym per agreement
    BIRTH_YEAR = "birth-year"  # a date (or a citizen ID's birth date) generalized to its year
    AGE_BAND = "age-band"  # an age generalized to a band, e.g. 30-39 (param: width, default 10)
    SUPPRESS = "suppress"  # removed from the record


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Party(_Doc):
    org: str = Field(pattern=r"^[0-9A-Z]{18}$")  # USCC (GB 32100)
    name: str = Field(min_length=1, max_length=200)
    # The consumer's apps (their codes, as registered at the hub) that may call under the
    # agreement; empty = every app of the organization.
    apps: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], ...] = ()


class ResourceRef(_Doc):
    code: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    version: int = Field(ge=0)  # the catalog version agreed on (0: not catalogued)
    sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")  # of that catalog version
    sharing_type: SharingType


class Operations(_Doc):
    methods: tuple[str, ...] = ("GET",)
    paths: tuple[str, ...] = ("**",)
    topics: tuple[str, ...] = ()  # event streams (the events issue)
    datasets: tuple[str, ...] = ()

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for m in value:
            if m not in METHODS:
                raise ValueError(f"method {m!r} is not one of {', '.join(METHODS)}")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not PATH_PATTERN.match(path) or "**/" in path or path.startswith("/"):
                raise ValueError(
                    f"path pattern {path!r}: segments without a leading '/', '*' for one "
                    "segment, '**' only at the end"
                )
        return value


class Masking(_Doc):
    rule: MaskRule
    params: dict[str, int | str] = Field(default_factory=dict)


class RateLimit(_Doc):
    requests: int = Field(ge=1, le=1_000_000)
    per_seconds: int = Field(ge=1, le=3600)


def _wall_clock_time(schema: dict[str, Any]) -> None:
    # JSON Schema's "time" format is RFC 3339 full-time, whose offset is required; a window's
    # times are China Standard Time and carry none (TimeWindow._local).
    schema.pop("format", None)
    schema["pattern"] = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$"
    schema["description"] = "hh:mm[:ss] China Standard Time, without an offset"


class TimeWindow(_Doc):
    """Calls allowed on these weekdays (1 = Monday … 7 = Sunday, ISO 8601) between start and
    end, China Standard Time; end after start (a window does not cross midnight)."""

    days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    start: time = Field(time(0, 0), json_schema_extra=_wall_clock_time)
    end: time = Field(time(23, 59, 59), json_schema_extra=_wall_clock_time)

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        # The window is China Standard Time by definition; a time with its own offset could
        # not be compared with the wall-clock time the policy checks (nor with a time without
        # one: Python refuses to order them).
        if value.tzinfo is not None:
            raise ValueError("window times are China Standard Time: give them without an offset")
        return value

    @model_validator(mode="after")
    def _order(self) -> Self:
        if not self.days or any(d < 1 or d > 7 for d in self.days):
            raise ValueError("days are 1 (Monday) to 7 (Sunday)")
        if self.end <= self.start:
            raise ValueError("a time window ends after it starts")
        return self


class Conditions(_Doc):
    end_user_required: bool = False  # X-Qiao-User must name the person acting
    time_windows: tuple[TimeWindow, ...] = ()  # empty = any time
    emergency_only: bool = False  # usable only while a declared emergency covers it


class Agreement(_Doc):
    kind: Literal["qiao-agreement/1"] = "qiao-agreement/1"
    id: str = Field(pattern=AGREEMENT_ID)
    instance: str = Field(pattern=r"^[A-Za-z0-9-]{1,32}$")
    provider: Party
    consumer: Party
    resource: ResourceRef
    request: str = ""  # the sharing request it answers ("" for a subscription)
    renews: str = ""  # the agreement it renews
    operations: Operations = Operations()
    # The projection: which fields of each record may leave the provider node; None means
    # every field (only for a resource the catalog does not describe).
    fields: tuple[str, ...] | None
    masking: dict[str, Masking] = Field(default_factory=dict)
    purposes: tuple[str, ...] = Field(min_length=1)
    valid_from: datetime
    valid_until: datetime
    rate_limit: RateLimit | None = None
    daily_quota: int | None = Field(None, ge=1)
    conditions: Conditions = Conditions()
    issued_at: datetime

    @field_validator("purposes")
    @classmethod
    def _purposes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not re.match(PURPOSE_CODE, code):
                raise ValueError(f"purpose {code!r} is not a code like 'traffic-enforcement'")
        return value

    @model_validator(mode="after")
    def _rules(self) -> Self:
        for when in (self.valid_from, self.valid_until, self.issued_at):
            if when.tzinfo is None:
                raise ValueError("times carry their UTC offset (RFC 3339)")
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until is after valid_from")
        if self.provider.org == self.consumer.org:
            raise ValueError("an organization does not need an agreement with itself")
        paths = list(self.fields or ()) + list(self.masking)
        for path in paths:
            if not FIELD_PATH.match(path):
                raise ValueError(f"field path {path!r}: names joined by '.', '[]' for arrays")
        if self.fields is not None:
            for path in self.masking:
                if not _covered(path, self.fields):
                    raise ValueError(f"masking of {path!r}, which is not in the projection")
        # 国务院令第809号: a non-shared resource is reachable only in a declared emergency.
        if self.resource.sharing_type is SharingType.NONE and not self.conditions.emergency_only:
            raise ValueError("an agreement on a 不予共享 resource must be emergency-only")
        return self

    # --- identity and signatures ---------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The document as JSON values (what is hashed, signed and published)."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        return digest(self.to_json())

    def sign(self, key: Ed25519PrivateKey) -> str:
        return sign(key, self.to_json())

    def in_force(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_until


def _covered(path: str, projection: tuple[str, ...]) -> bool:
    """A path is in the projection if it or one of its ancestors is listed."""
    return any(
        path == p or path.startswith(p + ".") or path.startswith(p + "[]") for p in projection
    )


def signed_bytes(document: dict[str, Any]) -> bytes:
    """What each party signs: the canonical form of the kind and the document together, so
    an agreement signature can never pass for a signature on something else."""
    return canonical_json({"kind": KIND, "document": document})


def digest(document: dict[str, Any]) -> str:
    """The agreement's identity: SHA-256 (hex) of its RFC 8785 form. This is what the ledger
    records and what a receipt or a party's signature pins."""
    return sha256_hex(canonical_json(document))


def sign(key: Ed25519PrivateKey, document: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(signed_bytes(document))).decode()


class AgreementInvalid(ValueError):
    """An agreement that does not check out, with exactly what did not."""


def verify(
    document: dict[str, Any],
    sha256: str,
    signatures: dict[str, str],
    keys: dict[str, Ed25519PublicKey],
) -> Agreement:
    """Check a published agreement: its hash, then the provider's and the consumer's
    signatures with their organizations' keys, then its shape. Raises ``AgreementInvalid``."""
    try:
        actual = digest(document)
    except (TypeError, ValueError) as exc:
        raise AgreementInvalid(f"the agreement has no canonical JSON form: {exc}") from exc
    if actual != sha256:
        raise AgreementInvalid(f"the agreement's SHA-256 is {actual}, not the published {sha256}")
    message = signed_bytes(document)
    for side in ("provider", "consumer"):
        party = document.get(side)
        org = party.get("org") if isinstance(party, dict) else None
        key = keys.get(org) if isinstance(org, str) else None
        if key is None:
            raise AgreementInvalid(f"no agreement key is published for the {side} {org!r}")
        try:
            raw = base64.b64decode(signatures.get(side, ""), validate=True)
            key.verify(raw, message)
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise AgreementInvalid(f"the {side}'s signature ({org}) does not verify") from exc
    try:
        return Agreement.model_validate(document)
    except ValueError as exc:
        raise AgreementInvalid(f"the agreement is malformed: {exc}") from exc
