"""Who is calling the hub: authenticators and the role checks every endpoint uses.

An authenticator looks at a request and returns the ``Principal`` behind it, or ``None``
when the request carries nothing it understands. The hub asks each in turn: operator and
access tokens (``Authorization: Bearer qop_...``) are built in; the identity service adds
signed-in users' sessions and OIDC access tokens. A request that none of them recognizes
is 401; a recognized caller without the role is 403.

Endpoints declare what they need::

    @app.get("/x", dependencies=[Depends(require(Role.AUDITOR))])
    def x(...): ...

    @app.post("/orgs/{org}/y")
    def y(org: str, who: Principal = Depends(require(Role.DATA_STEWARD))):
        need(who, Role.DATA_STEWARD, org=org)   # the organization from the path or the body

The dependencies are async on purpose: the actor they set for the record of administrative
actions must live in the request's own context, which the endpoint's worker thread inherits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from qiao import problems
from qiao.identity import sessions
from qiao.identity.roles import Principal, Role
from qiao.problems import Problem
from qiao.registry.services import RegistryService, current_actor

Authenticator = Callable[[Request], Awaitable[Principal | None]]


def bearer(request: Request) -> str | None:
    """The bearer token of the request (RFC 6750 §2.1), if it sends one."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_authenticator(registry: RegistryService) -> Authenticator:
    """Operator tokens and organization-scoped access tokens (``qop_...``)."""

    async def authenticate(request: Request) -> Principal | None:
        token = bearer(request)
        if token is None or not token.startswith("qop_"):
            return None
        who = await run_in_threadpool(registry.check_operator_token, token)
        if who is None:
            raise Problem(problems.FORBIDDEN, "the token is not valid")
        return who

    return authenticate


class SessionDirectory(Protocol):
    """What the session authenticator needs from the identity service."""

    def principal_for_session(self, token: str, client_address: str) -> Principal | None: ...


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def check_origin(request: Request, allowed: frozenset[str]) -> None:
    """Refuse a cross-site request: the Origin (or, lacking it, the Referer) must be the
    hub's own or an allowed one (OWASP CSRF Prevention, "verifying origin with standard
    headers"). Browsers send Origin on every cross-origin POST (RFC 6454 §7, Fetch)."""
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        origin = sessions.origin_of(request.headers["referer"])
    if origin is not None and origin.lower() not in allowed:
        raise Problem(problems.CSRF_REFUSED, f"requests from {origin} are not accepted")


def session_authenticator(identity: SessionDirectory, allowed: frozenset[str]) -> Authenticator:
    """Signed-in users' session cookies (``qiao_session``). A request that sends any
    Authorization header is left to the token authenticators: a bearer caller is not a
    browser, and must not be judged by a cookie it happens to carry.

    Unsafe methods need the session's CSRF token in ``X-CSRF-Token`` and a same-origin
    Origin: SameSite cookies alone do not cover same-site sibling hosts or old browsers."""

    async def authenticate(request: Request) -> Principal | None:
        if request.headers.get("authorization"):
            return None
        token = request.cookies.get(sessions.COOKIE)
        if not token:
            return None
        who = await run_in_threadpool(
            identity.principal_for_session, token, client_address(request)
        )
        if who is None:
            raise Problem(problems.SESSION_EXPIRED, "the session has ended; sign in again")
        if request.method in sessions.UNSAFE_METHODS:
            check_origin(request, allowed)
            if not sessions.csrf_matches(token, request.headers.get(sessions.CSRF_HEADER, "")):
                raise Problem(
                    problems.CSRF_REFUSED,
                    f"send the session's CSRF token in {sessions.CSRF_HEADER}",
                )
        return who

    return authenticate


def install(app: Any, registry: RegistryService) -> None:
    """Give the app its list of authenticators, starting with the token authenticator."""
    app.state.authenticators = [token_authenticator(registry)]


async def caller(request: Request) -> Principal:
    """The authenticated caller; 401 if the request names none."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    authenticators: list[Authenticator] = request.app.state.authenticators
    for authenticate in authenticators:
        who = await authenticate(request)
        if who is not None:
            request.state.principal = who
            current_actor.set(who.subject)
            return who
    raise Problem(
        problems.UNAUTHORIZED,
        "sign in, or send Authorization: Bearer <token>",
    )


def require(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller must hold one of ``roles`` (in some organization). Check the
    organization the call is about with ``need`` once the endpoint knows it."""

    async def dependency(request: Request) -> Principal:
        who = await caller(request)
        if not who.has(*roles):
            raise Problem(problems.FORBIDDEN, _missing(roles))
        return who

    return dependency


def need(who: Principal, *roles: Role, org: str) -> None:
    """Raise 403 unless ``who`` holds one of ``roles`` in ``org``."""
    if not who.has(*roles, org=org):
        raise Problem(problems.FORBIDDEN, _missing(roles) + f" in organization {org}")


def _missing(roles: tuple[Role, ...]) -> str:
    return "this needs the role " + " or ".join(r.value for r in roles)
