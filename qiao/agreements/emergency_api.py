"""Emergency mode's hub API, under ``/api/v1/emergencies`` (docs/agreements.md, "Emergencies").

Platform administrators declare, confirm (a different one) and end emergencies; platform
administrators, security officers and auditors read them and the exchanges made under them;
auditors (and platform administrators) record their review of each exchange. The service
checks every rule again, so the commands get the same answers as the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from qiao.agreements.emergencies import EmergencyService
from qiao.config import HubSettings
from qiao.hub.auth import require
from qiao.identity.roles import Principal, Role
from qiao.problems import PROBLEM_CONTENT_TYPE
from qiao.registry.services import RegistryService

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": "RFC 9457 problem details", "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status in (401, 403, 404, 409, 422)
}
Admin = Annotated[Principal, Depends(require(Role.PLATFORM_ADMIN))]
Reader = Annotated[Principal, Depends(require(Role.SECURITY_OFFICER, Role.AUDITOR))]
Reviewer = Annotated[Principal, Depends(require(Role.AUDITOR))]


class DeclareIn(BaseModel):
    reason: str = Field(max_length=2000, description="Why: shown to every department")
    hours: int = Field(description="How long it lasts once confirmed (1 to the hub's maximum)")
    resources: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description='Resources as "{org}/{code}": at least one (422 otherwise)',
    )
    organizations: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Consumer organizations (USCC); empty = every organization",
    )


class EndIn(BaseModel):
    reason: str = Field(max_length=2000)


class ReviewIn(BaseModel):
    exchange_id: str = Field(max_length=100)
    node: str = Field(max_length=64)
    note: str = Field(max_length=2000, description="What the review found")


def install(app: Any, registry: RegistryService, settings: HubSettings) -> None:
    """Add the emergency routes to the hub."""
    service = EmergencyService(
        registry,
        max_hours=settings.emergency_max_hours,
        confirm_seconds=settings.emergency_confirm_seconds,
    )
    app.state.emergencies = service
    router = APIRouter(prefix="/api/v1/emergencies", tags=["emergencies"], responses=PROBLEMS)

    @router.post("", status_code=201, summary="Declare an emergency")
    def declare(body: DeclareIn, who: Admin) -> dict[str, Any]:
        """Propose an emergency; it starts once another platform administrator confirms it
        (within ``emergency_confirm_seconds``)."""
        return service.declare(
            who,
            resources=body.resources,
            organizations=body.organizations,
            reason=body.reason,
            duration_hours=body.hours,
        ).to_json()

    @router.post("/{emergency_id}/confirm", summary="Confirm an emergency (second administrator)")
    def confirm(emergency_id: str, who: Admin) -> dict[str, Any]:
        return service.confirm(who, emergency_id).to_json()

    @router.post("/{emergency_id}/end", summary="End an emergency or withdraw a proposal")
    def end(emergency_id: str, body: EndIn, who: Admin) -> dict[str, Any]:
        return service.end(who, emergency_id, body.reason).to_json()

    @router.get("", summary="List emergencies")
    def list_emergencies(who: Reader) -> list[dict[str, Any]]:
        return [e.to_json() for e in service.list(who)]

    @router.get("/{emergency_id}", summary="Show an emergency")
    def show(emergency_id: str, who: Reader) -> dict[str, Any]:
        return service.get(who, emergency_id).to_json()

    @router.get("/{emergency_id}/accesses", summary="Exchanges made under an emergency")
    def accesses(
        emergency_id: str,
        who: Reader,
        unreviewed: Annotated[bool, Query(description="Only those not yet reviewed")] = False,
    ) -> list[dict[str, Any]]:
        return [a.to_json() for a in service.accesses(who, emergency_id, unreviewed)]

    @router.post("/{emergency_id}/accesses/review", summary="Record the review of an exchange")
    def review(emergency_id: str, body: ReviewIn, who: Reviewer) -> dict[str, Any]:
        return service.review(who, emergency_id, body.exchange_id, body.node, body.note).to_json()

    app.include_router(router)
