"""The identity service: people, their roles, sign-in with a second factor, and sessions.

Rules it enforces, whoever calls it (the API, the commands, the demo):

- A user belongs to one organization and holds roles there; platform administrators belong
  to none and hold ``platform-admin`` only.
- Only an organization administrator of that organization (or a platform administrator)
  manages its users, and nobody grants a role they do not hold themselves: an organization
  administrator who is not an auditor cannot make anyone an auditor (三员分立, the separation
  of administrator, security officer and auditor asked for by GB/T 22239-2019 §8.1.4.2).
- Administrators, approvers and security officers must use TOTP. Until they have enrolled,
  and in any session signed in without a second factor, those roles are withheld: the
  person can sign in and enroll, nothing more.
- Failed sign-ins are counted per sign-in name and per source address in the database;
  after ``sign_in_max_failures`` both wait, longer after each further failure. A locked
  name answers exactly as a wrong password does.
- Every sign-in, failure, lockout, MFA change, role change and user change is written to
  the registry's record of administrative actions (the ledger's outbox), in the same
  transaction as the change. Passwords, codes and tokens never appear there or in logs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import and_, case, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qiao import problems
from qiao.config import HubSettings
from qiao.db import session_factory, utcnow
from qiao.identity import mfa
from qiao.identity import sessions as tokens
from qiao.identity.models import (
    MfaResetRequest,
    RecoveryCode,
    SignInFailures,
    User,
    UserSession,
)
from qiao.identity.passwords import PasswordHashing, WeakPassword, check_policy, generate_password
from qiao.identity.roles import Principal, Role, parse_roles
from qiao.problems import Problem
from qiao.registry.models import Organization
from qiao.registry.services import RegistryService, acting

if TYPE_CHECKING:
    from qiao.identity.federation import ExternalUser

log = logging.getLogger("qiao.identity")

# Roles that may only be used after a second factor (issue 6: administrators, approvers,
# security officers).
MFA_ROLES = frozenset({Role.PLATFORM_ADMIN, Role.ORG_ADMIN, Role.APPROVER, Role.SECURITY_OFFICER})
# RFC 8176 values that show a second factor was used.
SECOND_FACTORS = frozenset({"otp", "mfa", "hwk", "swk", "sms"})
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MFA_RESET_WINDOW = timedelta(hours=1)
# Ended sessions and old failure counters are deleted this long after they stop mattering
# (the record of administrative actions keeps the history); checked at most every PURGE_EVERY.
KEEP_ENDED = timedelta(days=7)
PURGE_EVERY = timedelta(minutes=10)


def _role_text(roles: Iterable[Role]) -> str:
    return ",".join(sorted(r.value for r in roles))


def _amr_text(amr: Iterable[str]) -> str:
    return ",".join(a for a in amr if a)


def has_second_factor(amr: Iterable[str]) -> bool:
    return bool(SECOND_FACTORS.intersection(amr))


@dataclass(frozen=True)
class UserView:
    """What the API and the commands show of a user (no secrets)."""

    id: int
    username: str
    name: str
    org: str | None
    roles: frozenset[Role]
    disabled: bool
    mfa_enrolled: bool
    source: str
    created_at: datetime
    last_login_at: datetime | None

    @property
    def needs_mfa(self) -> bool:
        return bool(self.roles & MFA_ROLES)

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "name": self.name,
            "org": self.org,
            "roles": sorted(r.value for r in self.roles),
            "disabled": self.disabled,
            "mfa_enrolled": self.mfa_enrolled,
            "mfa_required_by_role": self.needs_mfa,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


def _view(u: User) -> UserView:
    return UserView(
        u.id,
        u.username,
        u.name,
        u.org_code,
        parse_roles(u.roles),
        u.disabled,
        u.totp_confirmed_at is not None,
        u.source,
        u.created_at,
        u.last_login_at,
    )


@dataclass(frozen=True)
class SignIn:
    """A successful sign-in: the cookie's token, the CSRF token and who signed in.
    ``mfa_required``: the user's roles need TOTP and it is not enrolled yet."""

    session_token: str
    csrf_token: str
    user: UserView
    amr: tuple[str, ...]
    mfa_required: bool


@dataclass(frozen=True)
class SessionView:
    id: int
    amr: tuple[str, ...]
    client_address: str
    user_agent: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime

    def to_json(self, current: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "amr": list(self.amr),
            "client_address": self.client_address,
            "user_agent": self.user_agent,
            "created_at": self.created_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "current": current,
        }


class SignInRefused(Exception):
    """Wrong name, password or code, or a lockout; the caller cannot tell which.
    ``retry_after`` (seconds) is set while the name or address is locked."""

    def __init__(self, retry_after: int | None = None) -> None:
        super().__init__("sign-in refused")
        self.retry_after = retry_after


class SecondFactorNeeded(Exception):
    """The password was right; a TOTP or recovery code must come with it."""


@dataclass(frozen=True)
class TotpEnrollment:
    secret: str
    uri: str
    qr: str  # data: URI of an SVG QR code


class IdentityService:
    def __init__(
        self,
        registry: RegistryService,
        settings: HubSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        hashing: PasswordHashing | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self._sessions = session_factory(registry.engine)
        self.hashing = hashing or PasswordHashing(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self.timeouts = tokens.Timeouts(
            timedelta(seconds=settings.session_idle_seconds),
            timedelta(seconds=settings.session_absolute_seconds),
        )
        self._purged_at: datetime | None = None

    def purge(self) -> int:
        """Delete sessions over for a week and failure counters quiet for a whole window, so
        the tables stay bounded; returns how many rows went."""
        now = self.clock()
        self._purged_at = now
        window = timedelta(seconds=self.settings.sign_in_failure_window_seconds)
        with self._sessions.begin() as s:
            gone = s.execute(
                delete(UserSession).where(
                    (UserSession.expires_at < now - KEEP_ENDED)
                    | (UserSession.ended_at < now - KEEP_ENDED)
                    | (UserSession.last_seen_at < now - self.timeouts.idle - KEEP_ENDED)
                )
            ).rowcount
            gone += s.execute(
                delete(SignInFailures).where(
                    SignInFailures.last_failure_at < now - window,
                    (SignInFailures.locked_until.is_(None)) | (SignInFailures.locked_until < now),
                )
            ).rowcount
        return int(gone)

    # --- the record of administrative actions ----------------------------------------------
    def _event(self, s: Session, action: str, actor: str | None = None, **detail: Any) -> None:
        if actor is None:
            self.registry._event(s, action, **detail)
            return
        with acting(actor[:200]):
            self.registry._event(s, action, **detail)

    # --- users ------------------------------------------------------------------------------
    def _user(self, s: Session, username: str, *, lock: bool = False) -> User:
        q = select(User).where(User.username == username.strip().lower())
        if lock:
            q = q.with_for_update()
        user = s.scalars(q).first()
        if user is None:
            raise Problem(problems.NOT_FOUND, f"no user {username!r}")
        return user

    @staticmethod
    def _may_administer(actor: Principal, org: str | None) -> bool:
        """Whether ``actor`` manages the users of ``org`` (``None``: platform users)."""
        if org is None:
            return actor.is_platform_admin
        return actor.has(Role.ORG_ADMIN, org=org)

    def _need_admin(self, actor: Principal, org: str | None) -> None:
        if not self._may_administer(actor, org):
            where = f"organization {org}" if org else "the platform"
            raise Problem(problems.FORBIDDEN, f"only an administrator of {where} manages its users")

    @staticmethod
    def _need_to_hold(actor: Principal, roles: Iterable[Role], org: str | None) -> None:
        """Nobody grants a role they do not hold themselves (in that organization)."""
        for role in roles:
            holds = (
                actor.is_platform_admin
                if role is Role.PLATFORM_ADMIN
                else (actor.has(role, org=org) if org else actor.is_platform_admin)
            )
            if not holds:
                raise Problem(
                    problems.FORBIDDEN,
                    f"you cannot grant the role {role.value}: you do not hold it",
                )

    @staticmethod
    def _check_roles_for(org: str | None, roles: frozenset[Role]) -> None:
        if org is None and roles != {Role.PLATFORM_ADMIN}:
            raise Problem(
                problems.VALIDATION,
                "a user without an organization is a platform administrator (role platform-admin)",
            )
        if org is not None and Role.PLATFORM_ADMIN in roles:
            raise Problem(problems.VALIDATION, "platform-admin is not an organization's role")

    def add_user(
        self,
        actor: Principal,
        username: str,
        *,
        org: str | None,
        roles: frozenset[Role],
        name: str = "",
        password: str | None = None,
    ) -> tuple[UserView, str | None]:
        """Create a user; returns it and the generated initial password (``None`` when a
        password was given). The password is shown once and stored only as its hash."""
        username = username.strip().lower()
        if not USERNAME.match(username):
            raise Problem(
                problems.VALIDATION,
                "the sign-in name must be 2-64 characters: a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit",
            )
        org = org.strip().upper() if org else None
        self._check_roles_for(org, roles)
        self._need_admin(actor, org)
        self._need_to_hold(actor, roles, org)
        generated = None
        if password is None:
            password = generated = generate_password()
        self._check_password(password, username)
        now = self.clock()
        with self._sessions.begin() as s:
            if org is not None and s.get(Organization, org) is None:
                raise Problem(problems.NOT_FOUND, f"no organization {org}")
            user = User(
                username=username,
                name=name.strip()[:200],
                org_code=org,
                roles=_role_text(roles),
                password_hash=self.hashing.hash(password),
                password_changed_at=now,
                disabled=False,
                source="local",
                totp_last_step=0,
                created_at=now,
                created_by=actor.subject,
            )
            s.add(user)
            try:
                s.flush()
            except IntegrityError as exc:
                raise Problem(problems.CONFLICT, f"user {username} exists") from exc
            self._event(
                s, "user.create", actor.subject, user=username, org=org, roles=_role_text(roles)
            )
            view = _view(user)
        return view, generated

    def _check_password(self, password: str, username: str) -> None:
        try:
            check_policy(password, username, min_length=self.settings.password_min_length)
        except WeakPassword as exc:
            raise Problem(problems.WEAK_PASSWORD, str(exc)) from None

    def get_user(self, actor: Principal, username: str) -> UserView:
        with self._sessions() as s:
            user = self._user(s, username)
            if not (self._may_read(actor, user.org_code) or actor.subject == f"user:{username}"):
                raise Problem(problems.FORBIDDEN, "you may not see this user")
            return _view(user)

    @staticmethod
    def _may_read(actor: Principal, org: str | None) -> bool:
        if org is None:
            return actor.is_platform_admin
        return actor.has(Role.ORG_ADMIN, Role.AUDITOR, org=org)

    def list_users(self, actor: Principal, org: str | None = None) -> list[UserView]:
        """The users of ``org`` (default: the caller's own; a platform administrator without
        ``org`` sees everyone). Organization administrators and auditors see their own."""
        if org is None and not actor.is_platform_admin:
            org = actor.org
        if org is not None and not self._may_read(actor, org.upper()):
            raise Problem(problems.FORBIDDEN, f"you may not list the users of {org}")
        with self._sessions() as s:
            q = select(User).order_by(User.org_code, User.username)
            if org is not None:
                q = q.where(User.org_code == org.upper())
            return [_view(u) for u in s.scalars(q)]

    def set_disabled(self, actor: Principal, username: str, disabled: bool) -> UserView:
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            self._need_admin(actor, user.org_code)
            if actor.subject == f"user:{user.username}":
                raise Problem(problems.VALIDATION, "you cannot disable or enable yourself")
            if user.disabled != disabled:
                user.disabled = disabled
                if disabled:
                    self._end_sessions(s, user.id)
                action = "user.disable" if disabled else "user.enable"
                self._event(s, action, actor.subject, user=user.username, org=user.org_code)
            return _view(user)

    def set_roles(self, actor: Principal, username: str, roles: frozenset[Role]) -> UserView:
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            self._need_admin(actor, user.org_code)
            self._check_roles_for(user.org_code, roles)
            old = parse_roles(user.roles)
            self._need_to_hold(actor, roles - old, user.org_code)
            if roles != old:
                user.roles = _role_text(roles)
                self._event(
                    s,
                    "user.roles",
                    actor.subject,
                    user=user.username,
                    org=user.org_code,
                    added=_role_text(roles - old),
                    removed=_role_text(old - roles),
                )
                # Sessions carry the roles read at each request, so a removal is immediate.
            return _view(user)

    def change_password(
        self, user_id: int, current: str, new: str, *, keep_session: int | None = None
    ) -> int:
        """The user changes their own password. Every other session of theirs ends (OWASP
        Session Management: renew sessions on a credential change — a password changed
        because it leaked must also end the thief's session); ``keep_session`` (the one the
        change was made in) stays. Returns how many sessions ended."""
        with self._sessions.begin() as s:
            user = s.get(User, user_id, with_for_update=True)
            if user is None or not self.hashing.verify(user.password_hash, current):
                raise Problem(problems.SIGN_IN_FAILED, "the current password is not right")
            self._check_password(new, user.username)
            user.password_hash = self.hashing.hash(new)
            user.password_changed_at = self.clock()
            ended = self._end_sessions(s, user.id, keep=keep_session)
            self._event(
                s, "user.password", f"user:{user.username}", user=user.username, ended=ended
            )
        return ended

    # --- throttling ---------------------------------------------------------------------------
    def _keys(self, username: str, address: str) -> list[str]:
        return [f"user:{username.strip().lower()[:150]}", f"addr:{address[:100]}"]

    def _locked_for(self, keys: list[str], now: datetime) -> int | None:
        with self._sessions() as s:
            rows = list(s.scalars(select(SignInFailures).where(SignInFailures.key.in_(keys))))
        waits = [
            int((r.locked_until - now).total_seconds()) + 1
            for r in rows
            if r.locked_until is not None and r.locked_until > now
        ]
        return max(waits) if waits else None

    def _count_attempt(self, keys: list[str], now: datetime) -> tuple[int | None, bool]:
        """Count this sign-in attempt as a failure against each key *before* the password is
        checked, and say (the wait now in force, whether the attempt may go on). Counting
        first is what bounds guessing: each attempt takes its number from one atomic
        ``UPDATE … RETURNING`` (no read-modify-write, which SQLite could interleave), so no
        more than ``sign_in_max_failures`` attempts per window ever reach the password check,
        however many run in parallel. A right password gives its count back (``_forgive``)."""
        st = self.settings
        cutoff = now - timedelta(seconds=st.sign_in_failure_window_seconds)
        wait: int | None = None
        go_on = True
        t = SignInFailures
        for key in keys:
            with self._sessions.begin() as s:
                dialect = s.get_bind().dialect.name
                ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(t)
                ins = ins.values(key=key, failures=1, last_failure_at=now)
                # Quiet for a whole window (and not locked): start over at 1.
                fresh = and_(
                    t.last_failure_at < cutoff, or_(t.locked_until.is_(None), t.locked_until <= now)
                )
                # One statement: insert the first failure or count the next one, atomically.
                row = s.execute(
                    ins.on_conflict_do_update(
                        index_elements=["key"],
                        set_={
                            "failures": case((fresh, 1), else_=t.failures + 1),
                            "last_failure_at": now,
                        },
                    ).returning(t.failures, t.locked_until)
                ).one()
                failures, locked_until = row.failures, row.locked_until
                # Within the allowance, or the first attempt after a lockout ended (the row
                # stays locked by this transaction until it sets the next, longer lockout):
                # checked. Otherwise the allowance is used up: not checked at all.
                lock_ended = locked_until is not None and locked_until <= now
                if failures > st.sign_in_max_failures and not lock_ended:
                    go_on = False
                over = failures - st.sign_in_max_failures
                if over >= 0:
                    # Exponential back-off: 1x, 2x, 4x ... the base, up to the cap.
                    seconds = min(
                        st.sign_in_lockout_seconds * 2 ** min(over, 20),
                        st.sign_in_lockout_max_seconds,
                    )
                    s.execute(
                        update(t)
                        .where(t.key == key)
                        .values(locked_until=now + timedelta(seconds=seconds))
                        .execution_options(synchronize_session=False)
                    )
                    wait = max(wait or 0, seconds)
                    self._event(
                        s,
                        "session.lockout",
                        "hub:throttle",
                        key=key,
                        failures=failures,
                        seconds=seconds,
                    )
        return wait, go_on

    def _forgive(self, keys: list[str], *, signed_in: bool = True) -> None:
        """The password was right: each key gives back the one count this attempt took
        (others' failures from the same address still stand). A completed sign-in also
        clears the name's record."""
        st = self.settings
        t = SignInFailures
        with self._sessions.begin() as s:
            for key in keys:
                if signed_in and key == keys[0]:
                    s.execute(delete(t).where(t.key == key))
                    continue
                s.execute(
                    update(t)
                    .where(t.key == key, t.failures > 0)
                    .values(failures=t.failures - 1)
                    .execution_options(synchronize_session=False)
                )
                s.execute(
                    update(t)
                    .where(t.key == key, t.failures < st.sign_in_max_failures)
                    .values(locked_until=None)
                    .execution_options(synchronize_session=False)
                )

    # --- sign-in ----------------------------------------------------------------------------
    def sign_in(
        self,
        username: str,
        password: str,
        *,
        otp: str | None = None,
        recovery_code: str | None = None,
        client_address: str = "",
        user_agent: str = "",
    ) -> SignIn:
        """Check the password and second factor and open a session.

        Raises ``SignInRefused`` (wrong anything, or locked) or ``SecondFactorNeeded``."""
        now = self.clock()
        if self._purged_at is None or now - self._purged_at > PURGE_EVERY:
            self.purge()
        name = username.strip().lower()[:64]
        keys = self._keys(name, client_address)
        actor = f"user:{name}"
        locked = self._locked_for(keys, now)
        if locked is not None:
            # Do not even check the password: a locked name gives nothing away.
            with self._sessions.begin() as s:
                self._event(
                    s, "session.sign-in-refused", actor, address=client_address, reason="locked"
                )
            raise SignInRefused(locked)
        wait, go_on = self._count_attempt(keys, now)
        if not go_on:
            with self._sessions.begin() as s:
                self._event(
                    s, "session.sign-in-refused", actor, address=client_address, reason="locked"
                )
            raise SignInRefused(wait)
        with self._sessions() as s:
            user = s.scalars(select(User).where(User.username == name)).first()
            stored = user.password_hash if user is not None else None
        ok = self.hashing.verify(stored, password)
        reason = None
        if user is None:
            reason = "unknown user"
        elif not ok:
            reason = "wrong password"
        elif user.disabled:
            reason = "disabled"
        elif user.source != "local":
            reason = f"signs in through {user.source}"
        if reason is not None or user is None:
            self._refuse(wait, actor, client_address, reason or "unknown user")
        amr: tuple[str, ...] = ("pwd",)
        if user.totp_confirmed_at is not None:
            if not otp and not recovery_code:
                self._forgive(keys, signed_in=False)  # a right password is no failure
                raise SecondFactorNeeded()
            factor_ok = (
                self._use_totp(user.id, otp, now)
                if otp
                else self._use_recovery_code(user.id, recovery_code or "", now, actor)
            )
            if not factor_ok:
                what = "wrong or replayed TOTP code" if otp else "wrong or used recovery code"
                self._refuse(wait, actor, client_address, what)
            amr = ("pwd", "otp")
        self._forgive(keys)
        with self._sessions.begin() as s:
            row = s.get(User, user.id, with_for_update=True)
            assert row is not None
            row.last_login_at = now
            if self.hashing.needs_rehash(row.password_hash):
                # Parameters changed since this hash was made (RFC 9106 §4): upgrade it now
                # that we hold the password.
                row.password_hash = self.hashing.hash(password)
            view = _view(row)
        token, csrf = self.create_session(
            user.id, amr, client_address, user_agent=user_agent, _view=view
        )
        return SignIn(token, csrf, view, amr, view.needs_mfa and not view.mfa_enrolled)

    def _refuse(self, wait: int | None, actor: str, address: str, why: str) -> NoReturn:
        # The attempt was counted before it was checked (``_count_attempt``).
        with self._sessions.begin() as s:
            self._event(s, "session.sign-in-failed", actor, address=address, reason=why)
        log.info("sign-in refused for %s from %s: %s", actor, address, why)
        raise SignInRefused(wait)

    def _use_totp(self, user_id: int, code: str | None, now: datetime) -> bool:
        with self._sessions.begin() as s:
            user = s.get(User, user_id)
            if user is None or not user.totp_secret or not code:
                return False
            step = mfa.matching_step(user.totp_secret, code, now, user.totp_last_step)
            if step is None:
                return False
            return _advance_totp(s, user_id, step)

    def _use_recovery_code(self, user_id: int, code: str, now: datetime, actor: str) -> bool:
        digest = mfa.recovery_code_digest(code)
        with self._sessions.begin() as s:
            # A conditional update: of two concurrent uses of one code, only one wins.
            used = s.execute(
                update(RecoveryCode)
                .where(
                    RecoveryCode.user_id == user_id,
                    RecoveryCode.code_hash == digest,
                    RecoveryCode.used_at.is_(None),
                )
                .values(used_at=now)
            ).rowcount
            if used != 1:
                return False
            left = len(
                list(
                    s.scalars(
                        select(RecoveryCode.id).where(
                            RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
                        )
                    )
                )
            )
            self._event(s, "mfa.recovery-code.used", actor, remaining=left)
        return True

    # --- sessions ---------------------------------------------------------------------------
    def create_session(
        self,
        user_id: int,
        amr: tuple[str, ...],
        client_address: str,
        *,
        user_agent: str = "",
        _view: UserView | None = None,
    ) -> tuple[str, str]:
        """Open a session for ``user_id`` (after a successful sign-in here or at an external
        identity provider); returns (session token for the cookie, CSRF token)."""
        now = self.clock()
        token = tokens.new_token()
        with self._sessions.begin() as s:
            user = s.get(User, user_id)
            if user is None or user.disabled:
                raise Problem(problems.FORBIDDEN, "the user is disabled")
            row = UserSession(
                token_hash=tokens.digest(token),
                user_id=user_id,
                amr=_amr_text(amr),
                client_address=client_address[:100],
                user_agent=user_agent[:300],
                created_at=now,
                last_seen_at=now,
                expires_at=now + self.timeouts.absolute,
            )
            s.add(row)
            s.flush()
            self._event(
                s,
                "session.sign-in",
                f"user:{user.username}",
                session=row.id,
                amr=_amr_text(amr),
                address=client_address,
            )
        return token, tokens.csrf_token(token)

    def _live_session(
        self, s: Session, token: str, client_address: str, now: datetime
    ) -> tuple[UserSession, User] | None:
        row = s.scalars(
            select(UserSession).where(UserSession.token_hash == tokens.digest(token))
        ).first()
        if row is None or row.ended_at is not None:
            return None
        user = s.get(User, row.user_id)
        if user is None or user.disabled:
            return None
        why = self.timeouts.expired(
            created=row.created_at, last_seen=row.last_seen_at, expires=row.expires_at, now=now
        )
        if why is not None:
            return None
        if self.settings.session_bind_address and row.client_address != client_address[:100]:
            return None
        return row, user

    def principal_for_session(self, token: str, client_address: str) -> Principal | None:
        """The signed-in user behind a session cookie, or ``None`` when the session is
        unknown, ended, timed out, or (with address binding) used from another address."""
        if not token.startswith(tokens.TOKEN_PREFIX):
            return None
        now = self.clock()
        with self._sessions() as s:
            found = self._live_session(s, token, client_address, now)
            if found is None:
                self._note_mismatch(s, token, client_address, now)
                return None
            row, user = found
            amr = tuple(a for a in row.amr.split(",") if a)
            roles = parse_roles(user.roles)
            if not has_second_factor(amr):
                roles = roles - MFA_ROLES  # these roles wait for the second factor
            # Write the idle clock at most every 15 s: a page's burst of requests costs one write.
            if now - row.last_seen_at >= timedelta(seconds=15):
                s.execute(
                    update(UserSession).where(UserSession.id == row.id).values(last_seen_at=now)
                )
                s.commit()
            return Principal(
                f"user:{user.username}", roles, org=user.org_code, kind="user", amr=amr
            )

    def _note_mismatch(self, s: Session, token: str, address: str, now: datetime) -> None:
        """Record a live session's cookie arriving from another address (a stolen cookie,
        most likely) for the auditors."""
        if not self.settings.session_bind_address:
            return
        row = s.scalars(
            select(UserSession).where(UserSession.token_hash == tokens.digest(token))
        ).first()
        if row is None or row.ended_at is not None or row.client_address == address[:100]:
            return
        if self.timeouts.expired(
            created=row.created_at, last_seen=row.last_seen_at, expires=row.expires_at, now=now
        ):
            return
        user = s.get(User, row.user_id)
        with self._sessions.begin() as w:
            self._event(
                w,
                "session.address-mismatch",
                f"user:{user.username if user else row.user_id}",
                session=row.id,
                expected=row.client_address,
                address=address,
            )

    def session_info(self, token: str) -> tuple[UserView, SessionView]:
        with self._sessions() as s:
            row = s.scalars(
                select(UserSession).where(UserSession.token_hash == tokens.digest(token))
            ).first()
            if row is None:
                raise Problem(problems.SESSION_EXPIRED, "no such session")
            user = s.get(User, row.user_id)
            assert user is not None
            return _view(user), _session_view(row)

    def rotate_session(self, token: str) -> str:
        """A new token for the live session ``token`` names; the old one stops working. For a
        change of privilege inside a session (a second factor enrolled): the identifier the
        browser held before is worth nothing after (OWASP Session Management, "Renew the
        Session ID After Any Privilege Level Change")."""
        new = tokens.new_token()
        with self._sessions.begin() as s:
            done = s.execute(
                update(UserSession)
                .where(
                    UserSession.token_hash == tokens.digest(token),
                    UserSession.ended_at.is_(None),
                )
                .values(token_hash=tokens.digest(new))
            ).rowcount
        if done != 1:
            raise Problem(problems.SESSION_EXPIRED, "the session has ended; sign in again")
        return new

    def end_session(self, token: str) -> None:
        """Sign out: end the session whose cookie holds ``token``."""
        now = self.clock()
        with self._sessions.begin() as s:
            row = s.scalars(
                select(UserSession).where(UserSession.token_hash == tokens.digest(token))
            ).first()
            if row is None or row.ended_at is not None:
                return
            row.ended_at = now
            user = s.get(User, row.user_id)
            self._event(
                s, "session.sign-out", f"user:{user.username if user else '?'}", session=row.id
            )

    def _end_sessions(self, s: Session, user_id: int, keep: int | None = None) -> int:
        now = self.clock()
        # Sessions that timed out are over already; count (and end) only the live ones.
        q = update(UserSession).where(
            UserSession.user_id == user_id,
            UserSession.ended_at.is_(None),
            UserSession.expires_at > now,
            UserSession.last_seen_at > now - self.timeouts.idle,
        )
        if keep is not None:
            q = q.where(UserSession.id != keep)
        return int(s.execute(q.values(ended_at=now)).rowcount)  # type: ignore[attr-defined]

    def end_all_sessions(self, username: str) -> int:
        """Sign out everywhere: end every session of the user; returns how many."""
        with self._sessions.begin() as s:
            user = self._user(s, username)
            n = self._end_sessions(s, user.id)
            self._event(s, "session.sign-out-everywhere", f"user:{user.username}", sessions=n)
            return n

    def list_sessions(self, username: str) -> list[SessionView]:
        now = self.clock()
        with self._sessions() as s:
            user = self._user(s, username)
            rows = s.scalars(
                select(UserSession)
                .where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
                .order_by(UserSession.created_at.desc())
            )
            return [
                _session_view(r)
                for r in rows
                if self.timeouts.expired(
                    created=r.created_at, last_seen=r.last_seen_at, expires=r.expires_at, now=now
                )
                is None
            ]

    def end_session_by_id(self, username: str, session_id: int) -> None:
        with self._sessions.begin() as s:
            user = self._user(s, username)
            row = s.get(UserSession, session_id)
            if row is None or row.user_id != user.id:
                raise Problem(problems.NOT_FOUND, f"no session {session_id}")
            if row.ended_at is None:
                row.ended_at = self.clock()
                self._event(s, "session.sign-out", f"user:{user.username}", session=row.id)

    def user_state(self, username: str) -> UserView | None:
        """The user as they stand now (None if there is no such user): for credentials
        issued earlier, such as OIDC refresh tokens, that must follow a disable or a role
        change instead of repeating what was true at sign-in."""
        with self._sessions() as s:
            row = s.scalars(select(User).where(User.username == username.lower())).first()
            return _view(row) if row is not None else None

    def user_id(self, username: str) -> int:
        with self._sessions() as s:
            return self._user(s, username).id

    # --- MFA enrollment -----------------------------------------------------------------------
    def start_totp(self, username: str) -> TotpEnrollment:
        """A new (unconfirmed) TOTP secret for the user; confirmed by ``confirm_totp``."""
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            if user.totp_confirmed_at is not None:
                raise Problem(
                    problems.CONFLICT,
                    "TOTP is already enrolled; two administrators can reset it (qiao users "
                    "reset-mfa)",
                )
            user.totp_secret = mfa.new_secret()
            user.totp_last_step = 0
            self._event(s, "mfa.totp.start", f"user:{user.username}")
            secret = user.totp_secret
            account = user.username
        uri = mfa.provisioning_uri(secret, account, f"Qiao {self.registry.instance}")
        return TotpEnrollment(secret, uri, mfa.qr_data_uri(uri))

    def confirm_totp(self, username: str, code: str, session_token: str | None = None) -> list[str]:
        """Confirm enrollment with a first code; returns the recovery codes (shown once).
        The session that confirmed counts as signed in with the second factor from now on."""
        now = self.clock()
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            if user.totp_confirmed_at is not None:
                raise Problem(problems.CONFLICT, "TOTP is already enrolled")
            if not user.totp_secret:
                raise Problem(problems.VALIDATION, "start the enrollment first")
            step = mfa.matching_step(user.totp_secret, code, now, user.totp_last_step)
            if step is None or not _advance_totp(s, user.id, step):
                self._event(s, "mfa.totp.confirm-failed", f"user:{user.username}")
                s.commit()
                raise Problem(problems.SIGN_IN_FAILED, "the code is not right; try the next one")
            user.totp_confirmed_at = now
            codes = self._replace_recovery_codes(s, user)
            if session_token:
                s.execute(
                    update(UserSession)
                    .where(
                        UserSession.token_hash == tokens.digest(session_token),
                        UserSession.user_id == user.id,
                    )
                    .values(amr="pwd,otp")
                )
            self._event(s, "mfa.totp.enroll", f"user:{user.username}")
        return codes

    def _replace_recovery_codes(self, s: Session, user: User) -> list[str]:
        now = self.clock()
        s.execute(
            update(RecoveryCode)
            .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
            .values(used_at=now)
        )
        codes = mfa.new_recovery_codes()
        for c in codes:
            s.add(
                RecoveryCode(user_id=user.id, code_hash=mfa.recovery_code_digest(c), created_at=now)
            )
        self._event(s, "mfa.recovery-codes.issue", f"user:{user.username}", count=len(codes))
        return codes

    def regenerate_recovery_codes(self, username: str) -> list[str]:
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            if user.totp_confirmed_at is None:
                raise Problem(problems.VALIDATION, "enroll TOTP first")
            return self._replace_recovery_codes(s, user)

    def _reset(self, s: Session, user: User, requested_by: str, approved_by: str) -> None:
        user.totp_secret = None
        user.totp_confirmed_at = None
        user.totp_last_step = 0
        s.execute(
            update(RecoveryCode)
            .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
            .values(used_at=self.clock())
        )
        self._end_sessions(s, user.id)
        self._event(
            s,
            "mfa.reset",
            approved_by,
            user=user.username,
            requested_by=requested_by,
            approved_by=approved_by,
        )

    def request_mfa_reset(self, actor: Principal, username: str) -> str:
        """Two administrators reset a user's MFA: the first call records the request
        (``"pending"``), a second administrator's call within the hour carries it out
        (``"reset"``). The user's sessions end; they enroll again at the next sign-in."""
        now = self.clock()
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            self._need_admin(actor, user.org_code)
            if actor.subject == f"user:{user.username}":
                raise Problem(problems.FORBIDDEN, "another administrator resets your MFA")
            if actor.kind in ("token", "operator"):
                # Two-person control means two people: an automation token is neither, the
                # platform's operator tokens included (two of them would reset anyone's
                # factor with no person involved).
                raise Problem(problems.FORBIDDEN, "an administrator resets MFA, not a token")
            if actor.kind == "user" and not has_second_factor(actor.amr):
                raise Problem(problems.FORBIDDEN, "sign in with your second factor first")
            pending = s.scalars(
                select(MfaResetRequest).where(
                    MfaResetRequest.user_id == user.id,
                    MfaResetRequest.completed_at.is_(None),
                    MfaResetRequest.created_at > now - MFA_RESET_WINDOW,
                )
            ).first()
            if pending is None or pending.requested_by == actor.subject:
                if pending is None:
                    s.add(
                        MfaResetRequest(user_id=user.id, requested_by=actor.subject, created_at=now)
                    )
                    self._event(s, "mfa.reset.request", actor.subject, user=user.username)
                return "pending"
            pending.approved_by = actor.subject
            pending.completed_at = now
            self._reset(s, user, pending.requested_by, actor.subject)
            return "reset"

    def reset_mfa_with_approver(
        self, requested_by: Principal, username: str, approver: str, approver_code: str
    ) -> None:
        """The command-line form: the operator at the hub's console asks, and a second
        administrator ``approver`` approves by giving their current TOTP code."""
        now = self.clock()
        approver = approver.strip().lower()
        with self._sessions.begin() as s:
            user = self._user(s, username, lock=True)
            other = self._user(s, approver, lock=True)
            if other.id == user.id:
                raise Problem(problems.FORBIDDEN, "the approver cannot be the user being reset")
            who = Principal(
                f"user:{other.username}",
                parse_roles(other.roles),
                org=other.org_code,
                kind="user",
                amr=("otp",),
            )
            if other.disabled or not self._may_administer(who, user.org_code):
                raise Problem(
                    problems.FORBIDDEN, f"{approver} is not an administrator who manages {username}"
                )
            step = (
                mfa.matching_step(other.totp_secret, approver_code, now, other.totp_last_step)
                if other.totp_secret and other.totp_confirmed_at
                else None
            )
            if step is None or not _advance_totp(s, other.id, step):
                self._event(s, "mfa.reset.approval-failed", requested_by.subject, user=username)
                s.commit()
                raise Problem(problems.SIGN_IN_FAILED, f"{approver}'s code is not right")
            self._reset(s, user, requested_by.subject, who.subject)

    # --- delegation to an external identity provider (qiao.identity.federation) --------------
    def external_sign_in(
        self, user: ExternalUser, *, provision: bool, client_address: str
    ) -> tuple[str, str]:
        """Find (or with ``provision`` create) the user an external identity provider
        vouched for, bring its roles up to date from the IdP's claims, open a session."""
        username = user.username.lower()[:64]
        roles = frozenset(user.roles) - {Role.PLATFORM_ADMIN}
        now = self.clock()
        with self._sessions.begin() as s:
            row = s.scalars(select(User).where(User.username == username)).first()
            if row is None:
                if not provision:
                    raise Problem(
                        problems.EXTERNAL_SIGN_IN_REFUSED, f"{username} has no account here"
                    )
                row = User(
                    username=username,
                    name=user.name,
                    org_code=user.org,
                    roles=_role_text(roles),
                    password_hash="",
                    disabled=False,
                    source=user.idp,
                    totp_last_step=0,
                    created_at=now,
                    created_by=f"idp:{user.idp}",
                )
                s.add(row)
                s.flush()
                self._event(
                    s,
                    "user.create",
                    f"idp:{user.idp}",
                    user=username,
                    org=user.org,
                    roles=_role_text(roles),
                )
            else:
                if row.disabled or row.source != user.idp or row.org_code != user.org:
                    raise Problem(
                        problems.EXTERNAL_SIGN_IN_REFUSED,
                        f"{username} is disabled or belongs elsewhere",
                    )
                old = parse_roles(row.roles)
                if old != roles:
                    row.roles = _role_text(roles)
                    self._event(
                        s,
                        "user.roles",
                        f"idp:{user.idp}",
                        user=username,
                        org=user.org,
                        added=_role_text(roles - old),
                        removed=_role_text(old - roles),
                    )
            row.last_login_at = now
            user_id = row.id
        amr = tuple(user.amr) or ("ext",)
        if has_second_factor(amr) and "otp" not in amr:
            amr = (*amr, "otp")
        return self.create_session(user_id, amr, client_address)


def _session_view(r: UserSession) -> SessionView:
    return SessionView(
        r.id,
        tuple(a for a in r.amr.split(",") if a),
        r.client_address,
        r.user_agent,
        r.created_at,
        r.last_seen_at,
        r.expires_at,
    )


__all__ = [
    "MFA_ROLES",
    "IdentityService",
    "SecondFactorNeeded",
    "SignIn",
    "SignInRefused",
    "UserView",
]


def _advance_totp(s: Session, user_id: int, step: int) -> bool:
    """Record ``step`` as the user's last used TOTP step, if it is later than the last one.

    RFC 6238 §5.2: a code is accepted once. A conditional update rather than a row lock (SQLite
    has none): of two requests racing with the same code, only one moves the step forward, and
    only that one may accept it."""
    moved = s.execute(
        update(User)
        .where(User.id == user_id, User.totp_last_step < step)
        .values(totp_last_step=step)
    ).rowcount  # type: ignore[attr-defined]
    return bool(moved == 1)
