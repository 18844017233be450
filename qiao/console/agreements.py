"""Agreements in the console (docs/console.md, "Agreements"): the list of one's
organization's agreements (every one for the platform administrator), an agreement's terms
with its masking rules and the state of both signatures, the signed document and its ODRL
form to download, and suspending, resuming and revoking with a confirmation step.

The agreement service decides who reads and who changes what, through the same calls as
``/api/v1/agreements`` (qiao/agreements/api.py) with the same role at the door.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request
from fastapi.responses import Response

from qiao.agreements.document import digest, signed_bytes
from qiao.agreements.service import DECIDERS, AgreementService, AgreementView
from qiao.console.core import Console, Redirect, Viewer, paginate
from qiao.console.requests import FORM_ERRORS, reason
from qiao.identity.roles import Role
from qiao.problems import Problem

STATES = ("active", "suspended", "revoked", "expired")
SIDES = ("provider", "consumer")
Action = Literal["suspend", "resume", "revoke"]
ACTIONS: tuple[Action, ...] = ("suspend", "resume", "revoke")
JSON_LD = "application/ld+json"


def may(v: Viewer, a: AgreementView, action: Action) -> bool:
    """Whether to offer ``action`` on the page: as the service allows it (suspend, resume:
    the provider's approver or org-admin, the platform for emergency agreements it arranged;
    revoke: also the consumer's org-admin) and as the agreement's state allows it. The
    service checks again when it is done."""
    who = v.who
    if action == "revoke":
        allowed = who.has(Role.ORG_ADMIN, org=a.consumer_org) or who.has(
            *DECIDERS, org=a.provider_org
        )
        return allowed and a.state.value in ("active", "suspended")
    # An emergency agreement is the platform's to change, as it arranged it.
    allowed = who.is_platform_admin if a.emergency_only else who.has(*DECIDERS, org=a.provider_org)
    return allowed and a.state.value == ("active" if action == "suspend" else "suspended")


def signature_states(a: AgreementView, keys: dict[str, str]) -> dict[str, str]:
    """Each party's signature: "verified", "invalid" or "no-key", checked as document.verify
    checks a published agreement (the hash of the stored document, then Ed25519 over its
    signed bytes with the key the global configuration publishes for the organization), one
    side at a time so that each gets its own answer."""
    if digest(a.document) != a.sha256:
        return dict.fromkeys(SIDES, "invalid")
    message = signed_bytes(a.document)
    out: dict[str, str] = {}
    for side in SIDES:
        raw = keys.get(a.provider_org if side == "provider" else a.consumer_org)
        if raw is None:
            out[side] = "no-key"
            continue
        try:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw))
            key.verify(base64.b64decode(a.signatures.get(side, ""), validate=True), message)
            out[side] = "verified"
        except (binascii.Error, ValueError, InvalidSignature):
            out[side] = "invalid"
    return out


def install_agreements(console: Console, router: APIRouter) -> None:
    """Add the agreement pages to the console's router."""
    service: AgreementService = console.app.state.agreements
    page, viewer = console.page, console.viewer

    def published_keys() -> dict[str, str]:
        with console.registry._sessions() as s:
            return service.keys.published(s)

    @router.get("/agreements")
    @page
    async def agreements_list(request: Request) -> Response:
        v = await viewer(request)  # any signed-in person, as GET /api/v1/agreements
        params = request.query_params
        state = params.get("state") if params.get("state") in STATES else None
        side = params.get("side") if params.get("side") in SIDES else None
        own = (v.who.org or "").upper() or None
        rows = await console.call(
            lambda: service.list(
                v.who,
                provider=own if side == "provider" else None,
                consumer=own if side == "consumer" else None,
                state=state,
            )
        )
        paged = paginate(rows, params.get("page"))
        names = await console.call(console.catalog.organization_names)
        return console.render(
            request,
            "agreements.html",
            viewer=v,
            current="agreements",
            paged=paged,
            names=names,
            state=state or "",
            side=side or "",
            states=STATES,
            own=own,
            query={k: val for k, val in (("state", state), ("side", side)) if val},
        )

    async def agreement_page(
        request: Request,
        v: Viewer,
        agreement_id: str,
        template: str = "agreement.html",
        **context: Any,
    ) -> Response:
        a = await console.call(service.get, v.who, agreement_id)
        keys = await console.call(published_keys)
        names = await console.call(console.catalog.organization_names)
        error = context.get("error")
        return console.render(
            request,
            template,
            viewer=v,
            current="agreements",
            status=error.status if isinstance(error, Problem) else 200,
            a=a,
            doc=a.agreement(),
            names=names,
            signatures=signature_states(a, keys),
            actions=[act for act in ACTIONS if may(v, a, act)],
            **context,
        )

    @router.get("/agreements/{agreement_id}")
    @page
    async def agreement_detail(request: Request, agreement_id: str) -> Response:
        v = await viewer(request)
        return await agreement_page(request, v, agreement_id)

    @router.get("/agreements/{agreement_id}/document")
    @page
    async def document(request: Request, agreement_id: str) -> Response:
        v = await viewer(request)
        body, digest = await console.call(service.document, v.who, agreement_id)
        return Response(
            body,
            media_type="application/json",
            headers={
                "X-Qiao-Agreement-Sha256": digest,
                "Content-Disposition": f'attachment; filename="{agreement_id}.json"',
            },
        )

    @router.get("/agreements/{agreement_id}/odrl")
    @page
    async def odrl(request: Request, agreement_id: str) -> Response:
        v = await viewer(request)
        policy = await console.call(service.odrl, v.who, agreement_id, console.settings.public_url)
        return Response(
            json.dumps(policy, ensure_ascii=False, indent=2),
            media_type=JSON_LD,
            headers={"Content-Disposition": f'attachment; filename="{agreement_id}.odrl.jsonld"'},
        )

    # --- suspend, resume, revoke: a page to confirm (with the reason), then the change -------
    def add_action(action: Action) -> None:
        change = {"suspend": service.suspend, "resume": service.resume, "revoke": service.revoke}[
            action
        ]

        async def confirm(request: Request, agreement_id: str) -> Response:
            v = await viewer(request)
            console.require(v, DECIDERS)  # as POST /api/v1/agreements/{id}/{action}
            return await agreement_page(
                request, v, agreement_id, "agreement_change.html", action=action, reason="",
                error=None,
            )  # fmt: skip

        async def perform(request: Request, agreement_id: str) -> Response:
            v = await viewer(request)
            data = await console.posted(request, v)
            console.require(v, DECIDERS)
            try:
                await console.call(change, v.who, agreement_id, reason(data))
            except Problem as p:
                if p.status not in FORM_ERRORS:
                    raise
                return await agreement_page(
                    request, v, agreement_id, "agreement_change.html", action=action,
                    reason=data.get("reason", ""), error=p,
                )  # fmt: skip
            raise Redirect(f"/console/agreements/{agreement_id}")

        confirm.__name__ = f"confirm_{action}"
        perform.__name__ = action
        router.get(f"/agreements/{{agreement_id}}/{action}")(page(confirm))
        router.post(f"/agreements/{{agreement_id}}/{action}")(page(perform))

    for action in ACTIONS:
        add_action(action)
