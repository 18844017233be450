"""The registry in the console (docs/console.md, "Registry"): organizations and their apps,
nodes and their certificates (with expiry warnings), enrollment tokens, users and roles,
and the emergency mode panel.

Each page and form asks the same service as the JSON API after the same role at the door
(qiao/hub/app.py for the registry, qiao/identity/api.py for users, qiao/agreements/
emergency_api.py for emergencies); which organization a person may act for is checked as
the API checks it (``need``) or by the service itself (users, emergencies).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qiao import problems
from qiao.agreements.emergencies import EmergencyService
from qiao.console.core import Console, FormValues, Redirect, Viewer, paginate
from qiao.console.requests import FORM_ERRORS
from qiao.db import utcnow
from qiao.hub.auth import need
from qiao.identity.roles import Role, parse_roles
from qiao.problems import Problem
from qiao.registry.models import Certificate

# Who reads what, as the JSON API (see the module docstring).
ORG_READERS = frozenset({Role.ORG_ADMIN, Role.SECURITY_OFFICER, Role.AUDITOR})
NODE_READERS = frozenset({Role.SECURITY_OFFICER, Role.AUDITOR})
USER_READERS = frozenset({Role.ORG_ADMIN, Role.AUDITOR})
EMERGENCY_READERS = frozenset({Role.SECURITY_OFFICER, Role.AUDITOR})
# A certificate this close to its end is flagged amber; past it, red.
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class CertificateState:
    serial: str
    fingerprint: str
    not_after: datetime
    revoked: bool
    state: str  # "ok", "expiring" (≤ 30 days), "expired", "revoked"
    days_left: int


def certificate_state(c: Certificate, now: datetime) -> CertificateState:
    left = c.not_after - now
    if c.revoked_at is not None:
        state = "revoked"
    elif left <= timedelta(0):
        state = "expired"
    elif left <= EXPIRY_WARNING:
        state = "expiring"
    else:
        state = "ok"
    return CertificateState(
        c.serial, c.fingerprint, c.not_after, c.revoked_at is not None, state, left.days
    )


def expiring_certificates(console: Console, v: Viewer, now: datetime) -> list[tuple[str, Any]]:
    """(node, state) of the certificates ``v`` may read that expire within 30 days or have
    expired (unrevoked): the dashboard's alerts."""
    if not v.who.has(*NODE_READERS):
        return []
    out = []
    for n, certs in console.registry.list_nodes():
        if not (v.who.is_platform_admin or n.org_code == v.who.org):
            continue
        for c in certs:
            st = certificate_state(c, now)
            if st.state in ("expiring", "expired"):
                out.append((n.name, st))
    return out


def _roles(data: FormValues) -> frozenset[Role]:
    try:
        return parse_roles(data.getlist("roles"))
    except ValueError as exc:
        raise Problem(problems.VALIDATION, str(exc)) from exc


def install_registry(console: Console, router: APIRouter) -> None:
    """Add the registry pages to the console's router."""
    registry, identity = console.registry, console.identity
    emergencies: EmergencyService = console.app.state.emergencies
    page, viewer = console.page, console.viewer

    # --- organizations, apps, nodes, certificates, enrollment tokens --------------------------
    async def registry_page(
        request: Request, v: Viewer, *, error: Problem | None = None, **context: Any
    ) -> Response:
        console.require(v, ORG_READERS)
        now = utcnow()

        def load() -> dict[str, Any]:
            apps = registry.list_apps()
            nodes = [
                (n, [certificate_state(c, now) for c in certs])
                for n, certs in registry.list_nodes()
                if v.who.is_platform_admin or n.org_code == v.who.org
            ]
            return {
                # Pages of 20 (the registry holds hundreds of organizations, not millions).
                "organizations": paginate(
                    [
                        (o, [a for a in apps if a.org_code == o.code])
                        for o in registry.list_organizations()
                    ],
                    request.query_params.get("page"),
                ),
                "nodes": nodes if v.who.has(*NODE_READERS) else None,
            }

        return console.render(
            request,
            "registry.html",
            viewer=v,
            current="registry",
            status=error.status if error else 200,
            error=error,
            platform=v.who.is_platform_admin,
            # The forms offered, as the API allows them (the service checks again).
            may_add_app=lambda org: v.who.has(Role.ORG_ADMIN, org=org),
            may_enroll=lambda org: v.who.has(Role.SECURITY_OFFICER, org=org),
            typed=context.pop("typed", {}),
            token=context.pop("token", None),
            **await console.call(load),
            **context,
        )

    @router.get("/registry")
    @page
    async def registry_home(request: Request) -> Response:
        v = await viewer(request)
        return await registry_page(request, v)

    @router.post("/registry/organizations")
    @page
    async def add_organization(request: Request) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, (Role.PLATFORM_ADMIN,))  # as POST /api/v1/organizations
        try:
            await console.call(
                lambda: registry.add_organization(
                    data.get("code", "").strip()[:18],
                    data.get("name", "")[:200],
                    name_en=data.get("name_en", "")[:200],
                    kind=data.get("kind", "government")[:32] or "government",
                )
            )
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await registry_page(request, v, error=p, typed=dict(data))
        raise Redirect("/console/registry")

    @router.post("/registry/organizations/{org}/apps")
    @page
    async def add_app(request: Request, org: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, (Role.ORG_ADMIN,))  # as POST /api/v1/organizations/{org}/apps
        need(v.who, Role.ORG_ADMIN, org=org.upper())
        try:
            await console.call(
                registry.add_app, org, data.get("code", "").strip()[:64], data.get("name", "")[:200]
            )
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await registry_page(request, v, error=p)
        raise Redirect("/console/registry")

    @router.post("/registry/organizations/{org}/enrollment-tokens")
    @page
    async def enrollment_token(request: Request, org: str) -> Response:
        v = await viewer(request)
        await console.posted(request, v)
        console.require(v, (Role.SECURITY_OFFICER,))  # as the API's enrollment-tokens
        need(v.who, Role.SECURITY_OFFICER, org=org.upper())
        token, expires = await console.call(registry.create_enrollment_token, org)
        # Shown once, in this answer only (no-store): only its hash is kept.
        return await registry_page(
            request, v, token={"org": org.upper(), "token": token, "expires_at": expires}
        )

    # --- users and roles -------------------------------------------------------------------
    async def users_page(
        request: Request, v: Viewer, *, error: Problem | None = None, **context: Any
    ) -> Response:
        console.require(v, USER_READERS)
        org = request.query_params.get("org", "").strip().upper() or None
        users = await console.call(identity.list_users, v.who, org)
        return console.render(
            request,
            "registry_users.html",
            viewer=v,
            current="registry",
            status=error.status if error else 200,
            error=error,
            users=paginate(users, request.query_params.get("page")),
            query={"org": org} if org else {},
            org=org or "",
            all_roles=[r.value for r in Role],
            # Offer a change only where the service would make it (it checks again).
            may_manage=lambda u: (
                v.who.has(Role.ORG_ADMIN, org=u.org) if u.org else v.who.is_platform_admin
            ),
            grantable=[
                r.value
                for r in Role
                if (v.who.is_platform_admin or (r in v.who.roles and r is not Role.PLATFORM_ADMIN))
            ],
            created=context.pop("created", None),
            typed=context.pop("typed", {}),
            **context,
        )

    @router.get("/registry/users")
    @page
    async def users(request: Request) -> Response:
        v = await viewer(request)
        return await users_page(request, v)

    @router.post("/registry/users")
    @page
    async def add_user(request: Request) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, (Role.ORG_ADMIN,))  # as POST /api/v1/users
        org = data.get("org", "").strip().upper() or (
            None if v.who.is_platform_admin else v.who.org
        )
        try:
            view, password = await console.call(
                lambda: identity.add_user(
                    v.who,
                    data.get("username", "")[:64],
                    org=org,
                    roles=_roles(data),
                    name=data.get("name", "")[:200],
                )
            )
        except Problem as p:
            if p.status not in FORM_ERRORS and p.status != 403:
                raise
            return await users_page(request, v, error=p, typed=dict(data))
        return await users_page(request, v, created={"user": view, "password": password})

    def add_user_action(action: str) -> None:
        async def change_user(request: Request, username: str) -> Response:
            v = await viewer(request)
            data = await console.posted(request, v)
            console.require(v, (Role.ORG_ADMIN,))  # as the API's disable, enable, roles
            try:
                if action == "roles":
                    await console.call(identity.set_roles, v.who, username, _roles(data))
                else:
                    await console.call(identity.set_disabled, v.who, username, action == "disable")
            except Problem as p:
                if p.status not in FORM_ERRORS and p.status != 403:
                    raise
                return await users_page(request, v, error=p)
            raise Redirect("/console/registry/users")

        change_user.__name__ = f"user_{action}"
        router.post(f"/registry/users/{{username}}/{action}")(page(change_user))

    for user_action in ("disable", "enable", "roles"):
        add_user_action(user_action)

    # --- emergency mode -----------------------------------------------------------------------
    async def emergencies_page(
        request: Request,
        v: Viewer,
        *,
        error: Problem | None = None,
        typed: FormValues | None = None,
    ) -> Response:
        console.require(v, EMERGENCY_READERS)
        listed = await console.call(emergencies.list, v.who)
        return console.render(
            request,
            "registry_emergencies.html",
            viewer=v,
            current="registry",
            status=error.status if error else 200,
            error=error,
            listed=listed,
            admin=v.who.is_platform_admin,
            me=v.who.subject,
            typed=dict(typed or {}),
        )

    @router.get("/registry/emergencies")
    @page
    async def emergency_panel(request: Request) -> Response:
        v = await viewer(request)
        return await emergencies_page(request, v)

    @router.post("/registry/emergencies")
    @page
    async def declare(request: Request) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, (Role.PLATFORM_ADMIN,))  # as POST /api/v1/emergencies
        try:
            hours = int(data.get("hours", "0") or "0")
        except ValueError:
            hours = 0
        try:
            await console.call(
                lambda: emergencies.declare(
                    v.who,
                    resources=data.get("resources", "").split()[:1000],
                    organizations=data.get("organizations", "").split()[:1000],
                    reason=data.get("reason", "")[:2001],
                    duration_hours=hours,
                )
            )
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await emergencies_page(request, v, error=p, typed=data)
        raise Redirect("/console/registry/emergencies")

    def add_emergency_action(action: str) -> None:
        async def emergency_action(request: Request, emergency_id: str) -> Response:
            v = await viewer(request)
            data = await console.posted(request, v)
            console.require(v, (Role.PLATFORM_ADMIN,))  # as the API's confirm and end
            try:
                if action == "confirm":
                    await console.call(emergencies.confirm, v.who, emergency_id)
                else:
                    reason = data.get("reason", "")[:2001]
                    await console.call(emergencies.end, v.who, emergency_id, reason)
            except Problem as p:
                if p.status not in FORM_ERRORS:
                    raise
                return await emergencies_page(request, v, error=p)
            raise Redirect("/console/registry/emergencies")

        emergency_action.__name__ = f"emergency_{action}"
        router.post(f"/registry/emergencies/{{emergency_id}}/{action}")(page(emergency_action))

    for em_action in ("confirm", "end"):
        add_emergency_action(em_action)
