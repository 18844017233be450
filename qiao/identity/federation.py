"""Sign-in delegated to an external OpenID Connect identity provider (a provincial unified
identity platform, 省统一身份认证平台), and the relying-party client the hub uses for it.

The hub is then a relying party: ``/api/v1/session/external/{idp}/start`` sends the person
to the IdP with ``state``, ``nonce`` and PKCE S256; the callback checks all three, verifies the
ID token with Authlib (signature against the IdP's JWKS, ``iss``, ``aud``, ``exp``, ``nonce``,
``at_hash``), maps the IdP's claims to a Qiao user (``map_claims``: organization by USCC, IdP
groups to roles by an explicit table, never platform administrator unless that table says
so), finds or provisions the user and opens an ordinary hub session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from authlib.integrations.base_client import BaseApp, OAuth2Mixin, OpenIDMixin
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from joserfc.errors import JoseError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from qiao import problems
from qiao.catalog.validators import is_valid_uscc
from qiao.config import ExternalIdpSettings, HubSettings
from qiao.db import session_factory, utcnow
from qiao.identity.oidc_models import FederationState
from qiao.identity.roles import Role
from qiao.problems import Problem
from qiao.registry.models import AdminEvent
from qiao.registry.services import RegistryService

STATE_SECONDS = 600


class RelyingParty(OAuth2Mixin, OpenIDMixin, BaseApp):  # type: ignore[misc]
    """An OpenID Connect relying party on Authlib's own client (httpx underneath), without a
    web framework: the caller keeps ``state``, ``nonce`` and the PKCE verifier itself.

    ``RelyingParty(client_id=..., client_secret=..., server_metadata_url=issuer +
    "/.well-known/openid-configuration", client_kwargs={"scope": "openid profile",
    "code_challenge_method": "S256"})``, then ``create_authorization_url(redirect_uri)``,
    ``fetch_access_token(redirect_uri, code=..., code_verifier=...)`` and
    ``parse_id_token(token, nonce)``, which verifies the ID token."""

    client_cls = OAuth2Client

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)

    def _on_update_token(
        self, token: Any, refresh_token: Any = None, access_token: Any = None
    ) -> None:
        return None


@dataclass(frozen=True)
class ExternalUser:
    """Who the external IdP says the person is, in Qiao's terms."""

    idp: str
    username: str  # "{idp}:{the IdP's username}", never colliding with local accounts
    name: str
    org: str
    roles: frozenset[Role]
    amr: tuple[str, ...]


class FederationRefused(Exception):
    """The IdP's answer does not let this person in; the message says why."""


def _claim_values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def map_claims(
    idp: str, conf: ExternalIdpSettings, claims: dict[str, Any], known_orgs: set[str]
) -> ExternalUser:
    """Map an external ID token's claims to a Qiao user. Pure: no database, no network.

    - the username claim must be present; it is namespaced by the IdP;
    - the organization claim must be a valid USCC of a registered organization, and in
      ``allowed_orgs`` when that list is set;
    - roles come only from ``role_map`` (IdP value → Qiao role); unknown values give nothing,
      and platform-admin never (the settings refuse mapping it);
    - ``amr`` is carried through so the hub can tell whether the IdP did MFA."""
    username = str(claims.get(conf.username_claim) or "").strip()
    if not username or len(username) > 100:
        raise FederationRefused(f"the identity provider sent no usable {conf.username_claim!r}")
    org = str(claims.get(conf.org_claim) or "").strip().upper()
    if not org:
        raise FederationRefused(f"the identity provider sent no organization ({conf.org_claim!r})")
    if not is_valid_uscc(org):
        raise FederationRefused(f"{org!r} is not a valid unified social credit code")
    if org not in known_orgs:
        raise FederationRefused(f"organization {org} is not registered at this hub")
    if conf.allowed_orgs and org not in conf.allowed_orgs:
        raise FederationRefused(f"organization {org} may not sign in through {idp}")
    roles: set[Role] = set()
    for value in _claim_values(claims.get(conf.roles_claim)):
        mapped = conf.role_map.get(value)
        if mapped:
            roles.add(Role(mapped))
    amr = tuple(_claim_values(claims.get("amr")))
    if conf.require_mfa and not (set(amr) & {"mfa", "otp", "hwk", "swk", "sms"}):
        raise FederationRefused(f"{idp} did not report a second factor (amr {list(amr)})")
    name = str(claims.get(conf.name_claim) or username)[:200]
    return ExternalUser(idp, f"{idp}:{username}", name, org, frozenset(roles), amr)


class FederatedDirectory(Protocol):
    """What delegation needs from the identity service (``qiao.identity.service``)."""

    def external_sign_in(
        self, user: ExternalUser, *, provision: bool, client_address: str
    ) -> tuple[str, str]:
        """Find (or, with ``provision``, create) the user and open a hub session for it;
        return (session token, CSRF token). Raises ``Problem`` to refuse."""
        ...


def relying_party(conf: ExternalIdpSettings) -> RelyingParty:
    return RelyingParty(
        client_id=conf.client_id,
        client_secret=conf.client_secret or None,
        server_metadata_url=conf.issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": conf.scope,
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": ("client_secret_basic" if conf.client_secret else "none"),
            "timeout": 10.0,
        },
    )


def _digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def install(
    app: FastAPI,
    registry: RegistryService,
    settings: HubSettings,
    identity: FederatedDirectory | None,
) -> None:
    """Add ``/api/v1/session/external/{idp}/start`` and ``.../callback`` for each configured
    external identity provider."""
    sessions: sessionmaker[Session] = session_factory(registry.engine)
    parties: dict[str, RelyingParty] = {}

    def party(idp: str) -> tuple[ExternalIdpSettings, RelyingParty]:
        conf = settings.external_idps.get(idp)
        if conf is None:
            raise Problem(problems.NOT_FOUND, f"no external identity provider {idp!r}")
        if idp not in parties:
            parties[idp] = relying_party(conf)
        return conf, parties[idp]

    def callback_url(idp: str) -> str:
        return f"{settings.public_url}/api/v1/session/external/{idp}/callback"

    @app.get("/api/v1/session/external/{idp}/start", tags=["session"])
    async def start(idp: str, next: str = "/") -> Response:
        """Send the person to the external identity provider to sign in."""
        _conf, rp = party(idp)
        if not next.startswith("/") or next.startswith("//"):
            next = "/"  # only back into this hub: never an open redirector
        try:
            auth = await run_in_threadpool(rp.create_authorization_url, callback_url(idp))
        except Exception as exc:  # the IdP's discovery document is unreachable or broken
            raise Problem(
                problems.EXTERNAL_IDP_FAILED, f"{idp} could not be reached: {exc}"
            ) from exc
        now = utcnow()
        with sessions.begin() as s:
            s.add(
                FederationState(
                    state_hash=_digest(auth["state"]),
                    idp=idp,
                    nonce=auth["nonce"],
                    code_verifier=auth["code_verifier"],
                    next_url=next[:2000],
                    created_at=now,
                    expires_at=now + timedelta(seconds=STATE_SECONDS),
                )
            )
        return RedirectResponse(auth["url"], 303)

    @app.get("/api/v1/session/external/{idp}/callback", tags=["session"])
    async def callback(request: Request, idp: str) -> Response:
        """Where the external identity provider sends the person back."""
        conf, rp = party(idp)
        q = request.query_params
        if q.get("error"):
            raise Problem(
                problems.EXTERNAL_SIGN_IN_REFUSED,
                f"{idp} refused the sign-in: {q.get('error')} {q.get('error_description', '')}",
            )
        state, code = q.get("state", ""), q.get("code", "")
        if not state or not code:
            raise Problem(problems.EXTERNAL_SIGN_IN_REFUSED, "the callback lacks code or state")
        with sessions.begin() as s:
            row = s.scalar(
                select(FederationState).where(FederationState.state_hash == _digest(state))
            )
            claimed = (
                row is not None
                and s.execute(
                    update(FederationState)
                    .where(FederationState.id == row.id, FederationState.used_at.is_(None))
                    .values(used_at=utcnow())
                ).rowcount  # type: ignore[attr-defined]
                == 1
            )
            if row is None or not claimed or row.idp != idp or row.expires_at <= utcnow():
                raise Problem(
                    problems.EXTERNAL_SIGN_IN_REFUSED,
                    "the sign-in state is unknown, used or expired: start again",
                )
            nonce, verifier, next_url = row.nonce, row.code_verifier, row.next_url

        def finish() -> dict[str, Any]:
            token = rp.fetch_access_token(callback_url(idp), code=code, code_verifier=verifier)
            return dict(rp.parse_id_token(token, nonce))

        try:
            claims = await run_in_threadpool(finish)
        except (OAuthError, JoseError, ValueError) as exc:
            raise Problem(
                problems.EXTERNAL_SIGN_IN_REFUSED, f"{idp}'s answer does not verify: {exc}"
            ) from exc
        except Exception as exc:
            raise Problem(problems.EXTERNAL_IDP_FAILED, f"{idp} failed: {exc}") from exc
        known = {o.code for o in registry.list_organizations()}
        try:
            user = map_claims(idp, conf, claims, known)
        except FederationRefused as exc:
            with sessions.begin() as s:
                s.add(_event("session.external.refused", idp=idp, reason=str(exc)))
            raise Problem(problems.EXTERNAL_SIGN_IN_REFUSED, str(exc)) from exc
        if identity is None:
            raise Problem(problems.INTERNAL, "the identity service is not installed")
        client_address = request.client.host if request.client else ""
        token, _csrf = await run_in_threadpool(
            lambda: identity.external_sign_in(
                user, provision=conf.provision, client_address=client_address
            )
        )
        resp = RedirectResponse(next_url or "/", 303)
        secure = settings.public_url.startswith("https://")
        resp.set_cookie(
            "qiao_session", token, httponly=True, secure=secure, samesite="lax", path="/"
        )
        return resp


def _event(action: str, **detail: Any) -> AdminEvent:
    import json

    from qiao.registry.services import current_actor

    return AdminEvent(
        action=action,
        actor=current_actor.get(),
        detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
    )


__all__ = [
    "ExternalUser",
    "FederatedDirectory",
    "FederationRefused",
    "RelyingParty",
    "install",
    "map_claims",
    "relying_party",
]
