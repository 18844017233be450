"""What every console page shares: who is asking, rendering in their language, CSRF checks,
and turning redirects and problems into HTML answers (docs/console.md).

``Console`` holds these for the areas of the console, each in its own module registering
its routes on the console's router (``views.py`` for sign-in, the dashboard and the catalog;
``requests.py``; ``agreements.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import jinja2
from babel.dates import format_datetime
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from qiao import __version__, problems
from qiao.agreements.document import CST
from qiao.catalog.service import CatalogService
from qiao.config import HubSettings
from qiao.console import i18n
from qiao.console.security import (
    PRE_SESSION_COOKIE,
    ConsoleKeys,
    new_pre_session_cookie,
    safe_next,
)
from qiao.hub.auth import check_origin, client_address
from qiao.identity import sessions
from qiao.identity.roles import Principal, Role
from qiao.identity.service import IdentityService, UserView, has_second_factor
from qiao.problems import Problem
from qiao.registry.services import RegistryService, current_actor

log = logging.getLogger("qiao.console")

HERE = Path(__file__).parent
PAGE_SIZE = 20
# Lists are pages of at most this many rows from the service (offset with a cap): a page
# beyond it says to narrow the filters instead.
MAX_PAGES = 50
CSRF_FIELD = "csrf_token"

T = TypeVar("T")


@dataclass(frozen=True)
class Section:
    """A part of the console in its navigation. ``href`` None: coming in a later release.
    ``roles`` None: everyone signed in; else who sees it (a platform administrator sees all)."""

    key: str
    href: str | None
    roles: frozenset[Role] | None = None


# Who reads requests: as GET /api/v1/requests (qiao/agreements/api.py, ``Reader``).
REQUEST_READERS = frozenset(
    {Role.ORG_ADMIN, Role.APP_DEVELOPER, Role.DATA_STEWARD, Role.APPROVER, Role.AUDITOR}
)

SECTIONS = (
    Section("dashboard", "/console/"),
    Section("catalog", "/console/catalog"),
    Section("requests", "/console/requests", REQUEST_READERS),
    Section("agreements", "/console/agreements"),  # every caller, as GET /api/v1/agreements
    # Audit: as qiao/console/audit.py (AUDIT_READERS); the registry: as its APIs' readers.
    Section(
        "audit", "/console/audit", frozenset({Role.AUDITOR, Role.SECURITY_OFFICER, Role.ORG_ADMIN})
    ),
    Section(
        "registry",
        "/console/registry",
        frozenset({Role.ORG_ADMIN, Role.SECURITY_OFFICER, Role.AUDITOR}),
    ),
)


@dataclass(frozen=True)
class Viewer:
    """The signed-in person a page is rendered for."""

    who: Principal
    user: UserView
    session_token: str
    org_name: str

    @property
    def csrf_token(self) -> str:
        return sessions.csrf_token(self.session_token)

    @property
    def enrollment_due(self) -> bool:
        """The person's roles need TOTP, and this session has no second factor."""
        return self.user.needs_mfa and not has_second_factor(self.who.amr)

    def sees(self, section: Section) -> bool:
        return section.roles is None or self.who.has(*section.roles)


class Redirect(Exception):
    """Raised inside a page to answer with a 303 to ``location``."""

    def __init__(self, location: str, *, end_session_cookie: bool = False) -> None:
        super().__init__(location)
        self.location = location
        self.end_session_cookie = end_session_cookie


def sign_in_url(next_url: str | None = None) -> str:
    return "/console/sign-in?" + urlencode({"next": safe_next(next_url)})


def here(request: Request) -> str:
    q = request.url.query
    return request.url.path + (f"?{q}" if q else "")


def _environment(lang: i18n.Language) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name (OWASP XSS Prevention, rule 1)
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # New-style gettext: translations are escaped like any other value, and take keywords.
    env.install_gettext_translations(i18n.load_translations(lang), newstyle=True)  # type: ignore[attr-defined]

    def when(value: datetime | None) -> str:
        # Every time on China Standard Time, the time the deadlines and validity are set in
        # (docs/agreements.md), whatever zone the value was stored or made in.
        if value is None:
            return ""
        if value.tzinfo is None:  # stored as UTC without its zone
            value = value.replace(tzinfo=UTC)
        return format_datetime(value, "medium", tzinfo=CST, locale=lang.locale)

    env.filters["when"] = when
    return env


class Pages:
    """Renders the templates in the request's language."""

    def __init__(self, settings: HubSettings, keys: ConsoleKeys) -> None:
        self._envs = {lang.code: _environment(lang) for lang in i18n.LANGUAGES}
        self._settings = settings
        self.keys = keys

    @staticmethod
    def language(request: Request) -> i18n.Language:
        return i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))

    def render(
        self,
        request: Request,
        template: str,
        *,
        viewer: Viewer | None = None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = self.language(request)
        pre_cookie: str | None = None
        if viewer is not None:
            csrf = viewer.csrf_token
        else:
            # Forms before sign-in (sign-in, the language switch) use the pre-session token.
            pre_cookie = request.cookies.get(PRE_SESSION_COOKIE) or new_pre_session_cookie()
            csrf = self.keys.pre_session_token(pre_cookie)
        html = (
            self._envs[lang.code]
            .get_template(template)
            .render(
                lang=lang,
                languages=i18n.LANGUAGES,
                viewer=viewer,
                # Until enrollment every other page sends back to it: no navigation meanwhile.
                nav=[
                    s
                    for s in SECTIONS
                    if viewer is not None and not viewer.enrollment_due and viewer.sees(s)
                ],
                csrf_field=CSRF_FIELD,
                csrf_token=csrf,
                here=here(request),
                version=__version__,
                **context,
            )
        )
        resp = HTMLResponse(html, status_code=status)
        if pre_cookie is not None and pre_cookie != request.cookies.get(PRE_SESSION_COOKIE):
            resp.set_cookie(
                PRE_SESSION_COOKIE,
                pre_cookie,
                httponly=True,
                secure=self._settings.session_cookie_secure,
                samesite="strict",
                path="/console",
            )
        return resp


class FormValues(Mapping[str, str]):
    """A posted form: one value per name (the first), and every value of a repeated name
    (checkboxes) through ``getlist``."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._multi: dict[str, list[str]] = {}
        for k, v in pairs:
            self._multi.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> str:
        return self._multi[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._multi)

    def __len__(self) -> int:
        return len(self._multi)

    def getlist(self, key: str) -> list[str]:
        return list(self._multi.get(key, ()))


@dataclass(frozen=True)
class Paged:
    """One page of a list the service returned whole (at most its cap of rows)."""

    rows: list[Any]
    page_no: int
    pages_total: int
    total: int


def paginate(rows: list[T], page_param: str | None) -> Paged:
    try:
        page_no = max(1, int(page_param or "1"))
    except ValueError:
        page_no = 1
    pages_total = min(MAX_PAGES, max(1, -(-len(rows) // PAGE_SIZE)))
    page_no = min(page_no, pages_total)
    start = (page_no - 1) * PAGE_SIZE
    return Paged(rows[start : start + PAGE_SIZE], page_no, pages_total, len(rows))


class Console:
    """The helpers every page uses: who is asking (``viewer``), the posted form (``form``),
    the CSRF check (``check_csrf``), rendering (``render``), and ``page``, the decorator that
    turns redirects and problems into HTML answers."""

    def __init__(self, app: FastAPI, registry: RegistryService, settings: HubSettings) -> None:
        self.app = app
        self.registry = registry
        self.settings = settings
        self.identity: IdentityService = app.state.identity
        self.catalog: CatalogService = app.state.catalog
        self.keys = ConsoleKeys.load_or_create(registry.keys.data_dir or settings.data_dir)
        self.pages = Pages(settings, self.keys)
        self.allowed = frozenset(
            o
            for o in (
                sessions.origin_of(u) for u in (settings.public_url, *settings.allowed_origins)
            )
            if o
        )
        self.secure = settings.session_cookie_secure
        self.samesite: Literal["lax", "strict"] = (
            "strict" if settings.session_cookie_samesite == "strict" else "lax"
        )

    # --- who is asking ------------------------------------------------------------------------
    def org_name(self, org: str | None) -> str:
        if org is None:
            return ""
        return self.catalog.organization_names().get(org, org)

    async def viewer(self, request: Request, *, enrolling: bool = False) -> Viewer:
        """The signed-in person, or a redirect to sign-in (and, unless ``enrolling``, to
        TOTP enrollment for those whose roles need it). Bearer tokens do not count here:
        the console is for people in a browser."""
        token = request.cookies.get(sessions.COOKIE)
        back = here(request) if request.method == "GET" else None
        if not token:
            raise Redirect(sign_in_url(back))
        who = await run_in_threadpool(
            self.identity.principal_for_session, token, client_address(request)
        )
        if who is None:  # ended, timed out, or used from another address
            raise Redirect(sign_in_url(back), end_session_cookie=True)
        current_actor.set(who.subject)
        user, _session = await run_in_threadpool(self.identity.session_info, token)
        v = Viewer(who, user, token, await run_in_threadpool(self.org_name, user.org))
        request.state.console_viewer = v  # for an error page later in the same request
        if v.enrollment_due and not enrolling:
            raise Redirect("/console/mfa")
        return v

    @staticmethod
    def require(v: Viewer, roles: frozenset[Role] | tuple[Role, ...]) -> None:
        """The role at the door, as the JSON API's ``require`` (qiao.hub.auth): 403 unless
        the person holds one of ``roles`` somewhere. Which organization the call is about is
        the service's to check, as for the API."""
        if not v.who.has(*roles):
            raise Problem(
                problems.FORBIDDEN,
                "this needs the role " + " or ".join(sorted(r.value for r in roles)),
            )

    # --- forms ------------------------------------------------------------------------------
    @staticmethod
    async def form(request: Request) -> FormValues:
        data = await request.form()
        return FormValues([(k, v) for k, v in data.multi_items() if isinstance(v, str)])

    @staticmethod
    def presented(request: Request, data: Mapping[str, str]) -> str:
        # The form's field; or the header the JSON API uses, for scripted clients (htmx).
        return data.get(CSRF_FIELD) or request.headers.get(sessions.CSRF_HEADER, "")

    def check_csrf(self, request: Request, data: Mapping[str, str], v: Viewer | None) -> None:
        """The Origin (or Referer) must be the hub's, and the token the session's. Forms
        shown before sign-in (``v`` None: sign-in, the language switch) carry the
        pre-session token, or the session's when the browser has one."""
        check_origin(request, self.allowed)
        token = self.presented(request, data)
        if v is not None:
            ok = sessions.csrf_matches(v.session_token, token)
        else:
            cookie = request.cookies.get(sessions.COOKIE)
            ok = self.keys.pre_session_matches(request.cookies.get(PRE_SESSION_COOKIE), token) or (
                cookie is not None and sessions.csrf_matches(cookie, token)
            )
        if not ok:
            raise Problem(problems.CSRF_REFUSED, "the form's CSRF token is missing or wrong")

    async def posted(self, request: Request, v: Viewer) -> FormValues:
        """The form of a signed-in person's POST, its CSRF token checked first."""
        data = await self.form(request)
        self.check_csrf(request, data, v)
        return data

    # --- answers ----------------------------------------------------------------------------
    def render(
        self,
        request: Request,
        template: str,
        *,
        viewer: Viewer | None = None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        return self.pages.render(request, template, viewer=viewer, status=status, **context)

    def page(self, fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """Pages answer in HTML: redirects for sign-in, error pages for problems."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Response:
            request: Request = kwargs["request"]
            try:
                return await fn(*args, **kwargs)
            except Redirect as r:
                resp: Response = RedirectResponse(r.location, status_code=303)
                if r.end_session_cookie:
                    resp.delete_cookie(
                        sessions.COOKIE,
                        httponly=True,
                        secure=self.secure,
                        samesite=self.samesite,
                        path="/",
                    )
                return resp
            except Problem as p:
                if p.status >= 500:
                    log.error("console page %s failed: %s", request.url.path, p)
                v = getattr(request.state, "console_viewer", None)
                return self.render(request, "error.html", status=p.status, problem=p, viewer=v)

        return wrapper

    @staticmethod
    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A service call, off the event loop (the services are synchronous)."""
        return await run_in_threadpool(fn, *args, **kwargs)
