"""Tables of the people who sign in to the hub: users, their recovery codes, their sessions,
the failed sign-in counters that throttle guessing, and pending MFA resets.

Nothing secret is stored in the clear except the TOTP shared secret, which the hub must be
able to read to check a code (RFC 6238 §5.1 asks that it be protected like any key: the
hub's database is the hub's key store). Passwords are Argon2id hashes; session tokens and
recovery codes are SHA-256 digests of high-entropy random values.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow


class User(HubBase):
    """A person: a platform administrator (no organization) or a member of one organization,
    holding roles there (``qiao.identity.roles.Role`` values, comma-separated)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    org_code: Mapped[str | None] = mapped_column(String(18), nullable=True, index=True)
    roles: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where the person signs in: "local" (password here) or an external identity provider.
    source: Mapped[str] = mapped_column(String(64), default="local")
    # TOTP (RFC 6238): the base32 secret, set at enrollment, in force once confirmed; the
    # last time step accepted, so that no code is accepted twice (§5.2).
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RecoveryCode(HubBase):
    """A single-use recovery code, for when the authenticator app is lost."""

    __tablename__ = "user_recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserSession(HubBase):
    """A signed-in browser: the cookie holds the token, the hub only its digest."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # RFC 8176 authentication method references, comma-separated ("pwd,otp").
    amr: Mapped[str] = mapped_column(String(100), default="")
    client_address: Mapped[str] = mapped_column(String(100), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SignInFailures(HubBase):
    """Failed sign-ins counted per account name and per source address, in the database so
    that every hub replica sees the same count and a restart forgets nothing."""

    __tablename__ = "sign_in_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # "user:x" | "addr:ip"
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MfaResetRequest(HubBase):
    """The first administrator's request to reset a user's MFA, waiting for a second one."""

    __tablename__ = "mfa_reset_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
