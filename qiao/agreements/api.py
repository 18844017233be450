"""Hub routes for sharing requests and agreements, under ``/api/v1`` (docs/agreements.md).

The role at the door is checked first (403 whatever the body), the organization the call is
about inside the service, which the commands share, so both enforce the same rules. Errors
are RFC 9457 problem+json: ``resource-not-shared``, ``reason-required``, ``request-decided``,
``approval-widens``, ``agreement-state`` besides the hub's common ones.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from qiao.agreements.service import MAX_VALID_DAYS, AgreementService, Application, Narrowing
from qiao.config import HubSettings
from qiao.hub.auth import caller, require
from qiao.identity.roles import Principal, Role
from qiao.problems import PROBLEM_CONTENT_TYPE
from qiao.registry.services import RegistryService

TAGS: list[str | Any] = ["agreements"]
JSON_LD = "application/ld+json"
ORG = r"^[0-9A-Za-z]{18}$"
CODE = r"^[A-Za-z0-9_-]{1,64}$"

Who = Annotated[Principal, Depends(caller)]
Applicant = Annotated[
    Principal,
    Depends(require(Role.ORG_ADMIN, Role.APP_DEVELOPER, Role.DATA_STEWARD, Role.APPROVER)),
]
Reader = Annotated[
    Principal,
    Depends(
        require(Role.ORG_ADMIN, Role.APP_DEVELOPER, Role.DATA_STEWARD, Role.APPROVER, Role.AUDITOR)
    ),
]
Decider = Annotated[Principal, Depends(require(Role.APPROVER, Role.ORG_ADMIN))]
Platform = Annotated[Principal, Depends(require(Role.PLATFORM_ADMIN))]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscribeIn(_Body):
    purposes: list[str] = Field(min_length=1, max_length=20)
    apps: list[str] = Field(default_factory=list, max_length=50)
    fields: list[str] | None = Field(None, max_length=200)
    valid_days: int = Field(365, ge=1, le=MAX_VALID_DAYS)
    end_user_required: bool = False


class ApplicationIn(Application):
    provider: str = Field(pattern=ORG, description="The providing organization (USCC)")
    resource: str = Field(pattern=CODE)


class ReasonIn(_Body):
    reason: str = Field("", max_length=2000)


class RenewIn(_Body):
    valid_days: int | None = Field(
        None,
        ge=1,
        le=MAX_VALID_DAYS,
        description="Validity of the renewal; default and at most: the original's length",
    )


class EmergencyIn(_Body):
    provider: str = Field(pattern=ORG)
    resource: str = Field(pattern=CODE)
    consumer: str = Field(pattern=ORG)
    purposes: list[str] = Field(min_length=1, max_length=20)
    fields: list[str] | None = Field(None, max_length=200)
    valid_days: int = Field(365, ge=1, le=MAX_VALID_DAYS)


class ApprovalOut(BaseModel):
    request: dict[str, Any]
    agreement: dict[str, Any]


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": "RFC 9457 problem details", "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status in (401, 403, 404, 409, 422)
}


def install(app: Any, registry: RegistryService, settings: HubSettings) -> None:
    """Add the request and agreement routes to the hub."""
    service = AgreementService(registry)
    app.state.agreements = service
    router = APIRouter(prefix="/api/v1", tags=TAGS, responses=PROBLEMS)

    # --- subscribing and applying --------------------------------------------------------
    @router.post(
        "/resources/{org}/{code}/subscribe",
        summary="Subscribe to an unconditional resource (无条件共享)",
        status_code=201,
    )
    def subscribe(org: str, code: str, body: SubscribeIn, who: Applicant) -> dict[str, Any]:
        """Creates and signs the agreement at once, for the caller's own organization (a
        person of it; not the platform administrator). A conditional resource: 409 (apply
        instead); a non-shared one: 409 ``resource-not-shared``."""
        return service.subscribe(
            who,
            org,
            code,
            purposes=tuple(body.purposes),
            apps=tuple(body.apps),
            fields=tuple(body.fields) if body.fields is not None else None,
            valid_days=body.valid_days,
            end_user_required=body.end_user_required,
        ).to_json()

    @router.post(
        "/requests", summary="Apply for a conditional resource (有条件共享)", status_code=201
    )
    def apply(body: ApplicationIn, who: Applicant) -> dict[str, Any]:
        """Submits a sharing request of the caller's own organization (a person of it; not
        the platform administrator) with purposes, legal basis and the terms wanted; the
        provider's reply deadline (10 working days, official calendar) starts. A catalogued
        resource's fields are its items' names exactly (422 otherwise)."""
        application = Application.model_validate(body.model_dump(exclude={"provider", "resource"}))
        return service.apply(who, body.provider, body.resource, application).to_json()

    @router.get("/requests", summary="List sharing requests")
    def list_requests(
        who: Reader,
        box: Annotated[
            Literal["inbox", "mine"] | None,
            Query(description="inbox: to the caller's organization; mine: from it"),
        ] = None,
        status: Annotated[
            Literal["submitted", "approved", "refused", "withdrawn"] | None, Query()
        ] = None,
        overdue: Annotated[bool | None, Query(description="Only (or no) overdue ones")] = None,
    ) -> list[dict[str, Any]]:
        """With each undecided request's working days left and an overdue flag."""
        return [
            r.to_json() for r in service.list_requests(who, box=box, status=status, overdue=overdue)
        ]

    @router.get("/requests/{request_id}", summary="Show a sharing request")
    def get_request(request_id: str, who: Reader) -> dict[str, Any]:
        return service.get_request(who, request_id).to_json()

    @router.post(
        "/requests/{request_id}/approve",
        summary="Approve a sharing request (possibly narrowed)",
        response_model=ApprovalOut,
    )
    def approve(
        request_id: str, who: Decider, body: Annotated[Narrowing | None, Body()] = None
    ) -> ApprovalOut:
        """A person of the provider holding approver (or org-admin) approves — the platform
        administrator does not decide for an organization; the body may narrow fields,
        operations, apps, purposes, duration, quota and rate, and add masking rules (keyed by
        item names), time windows and the end-user condition. Wider: 422 ``approval-widens``."""
        request, agreement = service.approve(who, request_id, body)
        return ApprovalOut(request=request.to_json(), agreement=agreement.to_json())

    @router.post("/requests/{request_id}/refuse", summary="Refuse a sharing request")
    def refuse(request_id: str, body: ReasonIn, who: Decider) -> dict[str, Any]:
        """A person of the provider holding approver (or org-admin); a refusal needs its
        reason (422 ``reason-required``)."""
        return service.refuse(who, request_id, body.reason).to_json()

    @router.post("/requests/{request_id}/withdraw", summary="Withdraw a sharing request")
    def withdraw(request_id: str, who: Applicant) -> dict[str, Any]:
        return service.withdraw(who, request_id).to_json()

    # --- agreements --------------------------------------------------------------------
    @router.get("/agreements", summary="List agreements")
    def list_agreements(
        who: Who,
        provider: Annotated[str | None, Query(pattern=ORG)] = None,
        consumer: Annotated[str | None, Query(pattern=ORG)] = None,
        resource: Annotated[str | None, Query(pattern=CODE)] = None,
        state: Annotated[
            Literal["active", "suspended", "revoked", "expired"] | None, Query()
        ] = None,
    ) -> list[dict[str, Any]]:
        """The agreements the caller's organization is a party to (all, for the platform
        administrator), newest first; "expired" once valid_until has passed."""
        return [
            a.to_json()
            for a in service.list(
                who, provider=provider, consumer=consumer, resource=resource, state=state
            )
        ]

    @router.post(
        "/agreements/emergency",
        summary="Arrange an emergency-only agreement (应急)",
        status_code=201,
    )
    def arrange_emergency(body: EmergencyIn, who: Platform) -> dict[str, Any]:
        """Platform administrators only; the only way to an agreement on a 不予共享 resource.
        It is usable only while a declared emergency covers it."""
        return service.arrange_emergency(
            who,
            body.provider,
            body.resource,
            body.consumer,
            tuple(body.purposes),
            fields=tuple(body.fields) if body.fields is not None else None,
            valid_days=body.valid_days,
        ).to_json()

    @router.get("/agreements/{agreement_id}", summary="Show an agreement")
    def get_agreement(agreement_id: str, who: Who) -> dict[str, Any]:
        """The document, its SHA-256, both signatures and its state."""
        return service.get(who, agreement_id).to_json()

    @router.get(
        "/agreements/{agreement_id}/document",
        summary="The signed agreement document, as stored",
        responses={200: {"content": {"application/json": {}}}},
    )
    def document(agreement_id: str, who: Who) -> Response:
        """The canonical JSON bytes (RFC 8785) both organizations signed, with their SHA-256
        in ``X-Qiao-Agreement-Sha256``."""
        body, digest = service.document(who, agreement_id)
        return Response(
            body, media_type="application/json", headers={"X-Qiao-Agreement-Sha256": digest}
        )

    @router.get(
        "/agreements/{agreement_id}/odrl",
        summary="The agreement as an ODRL 2.2 policy (JSON-LD)",
        responses={200: {"content": {JSON_LD: {}}}},
    )
    def odrl(agreement_id: str, who: Who) -> Response:
        policy = service.odrl(who, agreement_id, settings.public_url)
        return Response(json.dumps(policy, ensure_ascii=False), media_type=JSON_LD)

    @router.post("/agreements/{agreement_id}/suspend", summary="Suspend an agreement (暂停)")
    def suspend(agreement_id: str, body: ReasonIn, who: Decider) -> dict[str, Any]:
        """The provider's approver or org-admin; a reason is required."""
        return service.suspend(who, agreement_id, body.reason).to_json()

    @router.post("/agreements/{agreement_id}/resume", summary="Resume a suspended agreement")
    def resume(
        agreement_id: str, who: Decider, body: Annotated[ReasonIn | None, Body()] = None
    ) -> dict[str, Any]:
        return service.resume(who, agreement_id, body.reason if body else "").to_json()

    @router.post("/agreements/{agreement_id}/revoke", summary="Revoke an agreement (撤销, final)")
    def revoke(agreement_id: str, body: ReasonIn, who: Decider) -> dict[str, Any]:
        """Either party's org-admin or the provider's approver; a reason is required."""
        return service.revoke(who, agreement_id, body.reason).to_json()

    @router.post(
        "/agreements/{agreement_id}/renew",
        summary="Renew an agreement (same terms, fresh validity)",
        status_code=201,
    )
    def renew(agreement_id: str, body: RenewIn, who: Decider) -> dict[str, Any]:
        """A new agreement naming the one it renews, on the resource's current catalog version;
        the old one runs until it expires. A person of the provider renews (the platform
        administrator only emergency agreements); the renewal lasts at most as long as the
        original."""
        return service.renew(who, agreement_id, body.valid_days).to_json()

    app.include_router(router)
