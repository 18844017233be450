"""Requests and approvals in the console (docs/console.md, "Requests"): applying for a
conditional resource and subscribing to an unconditional one from its page, the applicant's
and the approver's lists, a request's page with approval (narrowed) and refusal.

Every decision is the agreement service's, through the same calls as ``/api/v1/requests``
(qiao/agreements/api.py) with the same role at the door; the service checks the organization.
Forms only turn what was typed into an ``Application`` or a ``Narrowing``; when the service
says no (422, 409), the form comes back with its message and everything as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qiao import problems
from qiao.agreements.document import METHODS, MaskRule
from qiao.agreements.service import (
    APPLICANTS,
    DECIDERS,
    AgreementService,
    Application,
    Narrowing,
    RequestView,
    parse,
)
from qiao.catalog.spec import ResourceSpec, ResourceStatus, SharingType
from qiao.console.core import REQUEST_READERS, Console, FormValues, Redirect, Viewer, paginate
from qiao.identity.roles import Role
from qiao.problems import Problem

BOXES = ("inbox", "mine")
STATUSES = ("submitted", "approved", "refused", "withdrawn")
WEEKDAYS = (1, 2, 3, 4, 5, 6, 7)
# What a form shows back with its message instead of an error page: the service's "not like
# this" answers. Refusals (403) and unknown ids (404) are error pages.
FORM_ERRORS = (400, 409, 422)
_SPLIT = re.compile(r"[\s,，、;；]+")


def _codes(text: str) -> tuple[str, ...]:
    """Codes typed into one box, separated by spaces, commas or 、."""
    return tuple(dict.fromkeys(c for c in _SPLIT.split(text.strip()) if c))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _number(data: FormValues, name: str, what: str) -> int | None:
    raw = data.get(name, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise Problem(problems.VALIDATION, f"{what}: a whole number, please ({raw[:20]!r})")
    return int(raw)


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _rate(data: FormValues) -> dict[str, int] | None:
    requests = _number(data, "rate_requests", "rate: requests")
    seconds = _number(data, "rate_per_seconds", "rate: seconds")
    if requests is None and seconds is None:
        return None
    if requests is None or seconds is None:
        raise Problem(problems.VALIDATION, "a rate limit needs both its requests and its seconds")
    return {"requests": requests, "per_seconds": seconds}


def member(v: Viewer, roles: tuple[Role, ...], org: str) -> bool:
    """Whether the person acts for ``org`` in one of ``roles`` by their own organization: who
    the service lets apply for it or decide for it (no platform-administrator wildcard)."""
    return (
        v.who.org is not None and v.who.org.upper() == org and bool(v.who.roles.intersection(roles))
    )


# --- applying from a resource's page ---------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """What a resource's page offers the person: ``apply`` (有条件共享), ``subscribe``
    (无条件共享), ``none`` (不予共享: the reason, no button) or ``""`` (nothing for them)."""

    kind: Literal["apply", "subscribe", "none", ""]
    apps: list[tuple[str, str]] = field(default_factory=list)


async def access_offer(console: Console, v: Viewer, spec: ResourceSpec) -> Offer:
    if spec.sharing_type is SharingType.NONE:
        return Offer("none")
    own = (v.who.org or "").upper()
    # As the service: a person of the consuming organization applying or subscribing, in one
    # of the applicants' roles; not for one's own resource; not the platform on anyone's behalf.
    if not own or own == spec.provider or not member(v, APPLICANTS, own):
        return Offer("")
    if spec.status is ResourceStatus.DEPRECATED:
        return Offer("")
    apps = await console.call(console.registry.list_apps, own)
    kind: Literal["apply", "subscribe"] = (
        "subscribe" if spec.sharing_type is SharingType.UNCONDITIONAL else "apply"
    )
    return Offer(kind, [(a.code, a.name or a.code) for a in apps])


def _application_values(data: FormValues | None, spec: ResourceSpec) -> dict[str, Any]:
    """The apply form's values: as typed, or the defaults for a new application."""
    if data is None:
        return {
            "purposes": "",
            "purpose_text": "",
            "legal_basis": "",
            "fields": [i.field for i in spec.items],
            "methods": ["GET"],
            "paths": "**",
            "apps": [],
            "valid_days": "365",
            "daily_quota": "",
            "rate_requests": "",
            "rate_per_seconds": "",
            "end_user_required": False,
        }
    return {
        "purposes": data.get("purposes", ""),
        "purpose_text": data.get("purpose_text", ""),
        "legal_basis": data.get("legal_basis", ""),
        "fields": data.getlist("fields"),
        "methods": data.getlist("methods"),
        "paths": data.get("paths", ""),
        "apps": data.getlist("apps"),
        "valid_days": data.get("valid_days", ""),
        "daily_quota": data.get("daily_quota", ""),
        "rate_requests": data.get("rate_requests", ""),
        "rate_per_seconds": data.get("rate_per_seconds", ""),
        "end_user_required": "end_user_required" in data,
    }


def _application(data: FormValues) -> Application:
    body: dict[str, Any] = {
        "purposes": _codes(data.get("purposes", "")),
        "purpose_text": data.get("purpose_text", ""),
        "legal_basis": data.get("legal_basis", ""),
        "fields": tuple(data.getlist("fields")),
        "methods": tuple(data.getlist("methods")),
        "paths": _lines(data.get("paths", "")),
        "apps": tuple(data.getlist("apps")),
        "valid_days": _default(_number(data, "valid_days", "duration"), 365),
        "daily_quota": _number(data, "daily_quota", "daily quota"),
        "rate_limit": _rate(data),
        "end_user_required": "end_user_required" in data,
    }
    application: Application = parse(Application, body)
    return application


# --- the approver's narrowing -----------------------------------------------------------------
def _narrowing_values(data: FormValues | None, r: RequestView) -> dict[str, Any]:
    """The approval form's values: pre-filled with what was asked, or as typed."""
    a = r.application
    if data is None:
        rate = a.rate_limit
        return {
            "fields": list(a.fields or ()),
            "fields_text": "\n".join(a.fields or ()),
            "methods": list(a.methods),
            "paths": "\n".join(a.paths),
            "apps": list(a.apps),
            "purposes": list(a.purposes),
            "valid_days": str(a.valid_days),
            "daily_quota": "" if a.daily_quota is None else str(a.daily_quota),
            "rate_requests": str(rate.requests) if rate else "",
            "rate_per_seconds": str(rate.per_seconds) if rate else "",
            "masking": {},
            "tw_days": [str(d) for d in WEEKDAYS],
            "tw_start": "",
            "tw_end": "",
            "end_user_required": a.end_user_required,
        }
    return {
        "fields": data.getlist("fields"),
        "fields_text": data.get("fields_text", ""),
        "methods": data.getlist("methods"),
        "paths": data.get("paths", ""),
        "apps": data.getlist("apps"),
        "purposes": data.getlist("purposes"),
        "valid_days": data.get("valid_days", ""),
        "daily_quota": data.get("daily_quota", ""),
        "rate_requests": data.get("rate_requests", ""),
        "rate_per_seconds": data.get("rate_per_seconds", ""),
        "masking": {
            k.removeprefix("mask."): val for k, val in data.items() if k.startswith("mask.") and val
        },
        "tw_days": data.getlist("tw_days"),
        "tw_start": data.get("tw_start", ""),
        "tw_end": data.get("tw_end", ""),
        "end_user_required": "end_user_required" in data,
    }


def _narrowing(data: FormValues, r: RequestView) -> Narrowing:
    """The approval as typed. Every term is sent, and the service checks each is no wider
    than the application (docs/agreements.md: an approval may narrow, never widen)."""
    a = r.application
    if a.fields is None:  # a resource the catalog does not describe: paths typed, one a line
        typed = _lines(data.get("fields_text", ""))
        fields: tuple[str, ...] | None = typed or None
    else:
        fields = tuple(data.getlist("fields"))
    apps = tuple(data.getlist("apps"))
    days = data.getlist("tw_days")
    start, end = data.get("tw_start", "").strip(), data.get("tw_end", "").strip()
    windows: list[dict[str, Any]] = []
    # Every day (or none) ticked and no times: no window, calls at any time.
    if start or end or (days and set(days) != {str(d) for d in WEEKDAYS}):
        windows.append(
            {
                "days": [int(d) for d in days if d.isdigit()],
                "start": start or "00:00",
                "end": end or "23:59:59",
            }
        )
    body: dict[str, Any] = {
        "fields": fields,
        "methods": tuple(data.getlist("methods")),
        "paths": _lines(data.get("paths", "")),
        # No app ticked keeps the application's choice when it named none (every app).
        "apps": apps if apps or a.apps else None,
        "purposes": tuple(data.getlist("purposes")),
        "valid_days": _number(data, "valid_days", "duration"),
        "daily_quota": _number(data, "daily_quota", "daily quota"),
        "rate_limit": _rate(data),
        "masking": {
            k.removeprefix("mask."): {"rule": rule}
            for k, rule in data.items()
            if k.startswith("mask.") and rule
        },
        "time_windows": windows,
        "end_user_required": "end_user_required" in data,
    }
    narrowing: Narrowing = parse(Narrowing, body)
    return narrowing


def reason(data: FormValues) -> str:
    """A typed reason, at most as long as the API takes (ReasonIn, 2000 characters)."""
    text = data.get("reason", "")
    if len(text) > 2000:
        raise Problem(problems.VALIDATION, "a reason has at most 2000 characters")
    return text


def need_applicant(console: Console, v: Viewer) -> None:
    """The door to applying and subscribing: the role, as the API's, and a person of an
    organization, which the service requires (the platform administrator does not apply on
    an organization's behalf; docs/agreements.md). Checked before the form is read, so a
    person who may not apply learns that first."""
    console.require(v, APPLICANTS)
    own = (v.who.org or "").upper()
    if not own or not member(v, APPLICANTS, own):
        raise Problem(
            problems.FORBIDDEN,
            "applying needs a person of the consuming organization holding the role "
            + " or ".join(r.value for r in APPLICANTS)
            + (
                " (a platform administrator does not act for one)"
                if v.who.is_platform_admin
                else ""
            ),
        )


def install_requests(console: Console, router: APIRouter) -> None:
    """Add the request pages to the console's router."""
    service: AgreementService = console.app.state.agreements
    catalog, page, viewer = console.catalog, console.page, console.viewer

    # --- applying and subscribing -----------------------------------------------------------
    async def access_form(
        request: Request,
        v: Viewer,
        org: str,
        code: str,
        *,
        data: FormValues | None = None,
        error: Problem | None = None,
    ) -> Response:
        published = await console.call(catalog.get, org, code)
        spec = published.spec
        offer = await access_offer(console, v, spec)
        values = _application_values(data, spec)
        if data is not None and offer.kind == "subscribe":
            values["app"] = data.get("app", "")
        return console.render(
            request,
            "access.html",
            viewer=v,
            status=error.status if error else 200,
            spec=spec,
            provider_name=await console.call(console.org_name, spec.provider),
            offer=offer,
            values=values,
            methods=METHODS,
            error=error,
        )

    @router.get("/catalog/{org}/{code}/apply")
    @page
    async def apply_form(request: Request, org: str, code: str) -> Response:
        v = await viewer(request)
        need_applicant(console, v)
        return await access_form(request, v, org, code)

    @router.post("/catalog/{org}/{code}/apply")
    @page
    async def apply(request: Request, org: str, code: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        need_applicant(console, v)  # as POST /api/v1/requests
        try:
            made = await console.call(service.apply, v.who, org, code, _application(data))
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await access_form(request, v, org, code, data=data, error=p)
        raise Redirect(f"/console/requests/{made.id}")

    @router.post("/catalog/{org}/{code}/subscribe")
    @page
    async def subscribe(request: Request, org: str, code: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        need_applicant(console, v)  # as POST /api/v1/resources/{org}/{code}/subscribe
        app = data.get("app", "").strip()
        try:
            made = await console.call(
                lambda: service.subscribe(
                    v.who,
                    org,
                    code,
                    purposes=_codes(data.get("purposes", "")),
                    apps=(app,) if app else (),
                    end_user_required="end_user_required" in data,
                )
            )
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await access_form(request, v, org, code, data=data, error=p)
        raise Redirect(f"/console/agreements/{made.id}")

    # --- the lists --------------------------------------------------------------------------
    @router.get("/requests")
    @page
    async def requests_list(request: Request) -> Response:
        v = await viewer(request)
        console.require(v, REQUEST_READERS)  # as GET /api/v1/requests
        params = request.query_params
        deciding = bool(v.who.org) and member(v, DECIDERS, (v.who.org or "").upper())
        box_param = params.get("box")
        box: Literal["inbox", "mine"] = (
            box_param if box_param in BOXES else ("inbox" if deciding else "mine")  # type: ignore[assignment]
        )
        status_param = params.get("status")
        # The inbox shows what awaits a decision unless asked otherwise; "all" shows all.
        if status_param == "all":
            status: str | None = None
        elif status_param in STATUSES:
            status = status_param
        else:
            status = "submitted" if box == "inbox" else None
        rows = await console.call(lambda: service.list_requests(v.who, box=box, status=status))
        paged = paginate(rows, params.get("page"))
        names = await console.call(catalog.organization_names)
        return console.render(
            request,
            "requests.html",
            viewer=v,
            current="requests",
            box=box,
            shown_status=status or "all",
            statuses=STATUSES,
            paged=paged,
            names=names,
            query={"box": box, "status": status or "all"},
        )

    # --- one request --------------------------------------------------------------------------
    async def request_page(
        request: Request,
        v: Viewer,
        request_id: str,
        *,
        data: FormValues | None = None,
        form: str = "",
        error: Problem | None = None,
    ) -> Response:
        r = await console.call(service.get_request, v.who, request_id)
        names = await console.call(catalog.organization_names)
        item_names: dict[str, str] = {}
        try:
            spec = (await console.call(catalog.get, r.provider_org, r.resource)).spec
            item_names = {i.field: i.name for i in spec.items}
            resource_name = spec.name
        except Problem:
            resource_name = r.resource  # not (or no longer) in the catalog
        pending = r.status == "submitted"
        may_decide = pending and member(v, DECIDERS, r.provider_org)
        apps: list[tuple[str, str]] = []
        if may_decide:
            consumer_apps = await console.call(console.registry.list_apps, r.consumer_org)
            apps = [(a.code, a.name or a.code) for a in consumer_apps]
            if r.application.apps:  # only the apps applied for can stay
                apps = [(c, n) for c, n in apps if c in r.application.apps] or [
                    (c, c) for c in r.application.apps
                ]
        return console.render(
            request,
            "request.html",
            viewer=v,
            current="requests",
            status=error.status if error else 200,
            r=r,
            names=names,
            resource_name=resource_name,
            item_names=item_names,
            may_decide=may_decide,
            may_withdraw=pending and v.who.has(*APPLICANTS, org=r.consumer_org),
            narrow=_narrowing_values(data if form == "approve" else None, r),
            reason=data.get("reason", "") if data is not None and form == "refuse" else "",
            apps=apps,
            mask_rules=[m.value for m in MaskRule],
            weekdays=WEEKDAYS,
            form=form,
            error=error,
        )

    @router.get("/requests/{request_id}")
    @page
    async def request_detail(request: Request, request_id: str) -> Response:
        v = await viewer(request)
        console.require(v, REQUEST_READERS)  # as GET /api/v1/requests/{id}
        return await request_page(request, v, request_id)

    @router.post("/requests/{request_id}/approve")
    @page
    async def approve(request: Request, request_id: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, DECIDERS)  # as POST /api/v1/requests/{id}/approve
        r = await console.call(service.get_request, v.who, request_id)
        try:
            await console.call(service.approve, v.who, request_id, _narrowing(data, r))
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await request_page(request, v, request_id, data=data, form="approve", error=p)
        raise Redirect(f"/console/requests/{request_id}")

    @router.post("/requests/{request_id}/refuse")
    @page
    async def refuse(request: Request, request_id: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, DECIDERS)  # as POST /api/v1/requests/{id}/refuse
        try:
            await console.call(service.refuse, v.who, request_id, reason(data))
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await request_page(request, v, request_id, data=data, form="refuse", error=p)
        raise Redirect(f"/console/requests/{request_id}")

    @router.post("/requests/{request_id}/withdraw")
    @page
    async def withdraw(request: Request, request_id: str) -> Response:
        v = await viewer(request)
        await console.posted(request, v)
        console.require(v, APPLICANTS)  # as POST /api/v1/requests/{id}/withdraw
        try:
            await console.call(service.withdraw, v.who, request_id)
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await request_page(request, v, request_id, form="withdraw", error=p)
        raise Redirect(f"/console/requests/{request_id}")
