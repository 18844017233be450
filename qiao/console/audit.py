"""Audit in the console (docs/console.md, "Audit"): search the exchanges recorded on the
ledger, read one exchange's record with its receipt verified in the page, download the
receipt, and review the exchanges made under an emergency.

Who: auditors, security officers, organization administrators (their own organization's
records: each party's node records every exchange it takes part in) and the platform
administrator (every record). Nothing here shows a payload: the ledger never holds one,
only the request's and the response's hashes.

The receipt is the ledger's (``HubLedger.receipt``, as ``GET /ledger/receipts/{id}``) and
it is checked with ``verify_receipt`` against the ledger's own tlog-policy, exactly as
``qiao verify`` checks one offline: the witnesses' quorum cosigned the checkpoint,
and the inclusion proof leads from the stored entry to the checkpoint's root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qiao import problems
from qiao.agreements.document import CST
from qiao.agreements.emergencies import AccessView, EmergencyService, EmergencyView
from qiao.console.core import PAGE_SIZE, Console, Redirect, Viewer
from qiao.console.requests import FORM_ERRORS
from qiao.identity.roles import Role
from qiao.ledger.errors import LedgerError
from qiao.ledger.exchanges import ENTRY_FIELDS as LEDGER_FIELDS
from qiao.ledger.exchanges import (
    OPTIONAL_ENTRY_FIELDS,
    ExchangeQuery,
    LedgerExchange,
    search_exchanges,
)
from qiao.ledger.policy import Policy
from qiao.ledger.receipt import parse_receipt, verify_receipt
from qiao.ledger.service import HubLedger
from qiao.problems import Problem

# Who opens the audit pages, as the brief of issue 8 and the APIs they mirror: records are
# read by the auditors, security officers and administrators of the organization concerned.
AUDIT_READERS = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER, Role.ORG_ADMIN})
# Emergencies and their accesses: as GET /api/v1/emergencies (qiao/agreements/emergency_api.py).
EMERGENCY_READERS = frozenset({Role.SECURITY_OFFICER, Role.AUDITOR})
# Recording a review: as POST /api/v1/emergencies/{id}/accesses/review.
REVIEWERS = frozenset({Role.AUDITOR})
# The fields of a ledger entry shown on an exchange's page, in this order: the ledger's own
# list (qiao.ledger.exchanges), with the node and organization that vouched for it after the
# role. The entry has no payload to leave out; the request path is not in it either.
ENTRY_FIELDS = (
    *LEDGER_FIELDS[:2],
    "node",
    "org",
    *LEDGER_FIELDS[2:],
    *OPTIONAL_ENTRY_FIELDS,
)
MAX_FILTER = 200


@dataclass(frozen=True)
class ReceiptCheck:
    """What the page says of a receipt: verified or not, and the verifier's sentence."""

    verified: bool
    statement: str
    index: int | None = None


def scope(v: Viewer) -> str | None:
    """The organization whose records ``v`` reads (None: every one, the platform's). A
    person without an organization who is not the platform administrator reads nothing."""
    if v.who.is_platform_admin:
        return None
    return (v.who.org or "").upper()


def check_receipt(ledger: HubLedger, row: LedgerExchange) -> ReceiptCheck:
    """Fetch the exchange's receipt from the ledger and verify it against the ledger's
    policy and the stored entry it names, as ``qiao verify --entry`` does."""
    try:
        receipt = ledger.receipt(row.exchange_id, row.role)
    except Problem as p:
        return ReceiptCheck(False, p.detail or p.kind.title)
    try:
        index = parse_receipt(receipt).index
        entry = ledger.store.entry(index) if index < ledger.store.size() else None
        if entry is None:
            return ReceiptCheck(False, f"the ledger has no entry {index}", index)
        statement = verify_receipt(receipt, entry, Policy.parse(ledger.policy_text()))
        named = json.loads(entry).get("exchange_id")
    except (LedgerError, ValueError) as exc:
        return ReceiptCheck(False, str(exc))
    if named != row.exchange_id:
        return ReceiptCheck(False, f"entry {index} is of exchange {named!r}", index)
    return ReceiptCheck(True, statement, index)


def _day(text: str, *, end: bool) -> datetime | None:
    """A date typed in the form (China Standard Time) as the UTC instant it starts, or the
    instant the day after starts for the end of a range."""
    try:
        d = date.fromisoformat(text.strip())
    except ValueError:
        return None
    start = datetime.combine(d + timedelta(days=1 if end else 0), time(), tzinfo=CST)
    return start.astimezone(UTC)


def _text(params: Any, name: str) -> str:
    return " ".join(str(params.get(name, "")).split())[:MAX_FILTER]


def install_audit(console: Console, router: APIRouter) -> None:
    """Add the audit pages to the console's router."""
    ledger: HubLedger = console.app.state.ledger
    emergencies: EmergencyService = console.app.state.emergencies
    page, viewer = console.page, console.viewer
    sessions = ledger.exchanges.sessions

    @router.get("/audit")
    @page
    async def audit(request: Request) -> Response:
        v = await viewer(request)
        console.require(v, AUDIT_READERS)
        params = request.query_params
        own = scope(v)
        filters = {
            name: _text(params, name)
            for name in ("department", "resource", "end_user", "purpose", "exchange_id")
        }
        filters["since"], filters["until"] = _text(params, "since"), _text(params, "until")
        provider_org, resource = None, None
        if "/" in filters["resource"]:  # "{org}/{code}", as the catalog names a resource
            provider_org, _sep, resource = filters["resource"].partition("/")
            provider_org = provider_org.upper()
        elif filters["resource"]:
            resource = filters["resource"]
        try:
            before = int(params.get("before", "")) if params.get("before") else None
        except ValueError:
            before = None
        if before is not None and not 0 <= before < 2**63:
            before = None  # beyond any index (SQLite cannot bind it): the first page
        q = ExchangeQuery(
            org=own,
            department=filters["department"].upper() or None,
            provider_org=provider_org,
            resource=resource,
            end_user=filters["end_user"] or None,
            purpose=filters["purpose"] or None,
            exchange_id=filters["exchange_id"] or None,
            since=_day(filters["since"], end=False) if filters["since"] else None,
            until=_day(filters["until"], end=True) if filters["until"] else None,
            before=before,
            limit=PAGE_SIZE + 1,  # one more: is there a next page?
        )

        def load() -> list[LedgerExchange]:
            with sessions() as s:
                return search_exchanges(s, q)

        rows = await console.call(load)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        keep = {k: val for k, val in filters.items() if val}
        next_url = (
            "/console/audit?" + urlencode({**keep, "before": rows[-1].idx})
            if more and rows
            else None
        )
        names = await console.call(console.catalog.organization_names)
        return console.render(
            request,
            "audit.html",
            viewer=v,
            current="audit",
            rows=rows,
            names=names,
            filters=filters,
            own=own,
            departments=sorted(names.items(), key=lambda kv: kv[1]),
            first_url="/console/audit?" + urlencode(keep) if before is not None else None,
            next_url=next_url,
            emergency_reader=v.who.has(*EMERGENCY_READERS),
        )

    async def exchange_row(v: Viewer, idx: int) -> LedgerExchange:
        console.require(v, AUDIT_READERS)
        own = scope(v)

        def load() -> LedgerExchange | None:
            if not 0 <= idx < 2**63:  # no such index, and SQLite cannot even bind it
                return None
            with sessions() as s:
                return s.get(LedgerExchange, idx)

        row = await console.call(load)
        # Another organization's record reads as absent, not as forbidden: no probing.
        if row is None or (own is not None and row.org != own):
            raise Problem(problems.NOT_FOUND, f"no exchange record {idx} for you")
        return row

    @router.get("/audit/exchanges/{index}")
    @page
    async def exchange(request: Request, index: int) -> Response:
        v = await viewer(request)
        row = await exchange_row(v, index)
        raw = await console.call(ledger.store.entry, row.idx)
        entry: dict[str, Any] = json.loads(raw)
        check = await console.call(check_receipt, ledger, row)
        names = await console.call(console.catalog.organization_names)
        return console.render(
            request,
            "audit_exchange.html",
            viewer=v,
            current="audit",
            row=row,
            entry=entry,
            fields=[(f, entry[f]) for f in ENTRY_FIELDS if f in entry],
            check=check,
            names=names,
        )

    @router.get("/audit/exchanges/{index}/receipt")
    @page
    async def receipt(request: Request, index: int) -> Response:
        v = await viewer(request)
        row = await exchange_row(v, index)
        body = await console.call(ledger.receipt, row.exchange_id, row.role)
        return Response(
            body,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="receipt-{row.idx}.tlog-proof"'},
        )

    # --- emergency accesses: the review list, as /api/v1/emergencies/{id}/accesses -----------
    async def review_page(
        request: Request, v: Viewer, *, error: Problem | None = None, typed: str = ""
    ) -> Response:
        console.require(v, EMERGENCY_READERS)

        def load() -> list[tuple[EmergencyView, list[AccessView]]]:
            return [(e, emergencies.accesses(v.who, e.id, True)) for e in emergencies.list(v.who)]

        listed = await console.call(load)
        return console.render(
            request,
            "audit_emergencies.html",
            viewer=v,
            current="audit",
            status=error.status if error else 200,
            listed=listed,
            reviewer=v.who.has(*REVIEWERS),
            error=error,
            typed=typed,
        )

    @router.get("/audit/emergencies")
    @page
    async def emergency_accesses(request: Request) -> Response:
        v = await viewer(request)
        return await review_page(request, v)

    @router.post("/audit/emergencies/{emergency_id}/review")
    @page
    async def review(request: Request, emergency_id: str) -> Response:
        v = await viewer(request)
        data = await console.posted(request, v)
        console.require(v, REVIEWERS)
        note = data.get("note", "")
        try:
            await console.call(
                emergencies.review,
                v.who,
                emergency_id,
                data.get("exchange_id", "")[:100],
                data.get("node", "")[:64],
                note,
            )
        except Problem as p:
            if p.status not in FORM_ERRORS:
                raise
            return await review_page(request, v, error=p, typed=note)
        raise Redirect("/console/audit/emergencies")
