"""Tables of the hub's OpenID Connect provider: registered clients (department apps), the
short-lived authorization codes, the refresh-token families and the ID-token signing keys.

Secrets (client secrets, codes, refresh tokens) are kept only as SHA-256 digests: they are
256-bit random values, so a fast hash leaves nothing to brute-force, and a copy of the
database does not let anyone redeem them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow


class OidcClient(HubBase):
    """A relying party: one department application that lets its staff sign in at the hub.

    Confidential clients (a server-side web app) hold a secret; public clients (a desktop or
    single-page app) hold none and must use PKCE, as every client here must anyway."""

    __tablename__ = "oidc_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    org_code: Mapped[str] = mapped_column(String(18), index=True)
    # The exchange app this client acts as at its node ("" for a sign-in-only client).
    app_code: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    secret_hash: Mapped[str] = mapped_column(String(64), default="")  # "" for public clients
    # JSON list; matched exactly (OAuth 2.0 Security BCP, RFC 9700 §2.1).
    redirect_uris: Mapped[str] = mapped_column(Text)
    post_logout_redirect_uris: Mapped[str] = mapped_column(Text, default="[]")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OidcAuthorizationCode(HubBase):
    """An authorization code (RFC 6749 §4.1.2): single use, ten minutes at most."""

    __tablename__ = "oidc_authorization_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    # The signed-in user's claims at the time of sign-in (name, org, roles, amr, acr,
    # auth_time), so tokens say what was true when the user authenticated.
    claims: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(500), default="")
    nonce: Mapped[str] = mapped_column(String(500), default="")
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    session_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The refresh-token family issued from this code, revoked if the code is replayed
    # (RFC 6749 §4.1.2: "SHOULD revoke ... all tokens previously issued based on that code").
    family: Mapped[str] = mapped_column(String(64), default="")


class OidcRefreshToken(HubBase):
    """A refresh token. Each is used once and replaced (rotation); all tokens descended from
    one sign-in share a ``family``, and presenting a used token again revokes the whole family
    (OAuth 2.0 Security BCP, RFC 9700 §4.14.2)."""

    __tablename__ = "oidc_refresh_tokens"
    __table_args__ = (Index("ix_oidc_refresh_tokens_family", "family"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    claims: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(500), default="")
    session_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OidcSigningKey(HubBase):
    """A key that signs ID tokens and access tokens. The newest one signs; older ones stay in
    the JWKS until ``retired_at`` + the overlap, so tokens they signed still verify."""

    __tablename__ = "oidc_signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FederationState(HubBase):
    """A sign-in delegated to an external identity provider, between the redirect to it and
    its callback: the ``state`` (CSRF, RFC 6749 §10.12), the ``nonce`` (OpenID Connect Core
    §3.1.2.1) and the PKCE verifier, kept here rather than in a cookie so the verifier never
    reaches the browser. Single use, a few minutes."""

    __tablename__ = "federation_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    idp: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_url: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
