"""Hub-signed tokens: the signing keys (with rotation), and access tokens for apps.

ID tokens and access tokens are JWTs signed with RS256. OpenID Connect Core §15.1 makes
RS256 mandatory to implement for every provider and relying party, so every department's
OIDC library (Authlib, Spring Security, Keycloak adapters, .NET, Go) verifies it without
configuration; ES256 and EdDSA would be smaller but are not universally supported by the
older frameworks that government applications still run on.

Access tokens follow the JWT profile for OAuth 2.0 access tokens (RFC 9068): header
``typ: at+jwt`` (so an ID token can never be passed off as an access token, §4), ``iss``,
``aud`` (the exchange nodes of the app's organization, ``{instance}/{org}``, and the hub's
own userinfo endpoint), ``sub`` (the user), ``client_id``, ``app`` (the exchange client id
``{instance}/{org}/{app}`` the OIDC client is bound to), ``scope``, ``iat``, ``exp``, ``jti``.

The verification half (``verify_access_token``) is pure: a node calls it with the JWKS it
cached from the hub and never asks the hub per request.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qiao.db import utcnow
from qiao.identity.oidc_models import OidcSigningKey

ALGORITHM = "RS256"
RSA_BITS = 3072  # NIST SP 800-57: 128-bit security, fine beyond 2030
ACCESS_TOKEN_TYPE = "at+jwt"


class SigningKeys:
    """The provider's signing keys in the hub's database. The newest key signs; a rotated-out
    key stays published in the JWKS for ``overlap`` so that tokens it signed keep verifying
    and relying parties that cached the old JWKS are not cut off."""

    def __init__(self, sessions: sessionmaker[Session], overlap: timedelta) -> None:
        self._sessions = sessions
        self._overlap = overlap
        self._cache: tuple[float, str, RSAKey, dict[str, Any]] | None = None

    def _load(self) -> tuple[str, RSAKey, dict[str, Any]]:
        # Cached briefly: signing happens on every token response, rotation is rare.
        if self._cache is not None and time.monotonic() - self._cache[0] < 5.0:
            return self._cache[1], self._cache[2], self._cache[3]
        with self._sessions.begin() as s:
            rows = list(s.scalars(select(OidcSigningKey).order_by(OidcSigningKey.id)))
            if not any(r.retired_at is None for r in rows):
                rows.append(self._new_key(s))
        now = utcnow()
        current = [r for r in rows if r.retired_at is None][-1]
        published = [
            RSAKey.import_key(json.loads(r.private_jwk)).as_dict(private=False)
            for r in rows
            if r.retired_at is None or r.retired_at + self._overlap > now
        ]
        key = RSAKey.import_key(json.loads(current.private_jwk))
        jwks = {"keys": published}
        self._cache = (time.monotonic(), current.kid, key, jwks)
        return current.kid, key, jwks

    @staticmethod
    def _new_key(s: Session) -> OidcSigningKey:
        kid = secrets.token_urlsafe(12)
        key = RSAKey.generate_key(
            RSA_BITS, parameters={"kid": kid, "use": "sig", "alg": ALGORITHM}, private=True
        )
        row = OidcSigningKey(
            kid=kid, algorithm=ALGORITHM, private_jwk=json.dumps(key.as_dict(private=True))
        )
        s.add(row)
        s.flush()
        return row

    def current(self) -> tuple[str, RSAKey]:
        kid, key, _ = self._load()
        return kid, key

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 §5): current and recently retired keys."""
        return self._load()[2]

    def rotate(self) -> str:
        """Start signing with a new key; the old one stays in the JWKS for the overlap."""
        with self._sessions.begin() as s:
            for row in s.scalars(select(OidcSigningKey).where(OidcSigningKey.retired_at.is_(None))):
                row.retired_at = utcnow()
            kid = self._new_key(s).kid
        self._cache = None
        return kid

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        kid, key = self.current()
        return jwt.encode({"alg": ALGORITHM, "kid": kid, "typ": typ}, claims, key, [ALGORITHM])


def node_audience(instance: str, org: str) -> str:
    """The ``aud`` value naming the exchange nodes of one organization."""
    return f"{instance}/{org}"


def issue_access_token(
    keys: SigningKeys,
    *,
    issuer: str,
    audience: list[str],
    client_id: str,
    subject: str,
    scope: str,
    ttl: timedelta,
    extra: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + int(ttl.total_seconds()),
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(extra or {})
    return keys.sign(claims, typ=ACCESS_TOKEN_TYPE)


class TokenRefused(Exception):
    """An access token that must not be accepted; the message says which check failed."""


@dataclass(frozen=True)
class AccessToken:
    subject: str
    client_id: str
    app: str  # "{instance}/{org}/{app}", "" if the client is not bound to an exchange app
    scope: str
    expires_at: int
    claims: dict[str, Any]


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def verify_access_token(
    token: str,
    jwks: dict[str, Any],
    *,
    issuer: str,
    audience: str,
    leeway: int = 30,
    now: Callable[[], int] | None = None,
) -> AccessToken:
    """Verify an access token per RFC 9068 §4: the ``typ``, the signature against ``jwks``
    with RS256 only (no ``alg`` confusion, RFC 8725 §3.1), ``iss``, ``aud``, ``exp``.
    Raises ``TokenRefused`` saying what did not match."""
    try:
        decoded = jwt.decode(token, KeySet.import_key_set(cast(Any, jwks)), algorithms=[ALGORITHM])
    except (JoseError, ValueError) as exc:
        raise TokenRefused(f"the token's signature does not verify ({exc})") from None
    if str(decoded.header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
        raise TokenRefused("the token is not an access token (typ at+jwt)")
    claims = decoded.claims
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
        client_id={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise TokenRefused(f"the token's claims are not acceptable: {exc}") from None
    return AccessToken(
        subject=str(claims["sub"]),
        client_id=str(claims["client_id"]),
        app=str(claims.get("app", "")),
        scope=str(claims.get("scope", "")),
        expires_at=int(claims["exp"]),
        claims=dict(claims),
    )
