"""The hub as an OpenID Connect provider: department applications let their staff sign in
once, with the hub's MFA, and get signed ID tokens (OpenID Connect Core 1.0).

Built on Authlib's framework-agnostic server (``authlib.oauth2`` and ``authlib.oidc.core``):
this module supplies the storage (``oidc_models``), a thin Starlette adapter, and the HTTP
routes. What the provider enforces beyond the bare protocol, following the OAuth 2.0
Security Best Current Practice (RFC 9700):

- authorization code flow only, with PKCE ``S256`` required of every client (§2.1.1);
- redirect URIs compared exactly to the registered ones (§2.1, §4.1.3);
- codes are single use; a replayed code revokes the tokens issued from it (RFC 6749 §4.1.2);
- refresh tokens rotate on each use; presenting a used one revokes its whole family (§4.14.2);
- ID tokens and access tokens are RS256 JWTs (``access_tokens``), signed by rotating keys.

Routes: ``/.well-known/openid-configuration``, ``/oauth2/jwks``, ``/oauth2/authorize``,
``/oauth2/token``, ``/oauth2/userinfo``, ``/oauth2/logout`` (RP-initiated logout 1.0),
``/oauth2/login`` (a minimal sign-in page), and ``/api/v1/orgs/{org}/oidc-clients`` for an
organization administrator to register its applications.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, cast
from urllib.parse import urlencode, urlsplit

from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from qiao import problems
from qiao.config import HubSettings
from qiao.db import session_factory, utcnow
from qiao.hub.auth import caller, need, require
from qiao.identity.access_tokens import (
    ALGORITHM,
    SigningKeys,
    TokenRefused,
    issue_access_token,
    node_audience,
    verify_access_token,
)
from qiao.identity.oidc_models import (
    OidcAuthorizationCode,
    OidcClient,
    OidcRefreshToken,
)
from qiao.identity.roles import Principal, Role
from qiao.identity.service import MFA_ROLES, SECOND_FACTORS
from qiao.problems import Problem
from qiao.registry.models import AdminEvent
from qiao.registry.services import RegistryService, current_actor

SESSION_COOKIE = "qiao_session"
SCOPES = ("openid", "profile", "qiao")
# Authentication context classes (OpenID Connect Core §2, "acr"): what the hub can vouch for.
ACR_PASSWORD = "urn:qiao:acr:password"
ACR_MFA = "urn:qiao:acr:mfa"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _session_id(request: Request) -> str:
    """A stable, non-secret name for the hub session the request belongs to (so logout can
    find the refresh tokens issued under it)."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return _digest(cookie)[:32] if cookie else ""


# --- what Authlib sees ---------------------------------------------------------------------
@dataclass(frozen=True)
class SignedInUser:
    """The person an authorization is for, with the claims true at sign-in."""

    subject: str
    claims: dict[str, Any]


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, row: OidcClient) -> None:
        self.row = row
        self.client_id = row.client_id
        self.redirect_uris: list[str] = json.loads(row.redirect_uris)
        self.post_logout_redirect_uris: list[str] = json.loads(row.post_logout_redirect_uris)
        self.public = not row.secret_hash

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OpenID Connect Core §3.1.2.1 makes redirect_uri REQUIRED: never guess one.
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact string match

    def check_client_secret(self, client_secret: str) -> bool:
        if self.public:
            return False
        return hmac.compare_digest(_digest(client_secret), self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class Code:
    """An authorization code row, as Authlib's AuthorizationCodeMixin expects."""

    def __init__(self, row: OidcAuthorizationCode) -> None:
        self.row = row
        self.claims: dict[str, Any] = json.loads(row.claims)

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce or None

    def get_auth_time(self) -> int | None:
        return int(self.claims["auth_time"]) if "auth_time" in self.claims else None

    def get_acr(self) -> str | None:
        return self.claims.get("acr")

    def get_amr(self) -> list[str] | None:
        return list(self.claims.get("amr", [])) or None


class Refresh:
    """A refresh token row, as Authlib's refresh grant expects."""

    def __init__(self, row: OidcRefreshToken, claims: dict[str, Any]) -> None:
        self.row = row
        self.claims = claims  # as the user stands now (``OidcProvider.current_claims``)

    def check_client(self, client: Client) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return int((self.row.expires_at - self.row.created_at).total_seconds())

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None


class StarletteRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request built from a Starlette request whose form was already read (Authlib
    is synchronous; the route reads the body, the grant runs in a worker thread)."""

    def __init__(self, uri: str, method: str, headers: Mapping[str, str], data: dict[str, str]):
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)
        self._args = data if method == "GET" else {}
        self._form = data if method != "GET" else {}
        self.session_id = ""

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


# --- the provider ----------------------------------------------------------------------------
@dataclass
class OidcProvider:
    """The provider's state and storage; ``server`` is the Authlib authorization server."""

    sessions: sessionmaker[Session]
    settings: HubSettings
    keys: SigningKeys
    identity: Any = None  # qiao.identity.service.IdentityService, for names and auth_time
    server: Server = field(init=False)

    def __post_init__(self) -> None:
        self.server = Server(self)
        self.server.register_token_generator(
            "default",
            BearerTokenGenerator(
                self._access_token,
                lambda *_a, **_k: secrets.token_urlsafe(32),
                lambda _client, _grant: self.settings.oidc_access_token_seconds,
            ),
        )
        self.server.register_grant(CodeGrant, [S256Challenge(required=True), OpenIDExtension(self)])
        self.server.register_grant(RefreshGrant)

    @property
    def issuer(self) -> str:
        return self.settings.public_url

    def current_claims(self, claims: dict[str, Any]) -> dict[str, Any] | None:
        """The claims of a refresh: what was true at sign-in (names, amr, auth_time) with
        the organization and roles the user holds now; None when the user has since been
        disabled or removed. Roles that need a second factor stay withheld when the sign-in
        had none, as for hub sessions."""
        state = getattr(self.identity, "user_state", None)
        if not callable(state):
            return claims
        user = state(str(claims.get("preferred_username", "")))
        if user is None or user.disabled:
            return None
        roles = set(user.roles)
        if not any(a in SECOND_FACTORS for a in claims.get("amr", ())):
            roles -= MFA_ROLES
        return {**claims, "org": user.org or "", "roles": sorted(r.value for r in roles)}

    def url(self, path: str) -> str:
        return self.issuer + path

    # storage -------------------------------------------------------------------------------
    def client(self, client_id: str) -> Client | None:
        with self.sessions() as s:
            row = s.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
        if row is None or row.revoked_at is not None:
            return None
        return Client(row)

    def _access_token(self, client: Client, grant_type: str, user: SignedInUser, scope: str) -> str:
        row = client.row
        extra: dict[str, Any] = {
            k: user.claims[k] for k in ("name", "org", "roles", "amr", "acr") if k in user.claims
        }
        if row.app_code:
            extra["app"] = f"{self.settings.instance}/{row.org_code}/{row.app_code}"
        return issue_access_token(
            self.keys,
            issuer=self.issuer,
            # The app's own organization's nodes, and the hub's userinfo endpoint.
            audience=[node_audience(self.settings.instance, row.org_code), self.issuer],
            client_id=client.client_id,
            subject=user.subject,
            scope=scope,
            ttl=timedelta(seconds=self.settings.oidc_access_token_seconds),
            extra=extra,
        )

    def save_token(self, token: dict[str, Any], request: StarletteRequest) -> None:
        refresh = token.get("refresh_token")
        if not refresh:
            return
        user: SignedInUser = request.user
        old: Refresh | None = request.refresh_token
        code: Code | None = request.authorization_code
        family = old.row.family if old else secrets.token_urlsafe(16)
        session_id = old.row.session_id if old else (code.row.session_id if code else "")
        now = utcnow()
        with self.sessions.begin() as s:
            s.add(
                OidcRefreshToken(
                    token_hash=_digest(refresh),
                    family=family,
                    client_id=request.client.get_client_id(),
                    subject=user.subject,
                    claims=json.dumps(user.claims),
                    scope=token.get("scope", ""),
                    session_id=session_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.oidc_refresh_token_seconds),
                )
            )
            if code is not None:
                s.execute(
                    update(OidcAuthorizationCode)
                    .where(OidcAuthorizationCode.id == code.row.id)
                    .values(family=family)
                )
            s.add(
                _event(
                    "oidc.token.issue",
                    client=request.client.get_client_id(),
                    subject=user.subject,
                    grant=request.payload.grant_type,
                )
            )

    def revoke_family(self, s: Session, family: str, reason: str) -> None:
        if not family:
            return
        s.execute(
            update(OidcRefreshToken)
            .where(OidcRefreshToken.family == family, OidcRefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        s.add(_event("oidc.token.revoke", family=family[:8], reason=reason))

    def revoke_session(self, session_id: str) -> int:
        """Revoke every refresh token issued under one hub session (sign-out)."""
        if not session_id:
            return 0
        with self.sessions.begin() as s:
            n = _rowcount(
                s.execute(
                    update(OidcRefreshToken)
                    .where(
                        OidcRefreshToken.session_id == session_id,
                        OidcRefreshToken.revoked_at.is_(None),
                    )
                    .values(revoked_at=utcnow())
                )
            )
            if n:
                s.add(_event("oidc.token.revoke", reason="sign-out", count=n))
        return n

    def user_claims(self, who: Principal, session_token: str) -> dict[str, Any]:
        """What an ID token and userinfo say about a signed-in user (OpenID Connect Core §5.1
        plus the organization and roles the department application needs). ``auth_time``
        is when the hub session began (§2), from the identity service."""
        amr = list(who.amr) or ["pwd"]
        mfa = any(a in ("otp", "hwk", "swk", "mfa") for a in amr)
        if mfa and "mfa" not in amr:
            amr.append("mfa")  # RFC 8176 §2: "mfa" when more than one factor was used
        username = who.subject.removeprefix("user:")
        name, auth_time = username, int(time.time())
        info = getattr(self.identity, "session_info", None)
        if session_token and callable(info):
            try:
                user, session = info(session_token)
                name = user.name or username
                auth_time = int(session.created_at.timestamp())
            except Problem:
                pass
        return {
            "preferred_username": username,
            "name": name,
            "org": who.org or "",
            "roles": sorted(r.value for r in who.roles),
            "amr": amr,
            "acr": ACR_MFA if mfa else ACR_PASSWORD,
            "auth_time": auth_time,
        }

    def discovery(self) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 §3."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/oauth2/authorize"),
            "token_endpoint": self.url("/oauth2/token"),
            "userinfo_endpoint": self.url("/oauth2/userinfo"),
            "jwks_uri": self.url("/oauth2/jwks"),
            "end_session_endpoint": self.url("/oauth2/logout"),
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "acr",
                "amr",
                "name",
                "preferred_username",
                "org",
                "roles",
            ],
            "acr_values_supported": [ACR_PASSWORD, ACR_MFA],
        }


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (the session's ``Result`` is a ``CursorResult`` for DML)."""
    return int(result.rowcount or 0)


def _event(action: str, **detail: Any) -> AdminEvent:
    """A row for the record of administrative actions (and so the ledger)."""
    return AdminEvent(
        action=action,
        actor=current_actor.get(),
        detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
    )


class Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.provider = provider

    def query_client(self, client_id: str) -> Client | None:
        return self.provider.client(client_id)

    def save_token(self, token: dict[str, Any], request: StarletteRequest) -> None:
        self.provider.save_token(token, request)

    def create_oauth2_request(self, request: StarletteRequest) -> StarletteRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        hdrs = dict(headers or [])
        if isinstance(body, dict):
            hdrs.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=hdrs)
        return Response(body or "", status_code=status, headers=hdrs)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) with ``S256`` required of every client, confidential ones too
    (RFC 9700 §2.1.1); ``plain`` would give away the verifier to anyone who sees the
    authorization request."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "Missing 'code_challenge': PKCE with S256 is required",
                redirect_uri=redirect_uri,
            )
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "'code_challenge_method' must be S256", redirect_uri=redirect_uri
            )
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'")
        super().validate_code_verifier(grant, result)

    def get_authorization_code_challenge(self, authorization_code: Code) -> str:
        return authorization_code.row.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: Code) -> str:
        return authorization_code.row.code_challenge_method


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]

    @property
    def provider(self) -> OidcProvider:
        return self.server.provider  # type: ignore[no-any-return]

    def save_authorization_code(self, code: str, request: StarletteRequest) -> None:
        user: SignedInUser = request.user
        data = request.payload.data
        now = utcnow()
        with self.provider.sessions.begin() as s:
            s.add(
                OidcAuthorizationCode(
                    code_hash=_digest(code),
                    client_id=request.client.get_client_id(),
                    subject=user.subject,
                    claims=json.dumps(user.claims),
                    redirect_uri=request.payload.redirect_uri or "",
                    scope=request.payload.scope or "",
                    nonce=data.get("nonce") or "",
                    code_challenge=data.get("code_challenge", ""),
                    code_challenge_method=data.get("code_challenge_method", "S256"),
                    session_id=request.session_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.provider.settings.oidc_code_seconds),
                )
            )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        """Find the code and claim it in one statement, so that of two concurrent redemptions
        exactly one wins. A code presented a second time is a replay: the tokens issued from
        it are revoked (RFC 6749 §4.1.2, §10.5)."""
        digest = _digest(code)
        with self.provider.sessions.begin() as s:
            row = s.scalar(
                select(OidcAuthorizationCode).where(OidcAuthorizationCode.code_hash == digest)
            )
            if row is None or row.client_id != client.get_client_id():
                return None
            claimed = _rowcount(
                s.execute(
                    update(OidcAuthorizationCode)
                    .where(
                        OidcAuthorizationCode.id == row.id, OidcAuthorizationCode.used_at.is_(None)
                    )
                    .values(used_at=utcnow())
                )
            )
            if not claimed:
                self.provider.revoke_family(s, row.family, "authorization code replayed")
                return None
            if row.expires_at <= utcnow():
                return None
            return Code(row)

    def delete_authorization_code(self, authorization_code: Code) -> None:
        return None  # already marked used when it was claimed

    def authenticate_user(self, authorization_code: Code) -> SignedInUser:
        return SignedInUser(authorization_code.row.subject, authorization_code.claims)


class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def provider(self) -> OidcProvider:
        return self.server.provider  # type: ignore[no-any-return]

    def authenticate_refresh_token(self, refresh_token: str) -> Refresh | None:
        """Claim the token for this one use. A token already used (or revoked) means it was
        copied: revoke its family, so neither the thief nor the client can go on (RFC 9700
        §4.14.2)."""
        digest = _digest(refresh_token)
        with self.provider.sessions.begin() as s:
            row = s.scalar(select(OidcRefreshToken).where(OidcRefreshToken.token_hash == digest))
            if row is None:
                return None
            claimed = _rowcount(
                s.execute(
                    update(OidcRefreshToken)
                    .where(
                        OidcRefreshToken.id == row.id,
                        OidcRefreshToken.used_at.is_(None),
                        OidcRefreshToken.revoked_at.is_(None),
                    )
                    .values(used_at=utcnow())
                )
            )
            if not claimed:
                self.provider.revoke_family(s, row.family, "refresh token reused")
                return None
            if row.expires_at <= utcnow():
                return None
            claims = self.provider.current_claims(json.loads(row.claims))
            if claims is None:
                # Disabled or removed since sign-in: no more tokens for this authorization.
                self.provider.revoke_family(s, row.family, "user disabled")
                return None
            return Refresh(row, claims)

    def authenticate_user(self, refresh_token: Refresh) -> SignedInUser:
        return SignedInUser(refresh_token.row.subject, refresh_token.claims)

    def revoke_old_credential(self, refresh_token: Refresh) -> None:
        return None  # marked used when it was claimed


class OpenIDExtension(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: StarletteRequest) -> bool:
        # A nonce seen before for this client is a replayed authorization request.
        with self.provider.sessions() as s:
            return (
                s.scalar(
                    select(OidcAuthorizationCode.id).where(
                        OidcAuthorizationCode.client_id == request.payload.client_id,
                        OidcAuthorizationCode.nonce == nonce,
                    )
                )
                is not None
            )

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.provider.keys.current()[1]

    def get_client_algorithm(self, client: Client) -> str:
        return ALGORITHM

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": ALGORITHM, "kid": self.provider.keys.current()[0], "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.provider.issuer,
            "aud": [client.get_client_id()],
            "iat": now,
            "exp": now + self.provider.settings.oidc_id_token_seconds,
        }

    def generate_user_info(self, user: SignedInUser, scope: str) -> UserInfo:
        return user_info(user.subject, user.claims, scope)


def user_info(subject: str, claims: dict[str, Any], scope: str) -> UserInfo:
    info = UserInfo(sub=subject)
    scopes = set((scope or "").split())
    if "profile" in scopes:
        info["name"] = claims.get("name", "")
        info["preferred_username"] = claims.get("preferred_username", "")
    if "qiao" in scopes or "profile" in scopes:
        info["org"] = claims.get("org", "")
        info["roles"] = claims.get("roles", [])
    return info


# --- HTTP ----------------------------------------------------------------------------------
class ClientIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    redirect_uris: list[str] = Field(min_length=1, max_length=20)
    post_logout_redirect_uris: list[str] = Field(default_factory=list, max_length=20)
    public: bool = Field(False, description="A public client (no secret): native or browser app")
    app: str = Field("", max_length=64, description="The exchange app this client acts as")


def check_redirect_uri(uri: str) -> str:
    """A redirect URI the provider accepts: absolute, no fragment (RFC 6749 §3.1.2), https, or
    http on the loopback interface for native apps (RFC 8252 §7.3)."""
    if len(uri) > 2000:
        raise Problem(problems.VALIDATION, "a redirect URI is longer than 2000 characters")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise Problem(problems.VALIDATION, f"not a URI: {uri!r}") from None
    if parts.fragment or "#" in uri:
        raise Problem(problems.VALIDATION, f"a redirect URI must not have a fragment: {uri}")
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and loopback:
        return uri
    raise Problem(
        problems.VALIDATION,
        f"redirect URI {uri!r} must be https:// (or http:// on 127.0.0.1 for a native app)",
    )


_LOGIN_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>统一身份认证 · 登录</title></head>
<body>
<main>
<h1>统一身份认证</h1>
<p>{client}</p>
<form id="login">
<label>用户名 <input name="username" autocomplete="username" required></label><br>
<label>密码 <input name="password" type="password" autocomplete="current-password" required>
</label><br>
<label>动态口令 <input name="otp" inputmode="numeric" autocomplete="one-time-code"></label><br>
<button type="submit">登录</button>
<p id="error" role="alert"></p>
</form>
</main>
<script>
document.getElementById("login").addEventListener("submit", async (e) => {{
  e.preventDefault();
  const f = new FormData(e.target);
  const r = await fetch("/api/v1/session", {{method: "POST", credentials: "same-origin",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{username: f.get("username"), password: f.get("password"),
                          otp: f.get("otp") || null}})}});
  if (r.ok) {{ window.location.assign({next}); }}
  else {{ const p = await r.json(); document.getElementById("error").textContent =
    p.detail || p.title; }}
}});
</script>
</body></html>
"""


async def _oauth_request(request: Request, provider: OidcProvider) -> StarletteRequest:
    data: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        data.update({k: v for k, v in form.items() if isinstance(v, str)})
    # The issuer's own URL, not the Host header: behind a reverse proxy the request URL is
    # internal, and Authlib refuses plain http outside loopback (RFC 6749 §3.1, §10.9).
    uri = provider.url(request.url.path)
    if request.url.query:
        uri += "?" + request.url.query
    r = StarletteRequest(uri, request.method, request.headers, data)
    r.session_id = _session_id(request)
    return r


async def _signed_in_user(request: Request) -> Principal | None:
    try:
        who = await caller(request)
    except Problem:
        return None
    # Only a person signed in to the hub may authorize an app; tokens act for no one.
    return who if who.kind == "user" else None


def install(app: FastAPI, registry: RegistryService, settings: HubSettings, identity: Any) -> None:
    """Add the OpenID Connect provider's routes to the hub."""
    sessions = session_factory(registry.engine)
    provider = OidcProvider(
        sessions,
        settings,
        SigningKeys(sessions, timedelta(seconds=settings.oidc_key_overlap_seconds)),
        identity,
    )
    app.state.oidc = provider
    server = provider.server
    # Delegation to external identity providers shares the provider's tables.
    from qiao.identity import federation

    federation.install(app, registry, settings, identity)

    @app.get("/.well-known/openid-configuration", include_in_schema=False)
    def discovery() -> dict[str, Any]:
        return provider.discovery()

    @app.get("/oauth2/jwks", include_in_schema=False)
    def jwks() -> Response:
        return JSONResponse(provider.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    @app.get("/oauth2/authorize", include_in_schema=False)
    async def authorize(request: Request) -> Response:
        req = await _oauth_request(request, provider)
        who = await _signed_in_user(request)
        user = None
        if who is not None:
            cookie = request.cookies.get(SESSION_COOKIE, "")
            claims = await run_in_threadpool(provider.user_claims, who, cookie)
            user = SignedInUser(who.subject, claims)
        try:
            grant = await run_in_threadpool(server.get_consent_grant, req, user)
        except OAuth2Error as error:
            if error.redirect_uri:
                return server.handle_error_response(req, error)  # type: ignore[no-any-return]
            # Never redirect to an unvalidated URI (RFC 6749 §4.1.2.1): tell the person.
            return HTMLResponse(
                f"<!doctype html><p>登录请求无效 (invalid request): "
                f"{html.escape(error.error)} — {html.escape(error.description or '')}</p>",
                status_code=400,
            )
        except ValueError:
            # authlib's error quotes the request's value (an unknown response_type ...) and
            # refuses to when it holds characters an error_description may not (RFC 6749
            # §4.1.2.1, §5.2): the request is malformed all the same.
            return HTMLResponse(
                "<!doctype html><p>登录请求无效 (invalid request): a parameter holds "
                "characters OAuth 2.0 does not allow (RFC 6749 Appendix A)</p>",
                status_code=400,
            )
        prompt = req.payload.data.get("prompt", "")
        if user is None or "login" in prompt.split():
            next_url = request.url.path + "?" + request.url.query
            if "login" in prompt.split():
                # Ask once: drop prompt=login from where the login page sends the user back.
                q = [(k, v) for k, v in request.query_params.multi_items() if k != "prompt"]
                next_url = request.url.path + "?" + urlencode(q)
            return RedirectResponse("/oauth2/login?" + urlencode({"next": next_url}), 303)
        return await run_in_threadpool(server.create_authorization_response, req, user, grant)

    @app.get("/oauth2/login", include_in_schema=False)
    def login_page(next: str = "/") -> HTMLResponse:
        # Only send the person back into this provider's own authorization endpoint: anything
        # else would make the page an open redirector.
        if not next.startswith("/oauth2/authorize?"):
            next = "/"
        return HTMLResponse(
            _LOGIN_PAGE.format(client="", next=json.dumps(next)),
            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
        )

    @app.post("/oauth2/token", include_in_schema=False)
    async def token(request: Request) -> Response:
        req = await _oauth_request(request, provider)
        resp: Response = await run_in_threadpool(server.create_token_response, req)
        resp.headers["Cache-Control"] = "no-store"  # RFC 6749 §5.1
        return resp

    async def _userinfo(request: Request) -> Response:
        value = request.headers.get("authorization", "")
        scheme, _, tok = value.partition(" ")
        challenge = 'Bearer error="invalid_token"'
        if scheme.lower() != "bearer" or not tok:
            return JSONResponse({"error": "invalid_token"}, 401, {"WWW-Authenticate": "Bearer"})
        try:
            at = verify_access_token(
                tok.strip(), provider.keys.jwks(), issuer=provider.issuer, audience=provider.issuer
            )
        except TokenRefused as exc:
            return JSONResponse(
                {"error": "invalid_token", "error_description": str(exc)},
                401,
                {"WWW-Authenticate": challenge},
            )
        return JSONResponse(dict(user_info(at.subject, at.claims, at.scope)))

    app.add_api_route(
        "/oauth2/userinfo", _userinfo, methods=["GET", "POST"], include_in_schema=False
    )

    @app.get("/oauth2/logout", include_in_schema=False)
    async def logout(
        request: Request,
        id_token_hint: str = "",
        post_logout_redirect_uri: str = "",
        state: str = "",
        client_id: str = "",
    ) -> Response:
        """RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2): ends the hub
        session and revokes the refresh tokens issued under it, then returns the person to
        the app's registered post-logout URI."""
        hinted = _client_from_hint(provider, id_token_hint)
        cid = hinted or client_id
        target = ""
        if post_logout_redirect_uri:
            client = provider.client(cid) if cid else None
            # §3: the URI must be registered for the client the ID token names.
            if client is None or post_logout_redirect_uri not in client.post_logout_redirect_uris:
                return HTMLResponse(
                    "<!doctype html><p>退出请求无效：未登记的返回地址 "
                    "(post_logout_redirect_uri not registered)</p>",
                    400,
                )
            target = post_logout_redirect_uri
            if state:
                target += ("&" if "?" in target else "?") + urlencode({"state": state})
        await run_in_threadpool(provider.revoke_session, _session_id(request))
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie:
            await run_in_threadpool(_end_hub_session, identity, cookie)
        resp: Response = (
            RedirectResponse(target, 303)
            if target
            else HTMLResponse("<!doctype html><p>您已退出登录 (signed out).</p>")
        )
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # --- client registration by an organization administrator -----------------------------
    @app.post("/api/v1/orgs/{org}/oidc-clients", status_code=201, tags=["sso"])
    def register_client(
        org: str, body: ClientIn, who: Principal = Depends(require(Role.ORG_ADMIN))
    ) -> dict[str, Any]:
        """Register a department application as an OpenID Connect client (the secret of a
        confidential client is shown once)."""
        need(who, Role.ORG_ADMIN, org=org)
        if org not in {o.code for o in registry.list_organizations()}:
            raise Problem(problems.NOT_FOUND, f"no organization {org}")
        uris = [check_redirect_uri(u) for u in body.redirect_uris]
        logout_uris = [check_redirect_uri(u) for u in body.post_logout_redirect_uris]
        if body.app and body.app not in _org_apps(registry, org):
            raise Problem(problems.NOT_FOUND, f"organization {org} has no app {body.app!r}")
        client_id = "qc_" + secrets.token_urlsafe(16)
        secret = "" if body.public else secrets.token_urlsafe(32)
        with sessions.begin() as s:
            s.add(
                OidcClient(
                    client_id=client_id,
                    org_code=org,
                    app_code=body.app,
                    name=body.name,
                    secret_hash=_digest(secret) if secret else "",
                    redirect_uris=json.dumps(uris),
                    post_logout_redirect_uris=json.dumps(logout_uris),
                    created_by=who.subject,
                )
            )
            s.add(
                _event(
                    "oidc.client.register",
                    org=org,
                    client=client_id,
                    name=body.name,
                    public=body.public,
                    app=body.app,
                )
            )
        out: dict[str, Any] = {
            "client_id": client_id,
            "org": org,
            "app": body.app,
            "name": body.name,
            "public": body.public,
            "redirect_uris": uris,
            "post_logout_redirect_uris": logout_uris,
            "issuer": provider.issuer,
        }
        if secret:
            out["client_secret"] = secret
        return out

    @app.get("/api/v1/orgs/{org}/oidc-clients", tags=["sso"])
    def list_clients(
        org: str, who: Principal = Depends(require(Role.ORG_ADMIN, Role.AUDITOR))
    ) -> list[dict[str, Any]]:
        need(who, Role.ORG_ADMIN, Role.AUDITOR, org=org)
        with sessions() as s:
            rows = s.scalars(
                select(OidcClient).where(OidcClient.org_code == org).order_by(OidcClient.id)
            )
            return [
                {
                    "client_id": r.client_id,
                    "name": r.name,
                    "app": r.app_code,
                    "public": not r.secret_hash,
                    "redirect_uris": json.loads(r.redirect_uris),
                    "created_by": r.created_by,
                    "created_at": r.created_at.isoformat(),
                    "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                }
                for r in rows
            ]

    @app.delete("/api/v1/orgs/{org}/oidc-clients/{client_id}", status_code=204, tags=["sso"])
    def revoke_client(
        org: str, client_id: str, who: Principal = Depends(require(Role.ORG_ADMIN))
    ) -> Response:
        """Revoke a client: it can no longer sign anyone in, and its refresh tokens stop."""
        need(who, Role.ORG_ADMIN, org=org)
        with sessions.begin() as s:
            row = s.scalar(
                select(OidcClient).where(
                    OidcClient.client_id == client_id,
                    OidcClient.org_code == org,
                    OidcClient.revoked_at.is_(None),
                )
            )
            if row is None:
                raise Problem(problems.NOT_FOUND, f"no active client {client_id} in {org}")
            row.revoked_at = utcnow()
            s.execute(
                update(OidcRefreshToken)
                .where(
                    OidcRefreshToken.client_id == client_id, OidcRefreshToken.revoked_at.is_(None)
                )
                .values(revoked_at=utcnow())
            )
            s.add(_event("oidc.client.revoke", org=org, client=client_id))
        return Response(status_code=204)

    @app.post("/api/v1/oidc/keys/rotate", tags=["sso"])
    def rotate_keys(
        who: Principal = Depends(require(Role.SECURITY_OFFICER)),
    ) -> dict[str, str]:
        """Start signing with a new key; the old one stays in the JWKS for the overlap."""
        if who.org is not None and not who.is_platform_admin:
            raise Problem(problems.FORBIDDEN, "the platform's signing keys are platform-wide")
        kid = provider.keys.rotate()
        with sessions.begin() as s:
            s.add(_event("oidc.key.rotate", kid=kid))
        return {"kid": kid}


def _org_apps(registry: RegistryService, org: str) -> set[str]:
    return {a.code for a in registry.list_apps(org)}


def _client_from_hint(provider: OidcProvider, id_token_hint: str) -> str:
    """The client an ID token was issued to, if the hint is one of ours. Expiry is not
    checked: a person signing out of an app whose ID token expired must still be able to."""
    if not id_token_hint:
        return ""
    try:
        tok = jwt.decode(
            id_token_hint,
            KeySet.import_key_set(cast(Any, provider.keys.jwks())),
            algorithms=[ALGORITHM],
        )
    except (JoseError, ValueError):
        return ""
    if tok.claims.get("iss") != provider.issuer:
        return ""
    aud = tok.claims.get("aud")
    return str(aud[0] if isinstance(aud, list) and aud else aud or "")


def _end_hub_session(identity: Any, cookie: str) -> None:
    """End the person's hub session through the identity service, whichever name it gives
    that operation."""
    for name in ("end_session", "sign_out", "revoke_session", "logout"):
        method = getattr(identity, name, None)
        if callable(method):
            method(cookie)
            return


__all__ = ["OidcProvider", "install"]
