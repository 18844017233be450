"""Emergency mode (应急): two platform administrators open pre-arranged emergency agreements.

《政务数据共享条例》(国务院令第809号) keeps non-shared data out of reach except in a declared
emergency. An emergency here is a two-person act: one platform administrator declares it
(scope, reason, duration) and a *different* one confirms it; only then does it start. While it
runs, agreements whose conditions say ``emergency_only`` are usable for the resources and
consumer organizations in its scope. Every exchange made under it is noted for review after
the fact, and it ends by itself when it expires: nodes compare ``expires_at`` with their own
clock, so expiry needs no action on the hub.

Status is computed, never stored, so it cannot go stale:

- ``proposed``: declared, waiting for the second administrator;
- ``lapsed``: not confirmed within ``emergency_confirm_seconds``;
- ``active``: confirmed and not yet expired or ended;
- ``expired``: its time ran out;
- ``ended``: a platform administrator ended it (or withdrew the proposal) early.
"""

from __future__ import annotations

import base64
import builtins
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from qiao import problems
from qiao.db import HubBase, UTCDateTime, session_factory, utcnow
from qiao.identity.models import User
from qiao.identity.roles import Principal, Role
from qiao.problems import Problem
from qiao.registry.services import RegistryService, acting, check_uscc

DEFAULT_MAX_HOURS = 72
DEFAULT_CONFIRM_SECONDS = 3600
MAX_REASON = 2000
MAX_NOTE = 2000
EMERGENCY_ID = re.compile(r"^em-[a-z2-7]{12}$")
_RESOURCE_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Emergency(HubBase):
    """A declared emergency. Scope lists are JSON arrays: ``resources`` names at least one
    resource; an empty ``organizations`` means every consumer organization."""

    __tablename__ = "emergencies"
    # The configuration asks for the emergencies in force on every new serial.
    __table_args__ = (Index("ix_emergencies_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    resources: Mapped[str] = mapped_column(Text, default="[]")  # ["{org}/{code}", ...]
    organizations: Mapped[str] = mapped_column(Text, default="[]")  # consumer USCCs
    hours: Mapped[int] = mapped_column(Integer)
    declared_by: Mapped[str] = mapped_column(String(200))
    declared_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # start
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    end_reason: Mapped[str] = mapped_column(Text, default="")


class EmergencyAccess(HubBase):
    """One exchange admitted under an emergency, reported by a node through the ledger, and
    its review afterwards."""

    __tablename__ = "emergency_accesses"
    __table_args__ = (UniqueConstraint("emergency_id", "node", "exchange_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    emergency_id: Mapped[str] = mapped_column(ForeignKey("emergencies.id"), index=True)
    exchange_id: Mapped[str] = mapped_column(String(100))
    node: Mapped[str] = mapped_column(String(64))
    ledger_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provider_org: Mapped[str] = mapped_column(String(18))
    resource: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="")


class EmergencyStatus(StrEnum):
    PROPOSED = "proposed"
    ACTIVE = "active"
    ENDED = "ended"
    EXPIRED = "expired"
    LAPSED = "lapsed"


@dataclass(frozen=True)
class EmergencyView:
    """What the API and the commands show of an emergency."""

    id: str
    status: EmergencyStatus
    reason: str
    resources: tuple[str, ...]
    organizations: tuple[str, ...]
    hours: int
    declared_by: str
    declared_at: datetime
    confirm_before: datetime  # the proposal lapses then
    confirmed_by: str | None
    confirmed_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str

    def to_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "status": self.status.value,
            "reason": self.reason,
            "resources": list(self.resources),
            "organizations": list(self.organizations),
            "hours": self.hours,
            "declared_by": self.declared_by,
            "declared_at": self.declared_at.isoformat(),
            "confirm_before": self.confirm_before.isoformat(),
            "confirmed_by": self.confirmed_by,
            "starts_at": iso(self.confirmed_at),
            "expires_at": iso(self.expires_at),
            "ended_at": iso(self.ended_at),
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
        }


@dataclass(frozen=True)
class AccessView:
    emergency_id: str
    exchange_id: str
    node: str
    ledger_index: int | None
    provider_org: str
    resource: str
    client: str
    recorded_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "emergency_id": self.emergency_id,
            "exchange_id": self.exchange_id,
            "node": self.node,
            "ledger_index": self.ledger_index,
            "provider_org": self.provider_org,
            "resource": self.resource,
            "client": self.client,
            "recorded_at": self.recorded_at.isoformat(),
            "reviewed": self.reviewed_at is not None,
            "reviewed_by": self.reviewed_by,
            "reviewed_at": self.reviewed_at.isoformat() if self.reviewed_at else None,
            "review_note": self.review_note,
        }


def new_emergency_id() -> str:
    # 60 random bits in RFC 4648 base32 (lowercase): unguessable and easy to read out on a call.
    return "em-" + base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]


def _client_org(client: str) -> str:
    """The organization of ``{instance}/{org}/{app}``, or "" when it is not of that shape."""
    parts = client.split("/")
    return parts[1].upper() if len(parts) >= 2 else ""


class EmergencyService:
    """Declaring, confirming and ending emergencies, and reviewing what was done under them.

    Only ``registry`` is needed: the limits default to the HubSettings defaults, so the
    registry can build one to fill the global configuration."""

    def __init__(
        self,
        registry: RegistryService,
        *,
        max_hours: int = DEFAULT_MAX_HOURS,
        confirm_seconds: int = DEFAULT_CONFIRM_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.max_hours = max_hours
        self.confirm_window = timedelta(seconds=confirm_seconds)
        self.clock = clock
        self._sessions = session_factory(registry.engine)

    # --- the two-person declaration ------------------------------------------------------
    def declare(
        self,
        who: Principal,
        *,
        resources: Sequence[str] = (),
        organizations: Sequence[str] = (),
        reason: str,
        duration_hours: int,
        now: datetime | None = None,
    ) -> EmergencyView:
        """Propose an emergency; it starts when a second platform administrator confirms.

        ``resources`` must name at least one resource: an emergency opens the emergency-only
        agreements of the resources it names, never all of them at once (an empty scope
        would open every 不予共享 resource that has one). ``organizations`` empty means every
        consumer organization of those resources' emergency agreements."""
        _need_platform_admin(who, "declare an emergency")
        reason = reason.strip()
        if not reason:
            raise Problem(problems.REASON_REQUIRED, "an emergency needs a reason")
        if len(reason) > MAX_REASON:
            raise Problem(problems.VALIDATION, f"the reason is longer than {MAX_REASON} characters")
        if isinstance(duration_hours, bool) or not 1 <= duration_hours <= self.max_hours:
            raise Problem(
                problems.VALIDATION,
                f"an emergency lasts 1 to {self.max_hours} hours, not {duration_hours}",
            )
        scope_resources = self._check_resources(resources)
        scope_orgs = self._check_organizations(organizations)
        if not scope_resources:
            raise Problem(
                problems.VALIDATION,
                "an emergency names the resources it opens ({org}/{code}, at least one)",
            )
        now = now or self.clock()
        row = Emergency(
            id=new_emergency_id(),
            reason=reason,
            resources=json.dumps(scope_resources),
            organizations=json.dumps(scope_orgs),
            hours=duration_hours,
            declared_by=who.subject,
            declared_at=now,
            end_reason="",
        )
        with acting(who.subject), self._sessions.begin() as s:
            s.add(row)
            # A proposal changes nothing nodes act on, so no new configuration yet.
            self.registry._event(
                s,
                "emergency.declare",
                emergency=row.id,
                reason=reason,
                resources=scope_resources,
                organizations=scope_orgs,
                hours=duration_hours,
            )
            s.flush()
            return self._view(row, now)

    def confirm(
        self, who: Principal, emergency_id: str, now: datetime | None = None
    ) -> EmergencyView:
        """The second platform administrator's confirmation: the emergency starts now and
        every node learns of it with the next configuration."""
        _need_platform_admin(who, "confirm an emergency")
        now = now or self.clock()
        with acting(who.subject), self._sessions.begin() as s:
            row = self._row(s, emergency_id)
            status = self._status(row, now)
            if status is not EmergencyStatus.PROPOSED:
                raise Problem(problems.CONFLICT, f"emergency {row.id} is {status.value}")
            if row.declared_by == who.subject:
                raise Problem(
                    problems.SECOND_ADMINISTRATOR_REQUIRED,
                    f"{who.subject} declared emergency {row.id}; another platform "
                    "administrator confirms it",
                )
            if who.subject.startswith("user:"):
                # An account the declarer created is the declarer's second pair of hands, not
                # a second administrator (one person could otherwise make one and confirm).
                created_by = s.execute(
                    select(User.created_by).where(User.username == who.subject[5:])
                ).scalar_one_or_none()
                if created_by and created_by == row.declared_by:
                    raise Problem(
                        problems.SECOND_ADMINISTRATOR_REQUIRED,
                        f"{who.subject} was created by {row.declared_by}, who declared "
                        f"emergency {row.id}; an administrator they did not create confirms it",
                    )
            expires = now + timedelta(hours=row.hours)
            # The conditional UPDATE makes a race of two confirmations (or a confirmation and
            # a withdrawal) end with one winner, on SQLite too, where FOR UPDATE is a no-op.
            done = s.execute(
                update(Emergency)
                .where(
                    Emergency.id == row.id,
                    Emergency.confirmed_at.is_(None),
                    Emergency.ended_at.is_(None),
                )
                .values(confirmed_by=who.subject, confirmed_at=now, expires_at=expires)
                .execution_options(synchronize_session=False)
            ).rowcount
            if done != 1:
                raise Problem(problems.CONFLICT, f"emergency {row.id} was decided meanwhile")
            self.registry._bump(
                s,
                "emergency.confirm",
                emergency=row.id,
                declared_by=row.declared_by,
                starts_at=now.isoformat(),
                expires_at=expires.isoformat(),
            )
            s.flush()
            s.refresh(row)
            return self._view(row, now)

    def end(
        self, who: Principal, emergency_id: str, reason: str, now: datetime | None = None
    ) -> EmergencyView:
        """End an active emergency early, or withdraw a proposal (any platform administrator:
        stopping emergency access must never wait for a second person)."""
        _need_platform_admin(who, "end an emergency")
        reason = reason.strip()
        if not reason:
            raise Problem(problems.REASON_REQUIRED, "ending an emergency needs a reason")
        if len(reason) > MAX_REASON:
            raise Problem(problems.VALIDATION, f"the reason is longer than {MAX_REASON} characters")
        now = now or self.clock()
        with acting(who.subject), self._sessions.begin() as s:
            row = self._row(s, emergency_id)
            status = self._status(row, now)
            if status not in (EmergencyStatus.PROPOSED, EmergencyStatus.ACTIVE):
                raise Problem(problems.CONFLICT, f"emergency {row.id} is already {status.value}")
            done = s.execute(
                update(Emergency)
                .where(Emergency.id == row.id, Emergency.ended_at.is_(None))
                .values(ended_at=now, ended_by=who.subject, end_reason=reason)
                .execution_options(synchronize_session=False)
            ).rowcount
            if done != 1:
                raise Problem(problems.CONFLICT, f"emergency {row.id} was ended meanwhile")
            self.registry._bump(
                s, "emergency.end", emergency=row.id, was=status.value, reason=reason
            )
            s.flush()
            s.refresh(row)
            return self._view(row, now)

    # --- reading -------------------------------------------------------------------------
    def get(self, who: Principal, emergency_id: str, now: datetime | None = None) -> EmergencyView:
        _need_reader(who)
        with self._sessions() as s:
            return self._view(self._row(s, emergency_id), now or self.clock())

    def list(self, who: Principal, now: datetime | None = None) -> builtins.list[EmergencyView]:
        """Every emergency, newest first (platform administrators, and security officers and
        auditors of any organization: emergency access concerns every department)."""
        _need_reader(who)
        now = now or self.clock()
        with self._sessions() as s:
            rows = s.scalars(select(Emergency).order_by(Emergency.declared_at.desc()))
            return [self._view(r, now) for r in rows]

    def for_configuration(self, now: datetime | None = None) -> builtins.list[dict[str, Any]]:
        """The emergencies in force, for the signed global configuration. Nodes compare
        ``expires_at`` with their own clock, so one that expires drops out without a new
        configuration; ending one early bumps the serial."""
        now = now or self.clock()
        with self._sessions() as s:
            rows = s.scalars(
                select(Emergency)
                .where(
                    Emergency.confirmed_at.is_not(None),
                    Emergency.ended_at.is_(None),
                    Emergency.expires_at > now,
                )
                .order_by(Emergency.confirmed_at, Emergency.id)
            )
            return [
                {
                    "id": r.id,
                    "reason": r.reason,
                    "resources": json.loads(r.resources),
                    "organizations": json.loads(r.organizations),
                    "starts_at": r.confirmed_at.isoformat() if r.confirmed_at else None,
                    "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                }
                for r in rows
            ]

    # --- what was done under an emergency --------------------------------------------------
    def note_access(
        self,
        emergency_id: str,
        *,
        exchange_id: str,
        node: str,
        ledger_index: int | None,
        provider_org: str,
        resource: str,
        client: str,
        at: datetime,
    ) -> bool:
        """Note an exchange a node admitted under ``emergency_id`` (the ledger calls this as
        it takes the node's record). Idempotent: a resubmitted record is noted once; returns
        whether it was new. Not an administrative event of its own: the exchange is on the
        ledger already, and this is its index for the review."""
        try:
            with self._sessions.begin() as s:
                self._row(s, emergency_id)
                if self._access(s, emergency_id, node, exchange_id) is not None:
                    return False
                s.add(
                    EmergencyAccess(
                        emergency_id=emergency_id,
                        exchange_id=exchange_id,
                        node=node,
                        ledger_index=ledger_index,
                        provider_org=provider_org.upper(),
                        resource=resource,
                        client=client,
                        recorded_at=at,
                        review_note="",
                    )
                )
        except IntegrityError:
            return False  # the same record, noted meanwhile by another replica
        return True

    def accesses(
        self, who: Principal, emergency_id: str, unreviewed_only: bool = False
    ) -> builtins.list[AccessView]:
        """The exchanges made under an emergency. Platform administrators see all; security
        officers and auditors see those their own organization provided or made."""
        _need_reader(who)
        with self._sessions() as s:
            self._row(s, emergency_id)
            q = select(EmergencyAccess).where(EmergencyAccess.emergency_id == emergency_id)
            if unreviewed_only:
                q = q.where(EmergencyAccess.reviewed_at.is_(None))
            rows = s.scalars(q.order_by(EmergencyAccess.recorded_at, EmergencyAccess.id))
            return [_access_view(r) for r in rows if _concerns(who, r)]

    def review(
        self,
        who: Principal,
        emergency_id: str,
        exchange_id: str,
        node: str,
        note: str,
        now: datetime | None = None,
    ) -> AccessView:
        """Record that an exchange made under an emergency was reviewed (a platform
        administrator, or an auditor of the providing or the consuming organization)."""
        if not who.has(Role.AUDITOR):
            raise Problem(problems.FORBIDDEN, "reviewing emergency access needs the role auditor")
        note = note.strip()
        if not note:
            raise Problem(problems.REASON_REQUIRED, "a review says what was found")
        if len(note) > MAX_NOTE:
            raise Problem(problems.VALIDATION, f"the note is longer than {MAX_NOTE} characters")
        now = now or self.clock()
        with acting(who.subject), self._sessions.begin() as s:
            self._row(s, emergency_id)
            row = self._access(s, emergency_id, node, exchange_id)
            if row is None or not _concerns(who, row):
                raise Problem(
                    problems.NOT_FOUND,
                    f"no exchange {exchange_id} of node {node} under emergency {emergency_id}",
                )
            if row.reviewed_at is not None:
                raise Problem(
                    problems.CONFLICT,
                    f"exchange {exchange_id} was reviewed by {row.reviewed_by} "
                    f"at {row.reviewed_at.isoformat()}",
                )
            row.reviewed_by, row.reviewed_at, row.review_note = who.subject, now, note
            self.registry._event(
                s,
                "emergency.access.review",
                emergency=emergency_id,
                exchange_id=exchange_id,
                node=node,
                note=note,
            )
            s.flush()
            return _access_view(row)

    # --- helpers -------------------------------------------------------------------------
    def _row(self, s: Session, emergency_id: str) -> Emergency:
        row = s.get(Emergency, emergency_id) if EMERGENCY_ID.match(emergency_id) else None
        if row is None:
            raise Problem(problems.NOT_FOUND, f"no emergency {emergency_id}")
        return row

    @staticmethod
    def _access(
        s: Session, emergency_id: str, node: str, exchange_id: str
    ) -> EmergencyAccess | None:
        return s.scalars(
            select(EmergencyAccess).where(
                EmergencyAccess.emergency_id == emergency_id,
                EmergencyAccess.node == node,
                EmergencyAccess.exchange_id == exchange_id,
            )
        ).first()

    def _status(self, row: Emergency, now: datetime) -> EmergencyStatus:
        if row.ended_at is not None:
            return EmergencyStatus.ENDED
        if row.confirmed_at is not None:
            assert row.expires_at is not None
            return EmergencyStatus.ACTIVE if now < row.expires_at else EmergencyStatus.EXPIRED
        if now >= row.declared_at + self.confirm_window:
            return EmergencyStatus.LAPSED
        return EmergencyStatus.PROPOSED

    def _view(self, row: Emergency, now: datetime) -> EmergencyView:
        return EmergencyView(
            id=row.id,
            status=self._status(row, now),
            reason=row.reason,
            resources=tuple(json.loads(row.resources)),
            organizations=tuple(json.loads(row.organizations)),
            hours=row.hours,
            declared_by=row.declared_by,
            declared_at=row.declared_at,
            confirm_before=row.declared_at + self.confirm_window,
            confirmed_by=row.confirmed_by,
            confirmed_at=row.confirmed_at,
            expires_at=row.expires_at,
            ended_at=row.ended_at,
            ended_by=row.ended_by,
            end_reason=row.end_reason,
        )

    def _check_resources(self, resources: Sequence[str]) -> builtins.list[str]:
        known = {(r.org_code, r.code) for r in self.registry.list_resources()}
        scope: set[str] = set()
        for item in resources:
            org, sep, code = item.strip().partition("/")
            if not sep or not _RESOURCE_CODE.match(code):
                raise Problem(problems.VALIDATION, f"resource {item!r} is not {{org}}/{{code}}")
            org = check_uscc(org.upper())
            if (org, code) not in known:
                raise Problem(problems.VALIDATION, f"no resource {org}/{code} is registered")
            scope.add(f"{org}/{code}")
        return sorted(scope)

    def _check_organizations(self, organizations: Sequence[str]) -> builtins.list[str]:
        known = {o.code for o in self.registry.list_organizations()}
        scope: set[str] = set()
        for item in organizations:
            org = check_uscc(item.strip().upper())
            if org not in known:
                raise Problem(problems.VALIDATION, f"no organization {org} is registered")
            scope.add(org)
        return sorted(scope)


def _need_platform_admin(who: Principal, what: str) -> None:
    if not who.is_platform_admin:
        raise Problem(problems.FORBIDDEN, f"only a platform administrator may {what}")


def _need_reader(who: Principal) -> None:
    if not who.has(Role.SECURITY_OFFICER, Role.AUDITOR):
        raise Problem(
            problems.FORBIDDEN,
            "emergencies are for platform administrators, security officers and auditors",
        )


def _concerns(who: Principal, row: EmergencyAccess) -> bool:
    """Whether the caller may see an access: everyone's for the platform administrator, else
    those where the caller's organization is the provider or the consumer."""
    return who.is_platform_admin or who.org in (row.provider_org, _client_org(row.client))


def _access_view(r: EmergencyAccess) -> AccessView:
    return AccessView(
        emergency_id=r.emergency_id,
        exchange_id=r.exchange_id,
        node=r.node,
        ledger_index=r.ledger_index,
        provider_org=r.provider_org,
        resource=r.resource,
        client=r.client,
        recorded_at=r.recorded_at,
        reviewed_by=r.reviewed_by,
        reviewed_at=r.reviewed_at,
        review_note=r.review_note,
    )
