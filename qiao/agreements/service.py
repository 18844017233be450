"""Sharing requests and agreements on the hub (docs/agreements.md).

The workflow follows 国务院令第809号《政务数据共享条例》: an unconditional (无条件共享) resource is
subscribed to at once; a conditional (有条件共享) one is applied for, with purposes and a legal
basis, and the provider's approver approves — possibly narrowing — or refuses with a reason,
within 10 working days on the official calendar; a non-shared (不予共享) one is reachable only
through an emergency agreement a platform administrator arranges.

Every approval, subscription and arrangement makes an agreement document (``document.py``)
that the hub signs with both organizations' keys, which it holds for them encrypted at rest.
A stored document never changes; its state (active, suspended, revoked) is kept beside it.
Every change of an agreement is an administrative event (for the ledger) and bumps the global
configuration's serial in the same transaction, so the nodes pick it up on their next fetch.

Every method takes the acting ``Principal`` first and checks it, so the API and the commands
enforce the same rules; ``now`` may be passed to freeze the clock (tests).

An agreement binds two organizations, so the people who make one act for them: a person of
the consuming organization applies or subscribes, a person of the providing organization
approves, refuses or renews. Here the platform administrator's "every role everywhere"
(``Principal.has``) does not apply — otherwise one administrator alone could sign an agreement
on two departments' behalf. The platform keeps what it needs to run the exchange: arranging
emergency agreements, and suspending, resuming and revoking any agreement to stop sharing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qiao import problems
from qiao.agreements import calendar
from qiao.agreements.document import (
    CST,
    FIELD_PATH,
    PURPOSE_CODE,
    Agreement,
    AgreementState,
    Conditions,
    Masking,
    MaskRule,
    Operations,
    Party,
    RateLimit,
    ResourceRef,
    TimeWindow,
)
from qiao.agreements.models import (
    AgreementEvent,
    AgreementRecord,
    OrganizationAgreementKey,
    SharingRequest,
)
from qiao.canonical import canonical_json, sha256_hex
from qiao.catalog.spec import DataElement, Format, Item, ResourceStatus, SharingType
from qiao.db import utcnow
from qiao.identity.roles import Principal, Role
from qiao.problems import Problem
from qiao.registry.models import App, Organization
from qiao.registry.services import RegistryService, current_actor

# Who may ask for a resource on the consumer's side (docs/agreements.md, "Who applies").
APPLICANTS = (Role.ORG_ADMIN, Role.APP_DEVELOPER, Role.DATA_STEWARD, Role.APPROVER)
# Who decides on the provider's side, suspends, resumes and renews.
DECIDERS = (Role.APPROVER, Role.ORG_ADMIN)
REPLY_WORKING_DAYS = 10  # 国务院令第809号: the default reply deadline
MAX_VALID_DAYS = 3650
# An expired agreement stays in the configuration a while, so a node can answer "expired"
# rather than "no agreement" to a caller whose agreement has just run out.
EXPIRED_KEPT = timedelta(days=30)
WRAPPING_KEY_FILE = "agreement-keys.secret"
# Personal items masked by default, by the format of their data element.
DEFAULT_MASKS = {
    Format.CITIZEN_ID: MaskRule.CITIZEN_ID,
    Format.MOBILE: MaskRule.MOBILE,
    Format.PLATE: MaskRule.PLATE,
}
RequestStatus = Literal["submitted", "approved", "refused", "withdrawn"]


def default_masking(
    items: Iterable[Item], elements: Mapping[str, DataElement]
) -> dict[str, Masking]:
    """The masking an agreement gets unless its terms say otherwise: each item whose data
    element is personal information (PIPL art. 4) and whose format has a rule in
    ``DEFAULT_MASKS``, by that rule. An item whose element is not in ``elements`` (not
    published) gets none. The console's masked sample shows the same (qiao/console/sample.py)."""
    masking: dict[str, Masking] = {}
    for item in items:
        element = elements.get(item.element)
        if element is None or not element.personal or element.format is None:
            continue
        rule = DEFAULT_MASKS.get(element.format)
        if rule is not None:
            masking[item.field] = Masking(rule=rule)
    return masking


def _member(who: Principal, roles: tuple[Role, ...], org: str) -> bool:
    """Whether ``who`` is a person of ``org`` holding one of ``roles``, by their own
    organization and roles: no platform-administrator wildcard (see the module docstring)."""
    return who.org is not None and who.org.upper() == org and bool(who.roles.intersection(roles))


def _need_member(who: Principal, roles: tuple[Role, ...], org: str, what: str) -> None:
    if not _member(who, roles, org):
        raise Problem(
            problems.FORBIDDEN,
            f"{what} needs a person of organization {org} holding the role "
            + " or ".join(r.value for r in roles)
            + f"; {who.subject} is not"
            + (" (a platform administrator does not act for one)" if who.is_platform_admin else ""),
        )


def _new_id(prefix: str, chars: int) -> str:
    raw = base64.b32encode(secrets.token_bytes((chars * 5 + 7) // 8)).decode().lower()
    return prefix + raw[:chars]


# --- what applicants and approvers send -----------------------------------------------------
class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Application(_In):
    """An application for a conditional resource (共享申请)."""

    purposes: tuple[str, ...] = Field(min_length=1, max_length=20)
    purpose_text: str = Field("", max_length=2000, description="What the data is needed for")
    legal_basis: str = Field("", max_length=2000, description="The law or rule that allows it")
    fields: tuple[str, ...] | None = Field(
        None, max_length=200, description="Fields wanted; omit for every item of the resource"
    )
    methods: tuple[str, ...] = Field(("GET",), min_length=1, max_length=6)
    paths: tuple[str, ...] = Field(("**",), min_length=1, max_length=50)
    apps: tuple[str, ...] = Field((), max_length=50, description="Calling apps; empty: all")
    valid_days: int = Field(365, ge=1, le=MAX_VALID_DAYS)
    daily_quota: int | None = Field(None, ge=1, le=1_000_000_000)
    rate_limit: RateLimit | None = None
    end_user_required: bool = False


class Narrowing(_In):
    """What an approver changes on approval: each given term must be narrower than the
    application's (``None``: as applied). Masking rules, time windows and the end-user
    condition may be added."""

    fields: tuple[str, ...] | None = Field(None, max_length=200)
    methods: tuple[str, ...] | None = Field(None, min_length=1, max_length=6)
    paths: tuple[str, ...] | None = Field(None, min_length=1, max_length=50)
    apps: tuple[str, ...] | None = Field(None, max_length=50)
    purposes: tuple[str, ...] | None = Field(None, min_length=1, max_length=20)
    valid_days: int | None = Field(None, ge=1, le=MAX_VALID_DAYS)
    daily_quota: int | None = Field(None, ge=1, le=1_000_000_000)
    rate_limit: RateLimit | None = None
    masking: dict[str, Masking] = Field(default_factory=dict, max_length=200)
    time_windows: tuple[TimeWindow, ...] = Field((), max_length=20)
    end_user_required: bool = False


# --- what the service answers ----------------------------------------------------------------
@dataclass(frozen=True)
class RequestView:
    id: str
    consumer_org: str
    applicant: str
    provider_org: str
    resource: str
    resource_version: int
    resource_sha256: str
    application: Application
    status: str
    submitted_at: datetime
    deadline: datetime
    deadline_provisional: bool
    decided_at: datetime | None
    decided_by: str
    reason: str
    agreement_id: str
    days_left: int | None  # working days to the deadline while undecided
    overdue: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "consumer_org": self.consumer_org,
            "applicant": self.applicant,
            "provider_org": self.provider_org,
            "resource": self.resource,
            "resource_version": self.resource_version,
            "resource_sha256": self.resource_sha256,
            "application": self.application.model_dump(mode="json"),
            "status": self.status,
            "submitted_at": self.submitted_at.isoformat(),
            "deadline": self.deadline.astimezone(CST).isoformat(),
            "deadline_provisional": self.deadline_provisional,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "agreement_id": self.agreement_id or None,
            "days_left": self.days_left,
            "overdue": self.overdue,
        }


@dataclass(frozen=True)
class AgreementView:
    id: str
    document: dict[str, Any]
    document_text: str  # the canonical bytes as stored, as text
    sha256: str
    signatures: dict[str, str]
    state: AgreementState
    reason: str
    provider_org: str
    consumer_org: str
    resource: str
    request_id: str
    renews: str
    valid_until: datetime
    emergency_only: bool
    created_at: datetime
    changed_at: datetime
    expired: bool

    @property
    def status(self) -> str:
        """What a person sees: the state, or "expired" once an unrevoked one has run out."""
        if self.expired and self.state is not AgreementState.REVOKED:
            return "expired"
        return self.state.value

    def agreement(self) -> Agreement:
        return Agreement.model_validate(self.document)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "status": self.status,
            "reason": self.reason,
            "provider_org": self.provider_org,
            "consumer_org": self.consumer_org,
            "resource": self.resource,
            "request": self.request_id or None,
            "renews": self.renews or None,
            "valid_until": self.valid_until.astimezone(CST).isoformat(),
            "emergency_only": self.emergency_only,
            "created_at": self.created_at.isoformat(),
            "changed_at": self.changed_at.isoformat(),
            "sha256": self.sha256,
            "signatures": dict(self.signatures),
            "document": self.document,
        }


@dataclass(frozen=True)
class _Target:
    """The resource an agreement is about, as the catalog (or only the registry) knows it."""

    ref: ResourceRef
    fields: tuple[str, ...] | None  # every item; None when the catalog does not describe it
    default_masking: dict[str, Masking]


# --- organizations' agreement keys ------------------------------------------------------------
class AgreementKeys:
    """The organizations' Ed25519 agreement keys, held by the hub on their behalf until a node
    holds them (issue 4). Private keys are encrypted with AES-GCM (NIST SP 800-38D) under a
    32-byte wrapping key in the hub's data directory; the organization code is the associated
    data, binding each ciphertext to its row."""

    def __init__(self, registry: RegistryService) -> None:
        self.registry = registry
        self._wrap: AESGCM | None = None

    def _wrapping_key(self) -> AESGCM:
        if self._wrap is not None:
            return self._wrap
        data_dir = self.registry.keys.data_dir
        if data_dir is None:
            raise Problem(problems.INTERNAL, "the hub has no data directory for its key files")
        path = Path(data_dir) / WRAPPING_KEY_FILE
        if not path.exists():
            _create_secret(path)
        raw = path.read_bytes()
        if len(raw) != 32:
            raise Problem(problems.INTERNAL, f"{path} does not hold a 32-byte key")
        self._wrap = AESGCM(raw)
        return self._wrap

    def ensure(self, orgs: Iterable[str]) -> None:
        """Create the missing keys, each in its own transaction (a concurrent creator wins
        and its key is kept: keys are never replaced)."""
        for org in orgs:
            with self.registry._sessions() as s:
                if s.get(OrganizationAgreementKey, org) is not None:
                    continue
            key = Ed25519PrivateKey.generate()
            nonce = secrets.token_bytes(12)
            sealed = self._wrapping_key().encrypt(nonce, key.private_bytes_raw(), org.encode())
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            try:
                with self.registry._sessions.begin() as s:
                    s.add(
                        OrganizationAgreementKey(
                            org_code=org,
                            public_key=base64.b64encode(public).decode(),
                            private_key_encrypted=base64.b64encode(nonce + sealed).decode(),
                        )
                    )
                    # The public half goes on the ledger too, so that a key replaced in the
                    # database is caught by `qiao ledger verify` (qiao.agreements.audit).
                    self.registry._event(
                        s,
                        "agreement-key.create",
                        org=org,
                        public_key=base64.b64encode(public).decode(),
                    )
            except IntegrityError:
                continue

    def private_key(self, s: Session, org: str) -> Ed25519PrivateKey:
        row = s.get(OrganizationAgreementKey, org)
        if row is None:
            raise Problem(problems.INTERNAL, f"no agreement key for {org}")
        sealed = base64.b64decode(row.private_key_encrypted)
        raw = self._wrapping_key().decrypt(sealed[:12], sealed[12:], org.encode())
        return Ed25519PrivateKey.from_private_bytes(raw)

    def published(self, s: Session) -> dict[str, str]:
        rows = s.execute(
            select(OrganizationAgreementKey.org_code, OrganizationAgreementKey.public_key)
        )
        return {org: key for org, key in rows}


def _create_secret(path: Path) -> None:
    """Write 32 random bytes to ``path`` with mode 0600, unless another process did first:
    written beside it and hard-linked into place, so nobody ever reads half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- narrowing rules ----------------------------------------------------------------------
def _field_covered(path: str, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None:
        return True
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[]") for p in allowed)


def _segments(pattern: str) -> list[str]:
    return [] if pattern == "" else pattern.split("/")


def _path_covered(narrow: str, wide: str) -> bool:
    """Whether every path matching the pattern ``narrow`` also matches ``wide`` ("*" one
    segment, a final "**" any rest, also nothing; document.Operations)."""
    n, w = _segments(narrow), _segments(wide)
    for i, ws in enumerate(w):
        if ws == "**":
            return True
        if i >= len(n) or n[i] == "**":
            return False
        if ws != "*" and ws != n[i]:
            return False
    return len(n) == len(w)


def _rate_within(narrow: RateLimit, wide: RateLimit) -> bool:
    return (
        narrow.requests <= wide.requests
        and narrow.requests * wide.per_seconds <= wide.requests * narrow.per_seconds
    )


def _as_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _check_item(path: str, target: _Target, what: str) -> None:
    if target.fields is None:
        if not FIELD_PATH.match(path):
            raise Problem(
                problems.VALIDATION,
                f"{what} {path!r}: names joined by '.', '[]' for arrays",
                {"field": path},
            )
        return
    if path not in target.fields:
        raise Problem(
            problems.VALIDATION,
            f"{what} {path!r}: {target.ref.code} has no item of that name; name one of its "
            "items exactly: " + ", ".join(target.fields),
            {"field": path, "allowed": list(target.fields)},
        )


class AgreementService:
    def __init__(
        self, registry: RegistryService, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.registry = registry
        self._sessions = registry._sessions
        self.clock = clock
        self.keys = AgreementKeys(registry)

    def _now(self, now: datetime | None) -> datetime:
        return now if now is not None else self.clock()

    # --- the resource and the parties ----------------------------------------------------
    def _target(self, provider: str, code: str) -> _Target:
        from qiao.catalog.service import CatalogService

        catalog = CatalogService(self.registry)
        try:
            published = catalog.get(provider, code)
        except Problem as p:
            if p.kind is not problems.NOT_FOUND:
                raise
            with self._sessions() as s:
                self.registry._resource(s, provider, code)  # 404 when not registered either
            # 有条件共享 by default: a resource the catalog does not describe can be applied
            # for, never subscribed to (docs/agreements.md, "Sharing types").
            ref = ResourceRef(code=code, version=0, sha256="", sharing_type=SharingType.CONDITIONAL)
            return _Target(ref, None, {})
        spec = published.spec
        if published.status is ResourceStatus.DEPRECATED:
            raise Problem(problems.CONFLICT, f"{provider}/{code} is deprecated (废止)")
        elements: dict[str, DataElement] = {}
        for item in spec.items:
            try:
                elements[item.element] = catalog.get_element(item.element)[0]
            except Problem:
                continue
        masking = default_masking(spec.items, elements)
        ref = ResourceRef(
            code=code,
            version=published.version,
            sha256=published.sha256,
            sharing_type=spec.sharing_type,
        )
        return _Target(ref, tuple(item.field for item in spec.items), masking)

    @staticmethod
    def _consumer(who: Principal, what: str) -> str:
        """The consuming organization: the caller's own, and the caller one of its people."""
        org = (who.org or "").upper()
        if not org:
            raise Problem(
                problems.FORBIDDEN,
                f"{what} needs a person of the consuming organization holding the role "
                + " or ".join(r.value for r in APPLICANTS)
                + f"; {who.subject} acts for no organization",
            )
        _need_member(who, APPLICANTS, org, what)
        return org

    def _party(self, s: Session, org: str, apps: tuple[str, ...] = ()) -> Party:
        row = s.get(Organization, org)
        if row is None:
            raise Problem(problems.NOT_FOUND, f"no organization {org}")
        if apps:
            known = set(s.scalars(select(App.code).where(App.org_code == org)))
            unknown = sorted(set(apps) - known)
            if unknown:
                raise Problem(problems.VALIDATION, f"{org} has no app {', '.join(unknown)}")
        return Party(org=org, name=row.name, apps=apps)

    @staticmethod
    def _check_fields(fields: tuple[str, ...] | None, target: _Target) -> tuple[str, ...] | None:
        """The projection asked for: every item by default.

        A catalogued resource's records are flat: each field is exactly one item's name.
        A path under an item (``driver_mobile[]``, ``plate.x``) would name data the item's
        default masking, keyed by the item's name, does not cover, so it is refused. For a
        resource the catalog does not describe, any well-formed path is accepted."""
        if fields is None:
            return target.fields
        for path in fields:
            _check_item(path, target, "field")
        return tuple(dict.fromkeys(fields))

    @staticmethod
    def _check_masking(masking: dict[str, Masking], target: _Target) -> None:
        """An approver's masking rules name items of a catalogued resource (items are never
        objects, so never a path under one)."""
        for path in masking:
            _check_item(path, target, "masking of field")

    @staticmethod
    def _not_non_shared(target: _Target, provider: str, *, now: bool = False) -> None:
        if target.ref.sharing_type is SharingType.NONE:
            raise Problem(
                problems.RESOURCE_NOT_SHARED,
                f"{provider}/{target.ref.code} is {'now ' if now else ''}不予共享: only an "
                "emergency agreement reaches it",
            )

    @staticmethod
    def _not_self(provider: str, consumer: str) -> None:
        if provider == consumer:
            raise Problem(
                problems.VALIDATION, "an organization does not need an agreement with itself"
            )

    # --- subscribing (无条件共享) ---------------------------------------------------------
    def subscribe(
        self,
        who: Principal,
        provider_org: str,
        code: str,
        *,
        purposes: tuple[str, ...],
        apps: tuple[str, ...] = (),
        fields: tuple[str, ...] | None = None,
        valid_days: int = 365,
        end_user_required: bool = False,
        now: datetime | None = None,
    ) -> AgreementView:
        """Subscribe to an unconditional resource for the caller's organization: the agreement
        is made and signed at once."""
        consumer_org = self._consumer(who, "subscribing")
        provider = provider_org.upper()
        self._not_self(provider, consumer_org)
        target = self._target(provider, code)
        kind = target.ref.sharing_type
        self._not_non_shared(target, provider)
        if kind is not SharingType.UNCONDITIONAL:
            raise Problem(
                problems.CONFLICT,
                f"{provider}/{code} is 有条件共享: apply for it "
                "(qiao request, POST /api/v1/requests)",
            )
        if not 1 <= valid_days <= MAX_VALID_DAYS:
            raise Problem(problems.VALIDATION, f"valid_days is 1 to {MAX_VALID_DAYS}")
        projection = self._check_fields(fields, target)
        when = self._now(now)
        self.keys.ensure((provider, consumer_org))
        with self._sessions.begin() as s:
            doc = self._document(
                s,
                provider=provider,
                consumer=consumer_org,
                apps=tuple(apps),
                target=target,
                fields=projection,
                masking=self._masking_for(target, projection, {}),
                purposes=tuple(purposes),
                operations=Operations(),
                valid_days=valid_days,
                conditions=Conditions(end_user_required=end_user_required),
                now=when,
            )
            return self._store(s, doc, "agreement.subscribe", now=when)

    # --- applying (有条件共享) -------------------------------------------------------------
    def apply(
        self,
        who: Principal,
        provider_org: str,
        code: str,
        application: Application,
        *,
        now: datetime | None = None,
    ) -> RequestView:
        """Apply for a conditional resource for the caller's organization; the reply deadline
        starts counting."""
        consumer_org = self._consumer(who, "applying")
        provider = provider_org.upper()
        self._not_self(provider, consumer_org)
        target = self._target(provider, code)
        kind = target.ref.sharing_type
        if kind is SharingType.NONE:
            raise Problem(
                problems.RESOURCE_NOT_SHARED,
                f"{provider}/{code} is 不予共享 (国务院令第809号): it cannot be requested; only "
                "an emergency agreement arranged by the platform administrator reaches it",
            )
        if kind is SharingType.UNCONDITIONAL:
            raise Problem(
                problems.CONFLICT,
                f"{provider}/{code} is 无条件共享: subscribe to it instead "
                f"(POST /api/v1/resources/{provider}/{code}/subscribe)",
            )
        if not application.purpose_text.strip():
            raise Problem(problems.VALIDATION, "say what the data is needed for (purpose_text)")
        if not application.legal_basis.strip():
            raise Problem(
                problems.LEGAL_BASIS_MISSING, "an application needs its legal basis (legal_basis)"
            )
        for purpose in application.purposes:
            self._check_purpose(purpose)
        try:
            Operations(methods=application.methods, paths=application.paths)
        except ValidationError as exc:
            raise Problem(problems.VALIDATION, _message(exc)) from None
        fields = self._check_fields(application.fields, target)
        application = application.model_copy(update={"fields": fields})
        when = self._now(now)
        deadline, known = calendar.reply_deadline(when, REPLY_WORKING_DAYS)
        rate = application.rate_limit
        with self._sessions.begin() as s:
            self._party(s, consumer_org, application.apps)
            row = SharingRequest(
                id=_new_id("req-", 12),
                consumer_org=consumer_org,
                applicant=who.subject,
                provider_org=provider,
                resource=code,
                resource_version=target.ref.version,
                resource_sha256=target.ref.sha256,
                purposes=json.dumps(list(application.purposes)),
                purpose_text=application.purpose_text.strip(),
                legal_basis=application.legal_basis.strip(),
                fields=json.dumps(list(fields) if fields is not None else None),
                methods=json.dumps(list(application.methods)),
                paths=json.dumps(list(application.paths)),
                apps=json.dumps(list(application.apps)),
                valid_days=application.valid_days,
                daily_quota=application.daily_quota,
                rate_requests=rate.requests if rate else None,
                rate_per_seconds=rate.per_seconds if rate else None,
                end_user_required=application.end_user_required,
                status="submitted",
                submitted_at=when,
                deadline=deadline,
                deadline_provisional=not known,
                decided_by="",
                reason="",
                agreement_id="",
            )
            s.add(row)
            s.flush()
            self.registry._event(
                s,
                "request.submit",
                request=row.id,
                consumer=consumer_org,
                provider=provider,
                resource=code,
                deadline=deadline.isoformat(),
            )
            return self._request_view(row, when)

    @staticmethod
    def _check_purpose(purpose: str) -> None:
        if not re.match(PURPOSE_CODE, purpose):
            raise Problem(
                problems.VALIDATION, f"purpose {purpose!r} is not a code like 'traffic-enforcement'"
            )

    # --- deciding ----------------------------------------------------------------------
    def _request_row(self, s: Session, request_id: str) -> SharingRequest:
        row = s.get(SharingRequest, request_id)
        if row is None:
            raise Problem(problems.NOT_FOUND, f"no sharing request {request_id}")
        return row

    def _decide(
        self, s: Session, who: Principal, request_id: str, status: str, when: datetime, reason: str
    ) -> SharingRequest:
        row = self._request_row(s, request_id)
        _need_member(who, DECIDERS, row.provider_org, "deciding a request")
        # The conditional UPDATE makes "decided once" hold under concurrent decisions too.
        done = s.execute(
            update(SharingRequest)
            .where(SharingRequest.id == request_id, SharingRequest.status == "submitted")
            .values(status=status, decided_at=when, decided_by=who.subject, reason=reason)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            s.refresh(row)
            raise Problem(problems.REQUEST_DECIDED, f"{request_id} is already {row.status}")
        s.refresh(row)
        return row

    def approve(
        self,
        who: Principal,
        request_id: str,
        narrowing: Narrowing | None = None,
        *,
        now: datetime | None = None,
    ) -> tuple[RequestView, AgreementView]:
        """Approve a request, possibly narrowed; the agreement is made and signed."""
        narrowing = narrowing or Narrowing()
        when = self._now(now)
        with self._sessions() as s:
            pending = self._request_row(s, request_id)
            _need_member(who, DECIDERS, pending.provider_org, "approving a request")
            if pending.status != "submitted":
                raise Problem(problems.REQUEST_DECIDED, f"{request_id} is already {pending.status}")
            provider, consumer, code = pending.provider_org, pending.consumer_org, pending.resource
            applied = self._application(pending)
        target = self._target(provider, code)
        self._not_non_shared(target, provider, now=True)  # reclassified since the application
        if narrowing.fields is not None:
            self._check_fields(narrowing.fields, target)
        self._check_masking(narrowing.masking, target)
        terms = _narrow(applied, narrowing)
        # Checked again against the current version: its items may have changed since.
        fields = self._check_fields(terms.fields, target)
        self.keys.ensure((provider, consumer))
        with self._sessions.begin() as s:
            row = self._decide(s, who, request_id, "approved", when, "")
            doc = self._document(
                s,
                provider=provider,
                consumer=consumer,
                apps=terms.apps,
                target=target,
                fields=fields,
                masking=self._masking_for(target, fields, narrowing.masking),
                purposes=terms.purposes,
                operations=Operations(methods=terms.methods, paths=terms.paths),
                valid_days=terms.valid_days,
                rate_limit=terms.rate_limit,
                daily_quota=terms.daily_quota,
                conditions=Conditions(
                    end_user_required=terms.end_user_required,
                    time_windows=narrowing.time_windows,
                ),
                request=request_id,
                now=when,
            )
            row.agreement_id = doc.id
            self.registry._event(s, "request.approve", request=request_id, agreement=doc.id)
            agreement = self._store(s, doc, "agreement.create", now=when)
            return self._request_view(row, when), agreement

    def refuse(
        self, who: Principal, request_id: str, reason: str, *, now: datetime | None = None
    ) -> RequestView:
        """Refuse a request; 国务院令第809号 requires the reason to be given."""
        when = self._now(now)
        with self._sessions.begin() as s:
            row = self._request_row(s, request_id)
            _need_member(who, DECIDERS, row.provider_org, "refusing a request")
            if not reason.strip():
                raise Problem(problems.REASON_REQUIRED, "a refusal must give its reason")
            row = self._decide(s, who, request_id, "refused", when, reason.strip())
            self.registry._event(s, "request.refuse", request=request_id, reason=reason.strip())
            return self._request_view(row, when)

    def withdraw(
        self, who: Principal, request_id: str, *, now: datetime | None = None
    ) -> RequestView:
        """The applicant's organization takes its undecided request back."""
        when = self._now(now)
        # Like applying: a person of the applicant organization (a platform administrator
        # does not act for one). Checked before the lookup too, so that someone who could
        # withdraw no request cannot probe which request ids exist.
        if who.org is None or not who.roles.intersection(APPLICANTS):
            _need_member(who, APPLICANTS, who.org or "(none)", "withdrawing a request")
        with self._sessions.begin() as s:
            row = self._request_row(s, request_id)
            _need_member(who, APPLICANTS, row.consumer_org, "withdrawing a request")
            done = s.execute(
                update(SharingRequest)
                .where(SharingRequest.id == request_id, SharingRequest.status == "submitted")
                .values(status="withdrawn", decided_at=when, decided_by=who.subject)
            )
            s.refresh(row)
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise Problem(problems.REQUEST_DECIDED, f"{request_id} is already {row.status}")
            self.registry._event(s, "request.withdraw", request=request_id)
            return self._request_view(row, when)

    # --- reading requests ------------------------------------------------------------------
    def get_request(
        self, who: Principal, request_id: str, *, now: datetime | None = None
    ) -> RequestView:
        with self._sessions() as s:
            row = self._request_row(s, request_id)
            if not (who.is_platform_admin or who.org in (row.provider_org, row.consumer_org)):
                raise Problem(
                    problems.FORBIDDEN, "only the parties to a request and the platform see it"
                )
            return self._request_view(row, self._now(now))

    def list_requests(
        self,
        who: Principal,
        *,
        box: Literal["inbox", "mine"] | None = None,
        status: str | None = None,
        overdue: bool | None = None,
        now: datetime | None = None,
    ) -> list[RequestView]:
        """Requests to the caller's organization (inbox), from it (mine), or both; the
        platform administrator sees every request. Oldest deadline first."""
        when = self._now(now)
        q = select(SharingRequest).order_by(SharingRequest.deadline, SharingRequest.id)
        if not who.is_platform_admin or who.org:
            if who.org is None:
                return []
            by_provider = SharingRequest.provider_org == who.org
            by_consumer = SharingRequest.consumer_org == who.org
            where = {"inbox": by_provider, "mine": by_consumer, None: or_(by_provider, by_consumer)}
            q = q.where(where[box])
        if status:
            q = q.where(SharingRequest.status == status)
        if overdue is not None:
            late = (SharingRequest.status == "submitted") & (SharingRequest.deadline < when)
            q = q.where(late if overdue else ~late)
        with self._sessions() as s:
            return [self._request_view(r, when) for r in s.scalars(q.limit(1000))]

    @staticmethod
    def _application(row: SharingRequest) -> Application:
        rate = (
            RateLimit(requests=row.rate_requests, per_seconds=row.rate_per_seconds)
            if row.rate_requests and row.rate_per_seconds
            else None
        )
        fields = json.loads(row.fields)
        return Application(
            purposes=_as_tuple(row.purposes),
            purpose_text=row.purpose_text,
            legal_basis=row.legal_basis,
            fields=tuple(fields) if fields is not None else None,
            methods=_as_tuple(row.methods),
            paths=_as_tuple(row.paths),
            apps=_as_tuple(row.apps),
            valid_days=row.valid_days,
            daily_quota=row.daily_quota,
            rate_limit=rate,
            end_user_required=row.end_user_required,
        )

    def _request_view(self, row: SharingRequest, now: datetime) -> RequestView:
        pending = row.status == "submitted"
        return RequestView(
            id=row.id,
            consumer_org=row.consumer_org,
            applicant=row.applicant,
            provider_org=row.provider_org,
            resource=row.resource,
            resource_version=row.resource_version,
            resource_sha256=row.resource_sha256,
            application=self._application(row),
            status=row.status,
            submitted_at=row.submitted_at,
            deadline=row.deadline,
            deadline_provisional=row.deadline_provisional,
            decided_at=row.decided_at,
            decided_by=row.decided_by,
            reason=row.reason,
            agreement_id=row.agreement_id,
            days_left=calendar.working_days_left(row.deadline, now) if pending else None,
            overdue=pending and now > row.deadline,
        )

    # --- the agreement document ------------------------------------------------------------
    @staticmethod
    def _masking_for(
        target: _Target, fields: tuple[str, ...] | None, chosen: dict[str, Masking]
    ) -> dict[str, Masking]:
        """The default masking of the projected personal items, overridden and extended by
        the approver's rules."""
        masking = {
            path: rule
            for path, rule in target.default_masking.items()
            if _field_covered(path, fields)
        }
        masking.update(chosen)
        return masking

    def _document(
        self,
        s: Session,
        *,
        provider: str,
        consumer: str,
        apps: tuple[str, ...],
        target: _Target,
        fields: tuple[str, ...] | None,
        masking: dict[str, Masking],
        purposes: tuple[str, ...],
        operations: Operations,
        valid_days: int,
        conditions: Conditions,
        now: datetime,
        rate_limit: RateLimit | None = None,
        daily_quota: int | None = None,
        request: str = "",
        renews: str = "",
    ) -> Agreement:
        start = now.astimezone(CST).replace(microsecond=0)
        try:
            return Agreement(
                id=_new_id("agr-", 16),
                instance=self.registry.instance,
                provider=self._party(s, provider),
                consumer=self._party(s, consumer, apps),
                resource=target.ref,
                request=request,
                renews=renews,
                operations=operations,
                fields=fields,
                masking=masking,
                purposes=tuple(dict.fromkeys(purposes)),
                valid_from=start,
                valid_until=start + timedelta(days=valid_days),
                rate_limit=rate_limit,
                daily_quota=daily_quota,
                conditions=conditions,
                issued_at=start,
            )
        except ValidationError as exc:
            raise Problem(problems.VALIDATION, _message(exc)) from None

    def _store(self, s: Session, doc: Agreement, action: str, *, now: datetime) -> AgreementView:
        """Sign the document with both parties' keys and keep it, as signed, for good."""
        document = doc.to_json()
        text = canonical_json(document)
        digest = sha256_hex(text)
        row = AgreementRecord(
            id=doc.id,
            document=text.decode(),
            sha256=digest,
            provider_signature=doc.sign(self.keys.private_key(s, doc.provider.org)),
            consumer_signature=doc.sign(self.keys.private_key(s, doc.consumer.org)),
            state=AgreementState.ACTIVE.value,
            state_reason="",
            provider_org=doc.provider.org,
            consumer_org=doc.consumer.org,
            resource=doc.resource.code,
            request_id=doc.request,
            renews=doc.renews,
            valid_until=doc.valid_until,
            emergency_only=doc.conditions.emergency_only,
            created_at=now,
            changed_at=now,
        )
        s.add(row)
        s.flush()
        s.add(AgreementEvent(agreement_id=doc.id, action=action, actor=current_actor.get(), at=now))
        # The hash goes to the ledger with the admin event; the serial bump makes every node
        # fetch the configuration that carries the new agreement.
        self.registry._bump(
            s,
            action,
            agreement=doc.id,
            sha256=digest,
            provider=doc.provider.org,
            consumer=doc.consumer.org,
            resource=doc.resource.code,
            request=doc.request,
            renews=doc.renews,
        )
        return self._agreement_view(row, now)

    # --- reading agreements ----------------------------------------------------------------
    def _agreement_row(self, s: Session, agreement_id: str) -> AgreementRecord:
        row = s.get(AgreementRecord, agreement_id)
        if row is None:
            raise Problem(problems.NOT_FOUND, f"no agreement {agreement_id}")
        return row

    @staticmethod
    def _may_read(who: Principal, row: AgreementRecord) -> bool:
        return who.is_platform_admin or who.org in (row.provider_org, row.consumer_org)

    @staticmethod
    def _agreement_view(row: AgreementRecord, now: datetime) -> AgreementView:
        return AgreementView(
            id=row.id,
            document=json.loads(row.document),
            document_text=row.document,
            sha256=row.sha256,
            signatures={"provider": row.provider_signature, "consumer": row.consumer_signature},
            state=AgreementState(row.state),
            reason=row.state_reason,
            provider_org=row.provider_org,
            consumer_org=row.consumer_org,
            resource=row.resource,
            request_id=row.request_id,
            renews=row.renews,
            valid_until=row.valid_until,
            emergency_only=row.emergency_only,
            created_at=row.created_at,
            changed_at=row.changed_at,
            expired=now >= row.valid_until,
        )

    def get(
        self, who: Principal, agreement_id: str, *, now: datetime | None = None
    ) -> AgreementView:
        with self._sessions() as s:
            row = self._agreement_row(s, agreement_id)
            if not self._may_read(who, row):
                raise Problem(
                    problems.FORBIDDEN, "only the parties to an agreement and the platform see it"
                )
            return self._agreement_view(row, self._now(now))

    def list(
        self,
        who: Principal,
        *,
        provider: str | None = None,
        consumer: str | None = None,
        resource: str | None = None,
        state: str | None = None,
        now: datetime | None = None,
    ) -> list[AgreementView]:
        """The agreements the caller's organization is a party to (every agreement for the
        platform administrator); ``state`` may also be "expired". Newest first."""
        when = self._now(now)
        q = select(AgreementRecord).order_by(AgreementRecord.created_at.desc(), AgreementRecord.id)
        if not who.is_platform_admin:
            if who.org is None:
                return []
            q = q.where(
                or_(
                    AgreementRecord.provider_org == who.org, AgreementRecord.consumer_org == who.org
                )
            )
        if provider:
            q = q.where(AgreementRecord.provider_org == provider.upper())
        if consumer:
            q = q.where(AgreementRecord.consumer_org == consumer.upper())
        if resource:
            q = q.where(AgreementRecord.resource == resource)
        with self._sessions() as s:
            views = [self._agreement_view(r, when) for r in s.scalars(q.limit(1000))]
        return [v for v in views if state is None or v.status == state]

    def document(self, who: Principal, agreement_id: str) -> tuple[bytes, str]:
        """The signed document exactly as stored (canonical JSON) and its SHA-256."""
        view = self.get(who, agreement_id)
        return view.document_text.encode(), view.sha256

    def odrl(self, who: Principal, agreement_id: str, base_url: str) -> dict[str, Any]:
        """The agreement as an ODRL 2.2 policy (JSON-LD)."""
        from qiao.agreements import odrl

        return odrl.to_odrl(self.get(who, agreement_id).agreement(), base_url)

    # --- the lifecycle ---------------------------------------------------------------------
    def _change(
        self,
        who: Principal,
        agreement_id: str,
        *,
        allowed: Callable[[Principal, AgreementRecord], bool],
        denial: str,
        from_states: tuple[AgreementState, ...],
        to_state: AgreementState,
        action: str,
        reason: str,
        reason_required: bool,
        now: datetime | None,
    ) -> AgreementView:
        when = self._now(now)
        with self._sessions.begin() as s:
            row = self._agreement_row(s, agreement_id)
            if not allowed(who, row):
                raise Problem(problems.FORBIDDEN, denial)
            if reason_required and not reason.strip():
                raise Problem(problems.REASON_REQUIRED, f"to {action.split('.')[-1]} give a reason")
            if AgreementState(row.state) not in from_states:
                raise Problem(
                    problems.AGREEMENT_STATE,
                    f"{agreement_id} is {row.state}; only a "
                    + " or ".join(st.value for st in from_states)
                    + f" agreement can be {to_state.value}"
                    + ("" if to_state is not AgreementState.ACTIVE else " again"),
                )
            row.state = to_state.value
            row.state_reason = reason.strip()
            row.changed_at = when
            s.add(
                AgreementEvent(
                    agreement_id=row.id,
                    action=action,
                    actor=current_actor.get(),
                    reason=reason.strip(),
                    at=when,
                )
            )
            self.registry._bump(
                s, action, agreement=row.id, sha256=row.sha256, reason=reason.strip()
            )
            return self._agreement_view(row, when)

    @staticmethod
    def _provider_decider(who: Principal, row: AgreementRecord) -> bool:
        if row.emergency_only:
            return who.is_platform_admin  # arranged by the platform, changed by it
        return who.has(*DECIDERS, org=row.provider_org)

    def suspend(
        self, who: Principal, agreement_id: str, reason: str, *, now: datetime | None = None
    ) -> AgreementView:
        """暂停: the agreement stops working until resumed."""
        return self._change(
            who,
            agreement_id,
            allowed=self._provider_decider,
            denial="the provider's approver or org-admin suspends an agreement",
            from_states=(AgreementState.ACTIVE,),
            to_state=AgreementState.SUSPENDED,
            action="agreement.suspend",
            reason=reason,
            reason_required=True,
            now=now,
        )

    def resume(
        self, who: Principal, agreement_id: str, reason: str = "", *, now: datetime | None = None
    ) -> AgreementView:
        return self._change(
            who,
            agreement_id,
            allowed=self._provider_decider,
            denial="the provider's approver or org-admin resumes an agreement",
            from_states=(AgreementState.SUSPENDED,),
            to_state=AgreementState.ACTIVE,
            action="agreement.resume",
            reason=reason,
            reason_required=False,
            now=now,
        )

    def revoke(
        self, who: Principal, agreement_id: str, reason: str, *, now: datetime | None = None
    ) -> AgreementView:
        """撤销: final. Either party's org-admin, or the provider's approver."""

        def allowed(w: Principal, row: AgreementRecord) -> bool:
            return w.has(Role.ORG_ADMIN, org=row.consumer_org) or w.has(
                *DECIDERS, org=row.provider_org
            )

        return self._change(
            who,
            agreement_id,
            allowed=allowed,
            denial="either party's org-admin or the provider's approver revokes an agreement",
            from_states=(AgreementState.ACTIVE, AgreementState.SUSPENDED),
            to_state=AgreementState.REVOKED,
            action="agreement.revoke",
            reason=reason,
            reason_required=True,
            now=now,
        )

    @staticmethod
    def _renewer(who: Principal, row: AgreementRecord) -> bool:
        """A renewal is a new agreement signed for both parties, so (unlike suspending) it is
        made by a person of the provider, as an approval is; the platform renews only what it
        arranged."""
        if row.emergency_only:
            return who.is_platform_admin
        return _member(who, DECIDERS, row.provider_org)

    def renew(
        self,
        who: Principal,
        agreement_id: str,
        valid_days: int | None = None,
        *,
        now: datetime | None = None,
    ) -> AgreementView:
        """A new agreement with the same terms on the resource as the catalog describes it
        now, and a fresh validity, naming the one it renews; the old one stays in force until
        it expires.

        The resource is resolved as for an application (current version and sharing type;
        a deprecated one refused; a 不予共享 one only for an emergency agreement), and the
        current version's default masking applies to the projection. The renewal lasts as
        long as the original at most: ``valid_days`` (default: the original's length) is
        capped at it, for a longer term needs a new application the provider decides on."""
        when = self._now(now)
        if valid_days is not None and not 1 <= valid_days <= MAX_VALID_DAYS:
            raise Problem(problems.VALIDATION, f"valid_days is 1 to {MAX_VALID_DAYS}")
        with self._sessions() as s:
            old = self._agreement_row(s, agreement_id)
            if not self._renewer(who, old):
                raise Problem(
                    problems.FORBIDDEN,
                    "a person of the provider holding the role approver or org-admin renews an "
                    f"agreement (organization {old.provider_org}); {who.subject} is not",
                )
            if old.state != AgreementState.ACTIVE.value:
                raise Problem(
                    problems.AGREEMENT_STATE,
                    f"{agreement_id} is {old.state}; only an active (or expired) agreement "
                    "can be renewed",
                )
            terms = Agreement.model_validate_json(old.document)
        provider = terms.provider.org
        target = self._target(provider, terms.resource.code)
        if not terms.conditions.emergency_only:
            self._not_non_shared(target, provider, now=True)
        fields = self._check_fields(terms.fields, target)
        original = terms.valid_until - terms.valid_from
        days = max(1, original.days)
        days = min(valid_days, days) if valid_days is not None else days
        self.keys.ensure((provider, terms.consumer.org))
        start = when.astimezone(CST).replace(microsecond=0)
        try:
            doc = terms.model_copy(
                update={
                    "id": _new_id("agr-", 16),
                    "resource": target.ref,
                    "fields": fields,
                    "masking": self._masking_for(target, fields, dict(terms.masking)),
                    "renews": terms.id,
                    "valid_from": start,
                    "valid_until": start + timedelta(days=days),
                    "issued_at": start,
                }
            )
            doc = Agreement.model_validate(doc.to_json())
        except ValidationError as exc:
            raise Problem(problems.VALIDATION, _message(exc)) from None
        with self._sessions.begin() as s:
            s.add(
                AgreementEvent(
                    agreement_id=agreement_id,
                    action="agreement.renewed",
                    actor=current_actor.get(),
                    reason=f"renewed by {doc.id}",
                    at=when,
                )
            )
            return self._store(s, doc, "agreement.renew", now=when)

    # --- emergency agreements (应急) -------------------------------------------------------
    def arrange_emergency(
        self,
        who: Principal,
        provider_org: str,
        code: str,
        consumer_org: str,
        purposes: tuple[str, ...],
        *,
        fields: tuple[str, ...] | None = None,
        valid_days: int = 365,
        now: datetime | None = None,
    ) -> AgreementView:
        """A pre-arranged emergency-only agreement: usable only while a declared emergency
        covers it. The only way to an agreement on a 不予共享 resource."""
        if not who.is_platform_admin:
            raise Problem(problems.FORBIDDEN, "only a platform administrator arranges these")
        provider, consumer = provider_org.upper(), consumer_org.upper()
        self._not_self(provider, consumer)
        if not 1 <= valid_days <= MAX_VALID_DAYS:
            raise Problem(problems.VALIDATION, f"valid_days is 1 to {MAX_VALID_DAYS}")
        target = self._target(provider, code)
        projection = self._check_fields(fields, target)
        when = self._now(now)
        self.keys.ensure((provider, consumer))
        with self._sessions.begin() as s:
            doc = self._document(
                s,
                provider=provider,
                consumer=consumer,
                apps=(),
                target=target,
                fields=projection,
                masking=self._masking_for(target, projection, {}),
                purposes=tuple(purposes),
                operations=Operations(),
                valid_days=valid_days,
                conditions=Conditions(emergency_only=True),
                now=when,
            )
            return self._store(s, doc, "agreement.arrange-emergency", now=when)

    # --- the global configuration's share --------------------------------------------------
    def for_configuration(self, now: datetime | None = None) -> dict[str, Any]:
        """The global configuration's share: ``{"agreements": [...], "agreement_keys":
        {org: base64 Ed25519 public key}}`` (docs/agreements.md, "In the configuration").

        Active and suspended agreements (until a while after they expire) and revoked ones
        still within their validity, so a node can tell "revoked" from "no agreement"."""
        when = self._now(now)
        with self._sessions() as s:
            rows = list(
                s.scalars(
                    select(AgreementRecord)
                    .where(AgreementRecord.valid_until > when - EXPIRED_KEPT)
                    .order_by(AgreementRecord.id)
                )
            )
            keys = self.keys.published(s)
        return {
            "agreements": [
                {
                    "agreement": json.loads(r.document),
                    "sha256": r.sha256,
                    "signatures": {
                        "provider": r.provider_signature,
                        "consumer": r.consumer_signature,
                    },
                    "state": r.state,
                    "reason": r.state_reason,
                }
                for r in rows
                if r.state != AgreementState.REVOKED.value or r.valid_until > when
            ],
            "agreement_keys": keys,
        }


@dataclass(frozen=True)
class _Terms:
    fields: tuple[str, ...] | None
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    apps: tuple[str, ...]
    purposes: tuple[str, ...]
    valid_days: int
    daily_quota: int | None
    rate_limit: RateLimit | None
    end_user_required: bool


def _narrow(applied: Application, n: Narrowing) -> _Terms:
    """The approved terms: the application, narrowed. Anything wider is refused
    (docs/agreements.md: an approval may narrow, never widen)."""
    wider: list[str] = []
    fields = applied.fields
    if n.fields is not None:
        wider += [f"field {f!r}" for f in n.fields if not _field_covered(f, applied.fields)]
        fields = tuple(dict.fromkeys(n.fields))
    methods = applied.methods
    if n.methods is not None:
        wider += [f"method {m}" for m in n.methods if m not in applied.methods]
        methods = n.methods
    paths = applied.paths
    if n.paths is not None:
        wider += [
            f"path {p!r}" for p in n.paths if not any(_path_covered(p, w) for w in applied.paths)
        ]
        paths = n.paths
    apps = applied.apps
    if n.apps is not None:
        if applied.apps and not n.apps:
            wider.append("every app (the application named its apps)")
        wider += [f"app {a}" for a in n.apps if applied.apps and a not in applied.apps]
        apps = n.apps
    purposes = applied.purposes
    if n.purposes is not None:
        wider += [f"purpose {p}" for p in n.purposes if p not in applied.purposes]
        purposes = n.purposes
    valid_days = applied.valid_days
    if n.valid_days is not None:
        if n.valid_days > applied.valid_days:
            wider.append(f"{n.valid_days} days (applied for {applied.valid_days})")
        valid_days = n.valid_days
    quota = applied.daily_quota
    if n.daily_quota is not None:
        if applied.daily_quota is not None and n.daily_quota > applied.daily_quota:
            wider.append(f"a daily quota of {n.daily_quota} (applied for {applied.daily_quota})")
        quota = n.daily_quota
    rate = applied.rate_limit
    if n.rate_limit is not None:
        if applied.rate_limit is not None and not _rate_within(n.rate_limit, applied.rate_limit):
            wider.append("a higher rate limit")
        rate = n.rate_limit
    if wider:
        raise Problem(
            problems.APPROVAL_WIDENS,
            "the approval asks for more than the application: " + ", ".join(wider),
            {"wider": wider},
        )
    return _Terms(
        fields=fields,
        methods=methods,
        paths=paths,
        apps=apps,
        purposes=purposes,
        valid_days=valid_days,
        daily_quota=quota,
        rate_limit=rate,
        end_user_required=applied.end_user_required or n.end_user_required,
    )


def _message(exc: ValidationError) -> str:
    return "; ".join(
        (".".join(str(p) for p in e["loc"]) or "document")
        + ": "
        + e["msg"].removeprefix("Value error, ")
        for e in exc.errors()
    )


def parse(model: type[Application] | type[Narrowing], data: Any) -> Any:
    """An Application or Narrowing from JSON values; errors as one 422 problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(problems.VALIDATION, _message(exc)) from None


__all__ = [
    "AgreementKeys",
    "AgreementService",
    "AgreementView",
    "Application",
    "Narrowing",
    "RequestView",
    "parse",
]
