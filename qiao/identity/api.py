"""Identity on the hub: sign-in, sessions, MFA enrollment, users and their roles.

Routes (all JSON; errors are problem+json):

- ``POST /api/v1/session`` sign in (password, then TOTP or a recovery code); sets the
  ``qiao_session`` cookie and returns the CSRF token; ``GET`` who am I; ``DELETE`` sign out;
  ``POST /api/v1/session/revoke-all`` sign out everywhere; ``GET /api/v1/sessions`` and
  ``DELETE /api/v1/sessions/{id}`` the user's own sessions.
- ``/api/v1/me/mfa/...`` TOTP enrollment and recovery codes; ``PUT /api/v1/me/password``.
- ``/api/v1/users...`` users of an organization, for its administrators (auditors read).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from qiao import problems
from qiao.config import HubSettings
from qiao.hub.auth import (
    caller,
    check_origin,
    client_address,
    require,
    session_authenticator,
)
from qiao.identity import sessions
from qiao.identity.roles import Principal, Role, parse_roles
from qiao.identity.service import (
    IdentityService,
    SecondFactorNeeded,
    SignInRefused,
    has_second_factor,
)
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem
from qiao.registry.services import RegistryService

TAGS: list[str | Enum] = ["identity"]


class SignInBody(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(None, max_length=12, description="6-digit TOTP code")
    recovery_code: str | None = Field(None, max_length=40)


class UserBody(BaseModel):
    username: str = Field(min_length=2, max_length=64, description="Sign-in name (a-z 0-9 . _ -)")
    org: str | None = Field(None, description="Organization (USCC); none for platform admins")
    roles: list[str] = Field(min_length=1, max_length=7)
    name: str = Field("", max_length=200)
    password: str | None = Field(
        None, max_length=256, description="Initial password; generated and returned when absent"
    )


class RolesBody(BaseModel):
    roles: list[str] = Field(max_length=7)


class CodeBody(BaseModel):
    code: str = Field(min_length=1, max_length=12)


class PasswordBody(BaseModel):
    current: str = Field(min_length=1, max_length=256)
    new: str = Field(min_length=1, max_length=256)


def _roles(values: list[str]) -> frozenset[Role]:
    try:
        return parse_roles(values)
    except ValueError as exc:
        raise Problem(problems.VALIDATION, str(exc)) from None


def _refused(exc: SignInRefused, instance: str) -> Response:
    # The same answer for a wrong name, password, code or a locked account (no user
    # enumeration); Retry-After (RFC 9110 §10.2.3) while a lockout is in force.
    p = Problem(
        problems.SIGN_IN_FAILED,
        "the sign-in name, password or code is not right, or too many attempts were made; "
        "try again later",
    )
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    return Response(p.to_json(instance), 401, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


async def signed_in_user(request: Request) -> Principal:
    """A dependency: the caller must be a person signed in with a session."""
    who = await caller(request)
    if who.kind != "user" or request.cookies.get(sessions.COOKIE) is None:
        raise Problem(problems.FORBIDDEN, "this needs a signed-in user's session")
    return who


def _username(who: Principal) -> str:
    return who.subject.removeprefix("user:")


def install(app: FastAPI, registry: RegistryService, settings: HubSettings) -> None:
    """Add identity's routes and authenticators to the hub."""
    identity = IdentityService(registry, settings)
    app.state.identity = identity
    allowed = frozenset(
        o
        for o in (sessions.origin_of(u) for u in (settings.public_url, *settings.allowed_origins))
        if o
    )
    app.state.authenticators.append(session_authenticator(identity, allowed))
    secure = settings.session_cookie_secure
    samesite: Literal["lax", "strict"] = (
        "strict" if settings.session_cookie_samesite == "strict" else "lax"
    )

    def set_cookie(resp: Response, token: str) -> None:
        resp.set_cookie(
            sessions.COOKIE, token, httponly=True, secure=secure, samesite=samesite, path="/"
        )

    def clear_cookie(resp: Response) -> None:
        resp.delete_cookie(
            sessions.COOKIE, httponly=True, secure=secure, samesite=samesite, path="/"
        )

    @app.post("/api/v1/session", tags=TAGS)
    async def sign_in(body: SignInBody, request: Request) -> Response:
        """Sign in with the sign-in name and password, plus a TOTP code (``otp``) or a
        recovery code when the user has enrolled TOTP. Sets the ``qiao_session`` cookie;
        send the returned ``csrf_token`` as ``X-CSRF-Token`` on unsafe requests."""
        check_origin(request, allowed)  # login CSRF
        try:
            result = await run_in_threadpool(
                lambda: identity.sign_in(
                    body.username,
                    body.password,
                    otp=body.otp or None,
                    recovery_code=body.recovery_code or None,
                    client_address=client_address(request),
                    user_agent=request.headers.get("user-agent", ""),
                )
            )
        except SignInRefused as exc:
            return _refused(exc, request.url.path)
        except SecondFactorNeeded:
            raise Problem(
                problems.MFA_REQUIRED, "send the code from your authenticator app as otp"
            ) from None
        resp = JSONResponse(
            {
                "csrf_token": result.csrf_token,
                "user": result.user.to_json(),
                "amr": list(result.amr),
                "mfa_required": result.mfa_required,
            },
            headers={"Cache-Control": "no-store"},
        )
        set_cookie(resp, result.session_token)
        return resp

    @app.get("/api/v1/session", tags=TAGS)
    async def who_am_i(request: Request, who: Principal = Depends(caller)) -> dict[str, Any]:
        """Who the caller is: a signed-in user (with the session and its CSRF token) or a
        token's holder."""
        out: dict[str, Any] = {
            "subject": who.subject,
            "kind": who.kind,
            "org": who.org,
            "roles": sorted(r.value for r in who.roles),
            "amr": list(who.amr),
        }
        token = request.cookies.get(sessions.COOKIE)
        if who.kind == "user" and token:
            user, session = await run_in_threadpool(identity.session_info, token)
            out["user"] = user.to_json()
            out["session"] = session.to_json(current=True)
            out["csrf_token"] = sessions.csrf_token(token)
            out["mfa_required"] = user.needs_mfa and not user.mfa_enrolled
        return out

    @app.delete("/api/v1/session", tags=TAGS, status_code=204)
    async def sign_out(request: Request, who: Principal = Depends(signed_in_user)) -> Response:
        """Sign out: end this session and clear the cookie."""
        await run_in_threadpool(identity.end_session, request.cookies[sessions.COOKIE])
        resp = Response(status_code=204)
        clear_cookie(resp)
        return resp

    @app.post("/api/v1/session/revoke-all", tags=TAGS)
    async def sign_out_everywhere(who: Principal = Depends(signed_in_user)) -> Response:
        """Sign out everywhere: end every session of the signed-in user, this one too."""
        n = await run_in_threadpool(identity.end_all_sessions, _username(who))
        resp = JSONResponse({"ended": n})
        clear_cookie(resp)
        return resp

    @app.get("/api/v1/sessions", tags=TAGS)
    def my_sessions(request: Request, who: Principal = Depends(signed_in_user)) -> dict[str, Any]:
        """The signed-in user's open sessions."""
        current = identity.session_info(request.cookies[sessions.COOKIE])[1].id
        return {
            "sessions": [
                s.to_json(current=s.id == current) for s in identity.list_sessions(_username(who))
            ]
        }

    @app.delete("/api/v1/sessions/{session_id}", tags=TAGS, status_code=204)
    def end_my_session(session_id: int, who: Principal = Depends(signed_in_user)) -> Response:
        """End one of the signed-in user's sessions (a browser left signed in elsewhere)."""
        identity.end_session_by_id(_username(who), session_id)
        return Response(status_code=204)

    @app.post("/api/v1/me/mfa/totp", tags=TAGS)
    def start_totp(who: Principal = Depends(signed_in_user)) -> dict[str, str]:
        """Start TOTP enrollment: scan the QR code (or type the secret) into an
        authenticator app, then confirm with its first code."""
        e = identity.start_totp(_username(who))
        return {"secret": e.secret, "otpauth_uri": e.uri, "qr_code": e.qr}

    @app.post("/api/v1/me/mfa/totp/confirm", tags=TAGS)
    def confirm_totp(
        body: CodeBody, request: Request, who: Principal = Depends(signed_in_user)
    ) -> JSONResponse:
        """Confirm TOTP with the first code; returns ten single-use recovery codes, shown
        only now. This session counts as signed in with the second factor from now on."""
        codes = identity.confirm_totp(
            _username(who), body.code, request.cookies.get(sessions.COOKIE)
        )
        return JSONResponse({"recovery_codes": codes}, headers={"Cache-Control": "no-store"})

    @app.post("/api/v1/me/mfa/recovery-codes", tags=TAGS)
    def new_recovery_codes(who: Principal = Depends(signed_in_user)) -> JSONResponse:
        """Replace the recovery codes (the old ones stop working); needs a session signed in
        with the second factor."""
        if not has_second_factor(who.amr):
            raise Problem(problems.FORBIDDEN, "sign in with your second factor first")
        codes = identity.regenerate_recovery_codes(_username(who))
        return JSONResponse({"recovery_codes": codes}, headers={"Cache-Control": "no-store"})

    @app.put("/api/v1/me/password", tags=TAGS, status_code=204)
    def change_password(
        request: Request, body: PasswordBody, who: Principal = Depends(signed_in_user)
    ) -> Response:
        """Change one's own password (the current one is asked again). Every other session
        of the user ends; this one stays."""
        current = identity.session_info(request.cookies[sessions.COOKIE])[1].id
        identity.change_password(
            identity.user_id(_username(who)), body.current, body.new, keep_session=current
        )
        return Response(status_code=204)

    readers = Depends(require(Role.ORG_ADMIN, Role.AUDITOR))
    admins = Depends(require(Role.ORG_ADMIN))

    @app.get("/api/v1/users", tags=TAGS)
    def users(org: str | None = None, who: Principal = readers) -> list[dict[str, Any]]:
        """Users of an organization (default: the caller's own). Organization administrators
        and auditors see their own organization; platform administrators any."""
        return [u.to_json() for u in identity.list_users(who, org)]

    @app.post("/api/v1/users", tags=TAGS, status_code=201)
    def add_user(body: UserBody, who: Principal = admins) -> JSONResponse:
        """Create a user in an organization (its administrators; nobody grants a role they
        do not hold). Returns the initial password once when none was given."""
        view, generated = identity.add_user(
            who,
            body.username,
            org=body.org,
            roles=_roles(body.roles),
            name=body.name,
            password=body.password,
        )
        out = view.to_json()
        if generated:
            out["initial_password"] = generated
        return JSONResponse(out, 201, headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/users/{username}", tags=TAGS)
    def user(username: str, who: Principal = readers) -> dict[str, Any]:
        return identity.get_user(who, username).to_json()

    @app.post("/api/v1/users/{username}/disable", tags=TAGS)
    def disable(username: str, who: Principal = admins) -> dict[str, Any]:
        """Disable a user: their sessions end and they cannot sign in."""
        return identity.set_disabled(who, username, True).to_json()

    @app.post("/api/v1/users/{username}/enable", tags=TAGS)
    def enable(username: str, who: Principal = admins) -> dict[str, Any]:
        return identity.set_disabled(who, username, False).to_json()

    @app.put("/api/v1/users/{username}/roles", tags=TAGS)
    def set_roles(username: str, body: RolesBody, who: Principal = admins) -> dict[str, Any]:
        """Replace a user's roles (you may add only roles you hold yourself)."""
        return identity.set_roles(who, username, _roles(body.roles)).to_json()

    @app.post(
        "/api/v1/users/{username}/mfa-reset",
        tags=TAGS,
        responses={
            200: {"description": "Reset: the second administrator's call"},
            202: {"description": "Pending: another administrator must confirm within the hour"},
        },
    )
    def mfa_reset(username: str, who: Principal = admins) -> JSONResponse:
        """Reset a user's MFA: needs two different administrators. The first call answers
        202 ``pending``; a second administrator's call within the hour resets (200)."""
        status = identity.request_mfa_reset(who, username)
        return JSONResponse({"status": status}, 200 if status == "reset" else 202)

    # Single sign-on (OpenID Connect provider), qiao/identity/oidc.py.
    from qiao.identity import oidc

    oidc.install(app, registry, settings, getattr(app.state, "identity", None))
