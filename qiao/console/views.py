"""The console's pages, served by the hub under ``/console/`` (docs/console.md).

Server-rendered HTML from Jinja2 templates, plain forms that work without JavaScript. Each
page asks the identity service who the session belongs to and the domain services for its
data, through the same calls and checks as the JSON API; nothing here checks a password or
a code itself.

Every page but sign-in needs a live session: without one the browser is sent to the sign-in
page with ``next=`` so it comes back after signing in. A person whose roles require TOTP and
who has not enrolled it yet is sent to enrollment first (the identity service withholds
those roles until then anyway). Every form carries a CSRF token and every POST checks it,
with the Origin, before anything else happens.

This module holds sign-in, enrollment, the dashboard and the catalog; the helpers every page
shares are ``Console`` (core.py), and requests and agreements register their own routes
(requests.py, agreements.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from qiao import problems
from qiao.agreements.service import DECIDERS, AgreementService
from qiao.catalog.schema import derive_schemas
from qiao.catalog.search import MAX_WINDOW, SearchQuery
from qiao.catalog.spec import CodeList, DataElement, SharingType
from qiao.config import HubSettings
from qiao.console import i18n
from qiao.console.agreements import install_agreements
from qiao.console.audit import install_audit
from qiao.console.core import HERE, PAGE_SIZE, Console, Redirect, Viewer, sign_in_url
from qiao.console.dashboard import FigureCache, events_per_stream, exchange_figures
from qiao.console.registry import expiring_certificates, install_registry
from qiao.console.requests import access_offer, install_requests
from qiao.console.sample import masked_fields, masked_sample
from qiao.console.security import (
    PENDING_COOKIE,
    PENDING_SECONDS,
    SecurityHeaders,
    safe_next,
)
from qiao.db import utcnow
from qiao.hub.auth import client_address
from qiao.identity import sessions
from qiao.identity.roles import Principal
from qiao.identity.service import SecondFactorNeeded, SignInRefused
from qiao.ledger.service import HubLedger
from qiao.problems import Problem
from qiao.registry.services import RegistryService

__all__ = ["install"]

# The dashboard lists this many of one's pending requests, nearest deadline first.
DASHBOARD_PENDING = 8


def install(app: FastAPI, registry: RegistryService, settings: HubSettings) -> None:
    """Add the console's pages, static files and headers to the hub (after identity, the
    catalog and the agreements, whose services it uses)."""
    console = Console(app, registry, settings)
    router = APIRouter(prefix="/console", include_in_schema=False)
    install_pages(console, router)
    install_requests(console, router)
    install_agreements(console, router)
    install_audit(console, router)
    install_registry(console, router)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_middleware(SecurityHeaders)

    if not any(getattr(r, "path", None) == "/" for r in app.routes):

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/console/", status_code=303)


def install_pages(console: Console, router: APIRouter) -> None:
    """Sign-in, TOTP enrollment, the dashboard and the catalog."""
    identity, catalog, keys = console.identity, console.catalog, console.keys
    pages, page, viewer = console.pages, console.page, console.viewer
    form, check_csrf = console.form, console.check_csrf
    secure, samesite = console.secure, console.samesite
    ledger: HubLedger = console.app.state.ledger
    agreements: AgreementService = console.app.state.agreements
    figure_cache = FigureCache()
    app_state = console.app.state
    app_state.console_figures = figure_cache  # for tests and operators to clear

    def signed_in_response(location: str, token: str) -> Response:
        resp = RedirectResponse(location, status_code=303)
        resp.set_cookie(
            sessions.COOKIE, token, httponly=True, secure=secure, samesite=samesite, path="/"
        )
        resp.delete_cookie(PENDING_COOKIE, path="/console/sign-in", secure=secure, httponly=True)
        return resp

    # --- sign-in ------------------------------------------------------------------------------
    def sign_in_page(
        request: Request, *, error: str | None = None, retry_after: int | None = None,
        username: str = "", next_url: str = "", status: int = 200,
    ) -> HTMLResponse:  # fmt: skip
        resp = pages.render(
            request,
            "sign_in.html",
            status=status,
            error=error,
            retry_minutes=-(-(retry_after or 0) // 60),
            username=username,
            next_url=safe_next(next_url),
            signed_out="signed_out" in request.query_params,
        )
        resp.delete_cookie(PENDING_COOKIE, path="/console/sign-in", secure=secure, httponly=True)
        return resp

    def refused_message(exc: SignInRefused) -> str:
        # The same words for a wrong name, password or code; a lockout says to wait.
        return "locked" if exc.retry_after else "refused"

    @router.get("/sign-in")
    @page
    async def sign_in_form(request: Request) -> Response:
        nxt = request.query_params.get("next", "")
        token = request.cookies.get(sessions.COOKIE)
        if token:
            who: Principal | None = await run_in_threadpool(
                identity.principal_for_session, token, client_address(request)
            )
            if who is not None:  # signed in already
                raise Redirect(safe_next(nxt))
        return sign_in_page(request, next_url=nxt)

    @router.post("/sign-in")
    @page
    async def sign_in(request: Request) -> Response:
        data = await form(request)
        check_csrf(request, data, None)
        username, password = data.get("username", "").strip(), data.get("password", "")
        nxt = safe_next(data.get("next"))
        if not username or not password or len(username) > 64 or len(password) > 256:
            return sign_in_page(
                request, error="missing", username=username[:64], next_url=nxt, status=400
            )
        try:
            result = await run_in_threadpool(
                lambda: identity.sign_in(
                    username,
                    password,
                    client_address=client_address(request),
                    user_agent=request.headers.get("user-agent", ""),
                )
            )
        except SignInRefused as exc:
            return sign_in_page(
                request,
                error=refused_message(exc),
                retry_after=exc.retry_after,
                username=username,
                next_url=nxt,
                status=401,
            )
        except SecondFactorNeeded:
            resp = RedirectResponse(
                "/console/sign-in/code?" + urlencode({"next": nxt}), status_code=303
            )
            resp.set_cookie(
                PENDING_COOKIE,
                keys.seal_pending(username, password),
                max_age=PENDING_SECONDS,
                httponly=True,
                secure=secure,
                samesite="strict",
                path="/console/sign-in",
            )
            return resp
        return signed_in_response(
            "/console/mfa" if result.mfa_required else nxt, result.session_token
        )

    @router.get("/sign-in/code")
    @page
    async def code_form(request: Request) -> Response:
        nxt = safe_next(request.query_params.get("next"))
        if keys.open_pending(request.cookies.get(PENDING_COOKIE)) is None:
            return sign_in_page(request, error="expired", next_url=nxt, status=400)
        return pages.render(request, "sign_in_code.html", next_url=nxt, error=None)

    @router.post("/sign-in/code")
    @page
    async def sign_in_code(request: Request) -> Response:
        data = await form(request)
        check_csrf(request, data, None)
        nxt = safe_next(data.get("next"))
        pending = keys.open_pending(request.cookies.get(PENDING_COOKIE))
        if pending is None:
            return sign_in_page(request, error="expired", next_url=nxt, status=400)
        username, password = pending
        code = data.get("code", "").strip().replace(" ", "")[:40]
        if not code:
            return pages.render(
                request, "sign_in_code.html", next_url=nxt, error="missing", status=400
            )
        # Six digits are an authenticator's code; anything else is tried as a recovery code.
        is_otp = len(code) == 6 and code.isascii() and code.isdigit()
        try:
            result = await run_in_threadpool(
                lambda: identity.sign_in(
                    username,
                    password,
                    otp=code if is_otp else None,
                    recovery_code=None if is_otp else code,
                    client_address=client_address(request),
                    user_agent=request.headers.get("user-agent", ""),
                )
            )
        except SignInRefused as exc:
            if exc.retry_after:  # locked: start again after the wait
                return sign_in_page(
                    request,
                    error="locked",
                    retry_after=exc.retry_after,
                    username=username,
                    next_url=nxt,
                    status=401,
                )
            return pages.render(
                request, "sign_in_code.html", next_url=nxt, error="refused", status=401
            )
        except SecondFactorNeeded:  # the user's TOTP was reset meanwhile: start again
            return sign_in_page(request, error="expired", next_url=nxt, status=400)
        return signed_in_response(nxt, result.session_token)

    @router.post("/sign-out")
    @page
    async def sign_out(request: Request) -> Response:
        v = await viewer(request, enrolling=True)
        check_csrf(request, await form(request), v)
        await run_in_threadpool(identity.end_session, v.session_token)
        resp = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
        resp.delete_cookie(
            sessions.COOKIE, httponly=True, secure=secure, samesite=samesite, path="/"
        )
        return resp

    @router.post("/language")
    @page
    async def language(request: Request) -> Response:
        data = await form(request)
        check_csrf(request, data, None)
        lang = i18n.from_code(data.get("lang")) or i18n.DEFAULT
        resp = RedirectResponse(safe_next(data.get("next"), sign_in=True), status_code=303)
        resp.set_cookie(
            i18n.COOKIE,
            lang.code,
            max_age=365 * 24 * 3600,
            secure=secure,
            httponly=True,
            samesite="lax",
            path="/",
        )
        return resp

    # --- TOTP enrollment -------------------------------------------------------------------
    @router.get("/mfa")
    @page
    async def mfa_page(request: Request) -> Response:
        v = await viewer(request, enrolling=True)
        return pages.render(request, "mfa.html", viewer=v, step="intro", error=None)

    @router.post("/mfa/start")
    @page
    async def mfa_start(request: Request) -> Response:
        v = await viewer(request, enrolling=True)
        check_csrf(request, await form(request), v)
        e = await run_in_threadpool(identity.start_totp, v.user.username)
        return pages.render(
            request, "mfa.html", viewer=v, step="scan", error=None, qr=e.qr, secret=e.secret
        )

    @router.post("/mfa/confirm")
    @page
    async def mfa_confirm(request: Request) -> Response:
        v = await viewer(request, enrolling=True)
        data = await form(request)
        check_csrf(request, data, v)
        code = data.get("code", "").strip().replace(" ", "")[:12]
        try:
            codes = await run_in_threadpool(
                identity.confirm_totp, v.user.username, code, v.session_token
            )
        except Problem as p:
            if p.kind is not problems.SIGN_IN_FAILED and p.kind is not problems.VALIDATION:
                raise
            return pages.render(
                request, "mfa.html", viewer=v, step="scan", error="code", qr=None, status=400
            )
        # The session now counts as signed in with the second factor: it gets a new token
        # (a privilege change; the cookie the browser held before is worth nothing now).
        token = await run_in_threadpool(identity.rotate_session, v.session_token)
        who = await run_in_threadpool(
            identity.principal_for_session, token, client_address(request)
        )
        if who is None:
            raise Redirect(sign_in_url(), end_session_cookie=True)
        user, _session = await run_in_threadpool(identity.session_info, token)
        v = Viewer(who, user, token, v.org_name)
        resp = pages.render(request, "mfa.html", viewer=v, step="codes", error=None, codes=codes)
        resp.set_cookie(
            sessions.COOKIE, token, httponly=True, secure=secure, samesite=samesite, path="/"
        )
        return resp

    # --- dashboard --------------------------------------------------------------------------
    @router.get("/")
    @page
    async def dashboard(request: Request) -> Response:
        v = await viewer(request)

        def counts() -> dict[str, Any]:
            total = catalog.search(SearchQuery(limit=1))
            out: dict[str, Any] = {"all": total}
            for t in SharingType:
                out[t.value] = catalog.search(SearchQuery(sharing_type=t, limit=1))
            if v.user.org:
                out["own"] = catalog.search(SearchQuery(provider=v.user.org, limit=1))
            return out

        now = utcnow()
        own = None if v.who.is_platform_admin else (v.who.org or "").upper()
        names = await run_in_threadpool(catalog.organization_names)
        sessions = ledger.exchanges.sessions
        figures = await run_in_threadpool(
            figure_cache.get,
            ("exchanges", own),
            lambda: exchange_figures(sessions, own, names, now),
        )
        streams = await run_in_threadpool(
            figure_cache.get, ("events", own), lambda: events_per_stream(sessions, now, org=own)
        )
        pending: list[Any] = []
        # The inbox of those who decide their organization's requests (as requests.py).
        if v.who.org and v.who.has(*DECIDERS, org=v.who.org):
            inbox = await run_in_threadpool(
                lambda: agreements.list_requests(v.who, box="inbox", status="submitted")
            )
            pending = sorted(inbox, key=lambda r: r.deadline)[:DASHBOARD_PENDING]
        status = await run_in_threadpool(ledger.status)
        certs = await run_in_threadpool(expiring_certificates, console, v, now)
        witness_alerts = [w for w in status["witnesses"] if w.get("last_error") or "size" not in w]
        return pages.render(
            request,
            "dashboard.html",
            viewer=v,
            current="dashboard",
            counts=await run_in_threadpool(counts),
            figures=figures,
            streams=streams,
            pending=pending,
            ledger=status,
            cosigned_at=datetime.fromisoformat(status["cosigned_at"])
            if status["cosigned_at"]
            else None,
            alerts={
                "certificates": certs,
                "overdue": [r for r in pending if r.overdue],
                "witnesses": witness_alerts,
                "quorum": status["size"] > 0 and status["cosigned_size"] == 0,
            },
            names=names,
            scope=own,
        )

    # --- catalog ----------------------------------------------------------------------------
    @router.get("/catalog")
    @page
    async def catalog_search(request: Request) -> Response:
        v = await viewer(request)
        params = request.query_params
        q = " ".join(params.get("q", "").split())[:100]
        names = await run_in_threadpool(catalog.organization_names)
        provider = params.get("provider", "").strip().upper() or None
        if provider is not None and provider not in names:
            provider = None
        sharing = next((t for t in SharingType if t.value == params.get("sharing_type")), None)
        try:
            page_no = max(1, int(params.get("page", "1")))
        except ValueError:
            page_no = 1
        last_page = MAX_WINDOW // PAGE_SIZE
        page_no = min(page_no, last_page)
        found = await run_in_threadpool(
            catalog.search,
            SearchQuery(
                q,
                provider=provider,
                sharing_type=sharing,
                limit=PAGE_SIZE,
                offset=(page_no - 1) * PAGE_SIZE,
            ),
        )
        pages_total = min(last_page, max(1, -(-found.total // PAGE_SIZE)))
        filters = {"q": q, "provider": provider or "", "sharing_type": sharing or ""}

        def page_url(n: int) -> str:
            keep = {k: val for k, val in filters.items() if val}
            return "/console/catalog?" + urlencode({**keep, "page": n})

        return pages.render(
            request,
            "catalog.html",
            viewer=v,
            q=q,
            provider=provider or "",
            sharing_type=sharing.value if sharing else "",
            providers=sorted(names.items(), key=lambda kv: kv[1]),
            sharing_types=[t.value for t in SharingType],
            found=found,
            page_no=page_no,
            pages_total=pages_total,
            prev_url=page_url(page_no - 1) if page_no > 1 else None,
            next_url=page_url(page_no + 1) if page_no < pages_total else None,
        )

    @router.get("/catalog/{org}/{code}")
    @page
    async def resource(request: Request, org: str, code: str) -> Response:
        v = await viewer(request)

        def load() -> dict[str, Any]:
            published = catalog.get(org, code)
            spec = published.spec
            elements: dict[str, DataElement] = {}
            lists: dict[str, CodeList] = {}
            for item in (*spec.items, *spec.parameters):
                if item.element not in elements:
                    try:
                        elements[item.element] = catalog.get_element(item.element)[0]
                    except Problem:
                        continue  # shown as unknown in the table
            for el in elements.values():
                if el.code_list and el.code_list not in lists:
                    try:
                        lists[el.code_list] = catalog.get_code_list(el.code_list)[0]
                    except Problem:
                        continue
            try:
                schemas = derive_schemas(spec, elements, lists)
                schema_text = json.dumps(schemas["response"], ensure_ascii=False, indent=2)
            except ValueError:
                schema_text = ""
            # Issue 8: a fictional record as the default masking delivers it (sample.py).
            try:
                sample = masked_sample(spec, elements, lists)
                sample_text = json.dumps(sample, ensure_ascii=False, indent=2)
            except ValueError:
                sample_text = ""  # an unknown data element or code list: no type to show
            return {
                "published": published,
                "spec": spec,
                "elements": elements,
                "provider_name": catalog.organization_names().get(spec.provider, spec.provider),
                "schema_text": schema_text,
                "sample_text": sample_text,
                "masked_fields": masked_fields(spec, elements),
            }

        shown = await run_in_threadpool(load)
        offer = await access_offer(console, v, shown["spec"])
        return pages.render(request, "resource.html", viewer=v, offer=offer, **shown)
