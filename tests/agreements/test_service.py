"""The sharing workflow on the hub (AgreementService), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, update

from qiao import problems
from qiao.agreements import document
from qiao.agreements.document import (
    AgreementInvalid,
    AgreementState,
    Masking,
    MaskRule,
    RateLimit,
    TimeWindow,
)
from qiao.agreements.models import AgreementRecord, OrganizationAgreementKey
from qiao.agreements.service import WRAPPING_KEY_FILE, AgreementService, Narrowing
from qiao.canonical import canonical_json
from qiao.catalog.service import CatalogService
from qiao.catalog.spec import ResourceSpec, SharingType
from qiao.identity.roles import Role
from qiao.problems import Problem
from qiao.registry.models import AdminEvent
from tests.agreements.conftest import (
    CONDITIONAL,
    MARKET,
    MONDAY,
    NOT_SHARED,
    POLICE,
    TRANSPORT,
    UNCATALOGUED,
    UNCONDITIONAL,
    World,
    application,
    specs,
    user,
)

app = application


def _raises(kind: problems.ProblemType, fn: Any, *args: Any, **kwargs: Any) -> Problem:
    with pytest.raises(Problem) as info:
        fn(*args, **kwargs)
    assert info.value.kind is kind, info.value
    return info.value


def _keys(config: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    return {
        org: Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
        for org, key in config["agreement_keys"].items()
    }


def _events(w: World, action: str) -> list[dict[str, Any]]:
    with w.registry._sessions() as s:
        rows = s.scalars(select(AdminEvent).where(AdminEvent.action == action))
        return [json.loads(r.detail) for r in rows]


def _approved(w: World, **narrow: Any) -> tuple[str, str]:
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    _, agr = w.service.approve(w.approver, req.id, Narrowing(**narrow), now=MONDAY)
    return req.id, agr.id


# --- the conditional workflow ------------------------------------------------------------------
def test_apply_approve_narrowed_signed_and_published(world: World) -> None:
    w = world
    serial = w.registry.serial()
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    assert req.id.startswith("req-") and len(req.id) == 16
    assert req.status == "submitted" and req.consumer_org == MARKET
    assert req.applicant == w.applicant.subject and req.resource_version == 1
    assert len(req.resource_sha256) == 64
    # Submitting is recorded, but nothing the nodes need changed.
    assert w.registry.serial() == serial
    assert _events(w, "request.submit")[0]["request"] == req.id
    inbox = w.service.list_requests(w.approver, box="inbox", now=MONDAY)
    assert [r.id for r in inbox] == [req.id]
    assert w.service.list_requests(w.approver, box="mine", now=MONDAY) == []
    assert [r.id for r in w.service.list_requests(w.applicant, box="mine", now=MONDAY)] == [req.id]

    approved, agr = w.service.approve(
        w.approver,
        req.id,
        Narrowing(
            fields=("plate", "code", "driver_mobile"),
            valid_days=90,
            daily_quota=1000,
            masking={"plate": Masking(rule=MaskRule.PLATE)},
            end_user_required=True,
        ),
        now=MONDAY,
    )
    assert approved.status == "approved" and approved.agreement_id == agr.id
    assert approved.decided_by == w.approver.subject and approved.days_left is None
    doc = agr.agreement()
    assert agr.id.startswith("agr-") and len(agr.id) == 20
    assert doc.request == req.id and doc.fields == ("plate", "code", "driver_mobile")
    # The personal mobile number is masked by default; the approver added the plate.
    assert doc.masking == {
        "driver_mobile": Masking(rule=MaskRule.MOBILE),
        "plate": Masking(rule=MaskRule.PLATE),
    }
    assert doc.consumer.apps == ("credit-check",) and doc.consumer.name == "市市场监督管理局"
    assert doc.provider.name == "市公安局" and doc.purposes == ("market-supervision",)
    assert doc.resource.sharing_type is SharingType.CONDITIONAL
    assert doc.operations.paths == ("", "*") and doc.daily_quota == 1000
    assert doc.rate_limit is not None and doc.rate_limit.requests == 20
    assert doc.conditions.end_user_required and not doc.conditions.emergency_only
    assert doc.valid_until - doc.valid_from == timedelta(days=90)
    assert agr.state is AgreementState.ACTIVE and agr.status == "active"

    # The agreement reaches the configuration, verifiable with the published keys alone.
    assert w.registry.serial() == serial + 1
    created = _events(w, "agreement.create")
    assert created == [
        {
            "agreement": agr.id,
            "sha256": agr.sha256,
            "provider": POLICE,
            "consumer": MARKET,
            "resource": CONDITIONAL,
            "request": req.id,
            "renews": "",
        }
    ]
    conf = w.service.for_configuration(now=MONDAY)
    [entry] = conf["agreements"]
    assert entry["state"] == "active" and entry["sha256"] == agr.sha256
    checked = document.verify(entry["agreement"], entry["sha256"], entry["signatures"], _keys(conf))
    assert checked.id == agr.id
    assert set(conf["agreement_keys"]) == {POLICE, MARKET}
    # The registry puts the keys and agreements into the signed global configuration.
    gc = w.registry.global_conf_document()
    assert gc["agreements"] == conf["agreements"]
    keys = {o["code"]: o["agreement_key"] for o in gc["organizations"]}
    assert keys[POLICE] == conf["agreement_keys"][POLICE] and keys[TRANSPORT] == ""


def test_the_stored_document_is_the_signed_canonical_form(world: World) -> None:
    w = world
    _, agr_id = _approved(w)
    body, digest = w.service.document(w.applicant, agr_id)
    assert document.digest(json.loads(body)) == digest
    assert body == canonical_json(json.loads(body))


def test_any_changed_byte_of_a_stored_document_fails_verification(world: World) -> None:
    w = world
    _approved(w)
    conf = w.service.for_configuration(now=MONDAY)
    entry, keys = conf["agreements"][0], _keys(conf)
    text = canonical_json(entry["agreement"])
    tried = 0
    for i in range(len(text)):
        for replacement in (b"0", b"x"):
            if text[i : i + 1] == replacement:
                continue
            altered = text[:i] + replacement + text[i + 1 :]
            try:
                doc = json.loads(altered)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            tried += 1
            with pytest.raises(AgreementInvalid):
                document.verify(doc, entry["sha256"], entry["signatures"], keys)
    assert tried > 100
    # Changed in the database itself, the published document no longer verifies either.
    with w.registry._sessions.begin() as s:
        row = s.scalars(select(AgreementRecord)).one()
        s.execute(
            update(AgreementRecord)
            .where(AgreementRecord.id == row.id)
            .values(document=row.document.replace('"daily_quota":5000', '"daily_quota":9000'))
        )
    tampered = w.service.for_configuration(now=MONDAY)["agreements"][0]
    assert tampered["agreement"]["daily_quota"] == 9000
    with pytest.raises(AgreementInvalid, match="SHA-256"):
        document.verify(tampered["agreement"], tampered["sha256"], tampered["signatures"], keys)
    forged = dict(tampered["agreement"], daily_quota=5000)
    other = dict(entry["signatures"], consumer=entry["signatures"]["provider"])
    with pytest.raises(AgreementInvalid, match="consumer"):
        document.verify(forged, entry["sha256"], other, keys)


def test_approver_of_another_organization_is_refused(world: World) -> None:
    w = world
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    # An approver, but of the applying organization (and of a third one): 403.
    _raises(problems.FORBIDDEN, w.service.approve, w.market_approver, req.id)
    transport_approver = user(TRANSPORT, Role.APPROVER)
    _raises(problems.FORBIDDEN, w.service.approve, transport_approver, req.id)
    _raises(problems.FORBIDDEN, w.service.refuse, transport_approver, req.id, "不同意")
    _raises(problems.FORBIDDEN, w.service.approve, w.police_auditor, req.id)
    assert w.service.get_request(w.approver, req.id).status == "submitted"
    # The provider's org-admin may decide.
    _, agr = w.service.approve(w.police_admin, req.id, now=MONDAY)
    assert agr.provider_org == POLICE


def test_refusal_needs_a_reason_and_a_request_is_decided_once(world: World) -> None:
    w = world
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    _raises(problems.REASON_REQUIRED, w.service.refuse, w.approver, req.id, "  ")
    assert w.service.get_request(w.approver, req.id).status == "submitted"
    refused = w.service.refuse(w.approver, req.id, "申请用途与资源共享条件不符", now=MONDAY)
    assert refused.status == "refused" and refused.reason == "申请用途与资源共享条件不符"
    assert _events(w, "request.refuse")[0]["reason"] == "申请用途与资源共享条件不符"
    _raises(problems.REQUEST_DECIDED, w.service.refuse, w.approver, req.id, "再次拒绝")
    _raises(problems.REQUEST_DECIDED, w.service.approve, w.approver, req.id)
    _raises(problems.REQUEST_DECIDED, w.service.withdraw, w.applicant, req.id)
    assert w.service.list(w.platform) == []
    approved_id, _ = _approved(w)
    _raises(problems.REQUEST_DECIDED, w.service.approve, w.approver, approved_id)
    _raises(problems.REQUEST_DECIDED, w.service.refuse, w.approver, approved_id, "反悔")


def test_withdraw_by_the_applicants_organization_only(world: World) -> None:
    w = world
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    _raises(problems.FORBIDDEN, w.service.withdraw, w.approver, req.id)
    _raises(problems.FORBIDDEN, w.service.withdraw, w.transport_admin, req.id)
    # The platform administrator does not act for the applicant organization.
    _raises(problems.FORBIDDEN, w.service.withdraw, w.platform, req.id)
    assert w.service.withdraw(w.market_admin, req.id).status == "withdrawn"
    _raises(problems.REQUEST_DECIDED, w.service.approve, w.approver, req.id)


@pytest.mark.parametrize(
    "narrowing, what",
    [
        ({"fields": ("plate", "fine")}, "field 'fine'"),
        ({"methods": ("GET", "POST")}, "method POST"),
        ({"paths": ("**",)}, "path '**'"),
        ({"paths": ("a/b",)}, "path 'a/b'"),
        ({"apps": ()}, "every app"),
        ({"apps": ("licensing",)}, "app licensing"),
        ({"purposes": ("tax-audit",)}, "purpose tax-audit"),
        ({"valid_days": 181}, "181 days"),
        ({"daily_quota": 5001}, "daily quota of 5001"),
        ({"rate_limit": {"requests": 30, "per_seconds": 1}}, "higher rate"),
        ({"valid_days": 0}, None),
        ({"rate_limit": {"requests": 0, "per_seconds": 1}}, None),
    ],
)
def test_an_approval_never_widens(
    world: World, narrowing: dict[str, Any], what: str | None
) -> None:
    w = world
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    if what is None:  # a malformed narrowing is refused before it reaches the service
        with pytest.raises(ValueError):
            Narrowing.model_validate(narrowing)
        return
    p = _raises(
        problems.APPROVAL_WIDENS, w.service.approve, w.approver, req.id, Narrowing(**narrowing)
    )
    assert what in p.detail
    assert w.service.get_request(w.approver, req.id).status == "submitted"


def test_narrower_terms_are_accepted(world: World) -> None:
    w = world
    req = w.service.apply(
        w.applicant, POLICE, CONDITIONAL, application(apps=[], paths=["**"]), now=MONDAY
    )
    _, agr = w.service.approve(
        w.approver,
        req.id,
        Narrowing(
            paths=("", "*", "a/*/b"),
            apps=("licensing",),
            rate_limit=RateLimit(requests=5, per_seconds=1),
            time_windows=(TimeWindow(days=(1, 2, 3, 4, 5), start=time(8), end=time(18)),),
        ),
        now=MONDAY,
    )
    doc = agr.agreement()
    assert doc.operations.paths == ("", "*", "a/*/b") and doc.consumer.apps == ("licensing",)
    assert doc.conditions.time_windows[0].days == (1, 2, 3, 4, 5)


# --- what may and may not be requested ----------------------------------------------------------
def test_a_non_shared_resource_cannot_be_requested(world: World) -> None:
    w = world
    p = _raises(
        problems.RESOURCE_NOT_SHARED,
        w.service.apply,
        w.applicant,
        POLICE,
        NOT_SHARED,
        application(),
    )
    assert "不予共享" in p.detail
    _raises(
        problems.RESOURCE_NOT_SHARED,
        w.service.subscribe,
        w.applicant,
        POLICE,
        NOT_SHARED,
        purposes=("x",),
    )
    assert w.service.list_requests(w.platform) == [] and w.service.list(w.platform) == []


def test_unconditional_is_subscribed_conditional_is_applied_for(world: World) -> None:
    w = world
    p = _raises(
        problems.CONFLICT, w.service.apply, w.applicant, POLICE, UNCONDITIONAL, application()
    )
    assert "subscribe" in p.detail
    p = _raises(
        problems.CONFLICT, w.service.subscribe, w.applicant, POLICE, CONDITIONAL, purposes=("x",)
    )
    assert "apply" in p.detail
    # A resource the catalog does not describe: conditional, no projection, never subscribed.
    _raises(
        problems.CONFLICT, w.service.subscribe, w.applicant, POLICE, UNCATALOGUED, purposes=("x",)
    )
    req = w.service.apply(w.applicant, POLICE, UNCATALOGUED, application(fields=None), now=MONDAY)
    assert req.resource_version == 0 and req.application.fields is None
    _, agr = w.service.approve(w.approver, req.id, now=MONDAY)
    doc = agr.agreement()
    assert doc.fields is None and doc.resource.sha256 == "" and doc.masking == {}
    _raises(problems.NOT_FOUND, w.service.apply, w.applicant, POLICE, "no-such", application())


def test_subscribe_makes_a_signed_agreement_at_once(world: World) -> None:
    w = world
    serial = w.registry.serial()
    agr = w.service.subscribe(
        w.applicant, POLICE, UNCONDITIONAL, purposes=("road-safety",), now=MONDAY
    )
    doc = agr.agreement()
    assert doc.request == "" and doc.resource.sharing_type is SharingType.UNCONDITIONAL
    assert doc.consumer.org == MARKET and doc.consumer.apps == ()
    assert doc.fields is not None and "driver_mobile" in doc.fields
    assert doc.masking == {"driver_mobile": Masking(rule=MaskRule.MOBILE)}
    assert doc.valid_until - doc.valid_from == timedelta(days=365)
    assert w.registry.serial() == serial + 1
    assert _events(w, "agreement.subscribe")[0]["sha256"] == agr.sha256
    # A narrower projection leaves the unprojected default masking out.
    agr2 = w.service.subscribe(
        w.market_admin, POLICE, UNCONDITIONAL, purposes=("road-safety",), fields=("plate",)
    )
    assert agr2.agreement().fields == ("plate",) and agr2.agreement().masking == {}


def test_who_may_apply_and_subscribe(world: World) -> None:
    w = world
    _raises(
        problems.FORBIDDEN,
        w.service.subscribe,
        w.market_security,
        POLICE,
        UNCONDITIONAL,
        purposes=("x",),
    )
    _raises(
        problems.FORBIDDEN, w.service.apply, w.market_security, POLICE, CONDITIONAL, application()
    )
    # For one's own resource: 422.
    _raises(
        problems.VALIDATION, w.service.apply, w.police_admin, POLICE, CONDITIONAL, application()
    )
    assert w.service.list_requests(w.platform) == [] and w.service.list(w.platform) == []


def test_one_platform_administrator_cannot_make_an_agreement_for_two_organizations(
    world: World,
) -> None:
    """The platform administrator acts for no organization: applying and subscribing need a
    person of the consumer, deciding and renewing a person of the provider."""
    w = world
    admins = (
        w.platform,
        user(None, Role.PLATFORM_ADMIN, name="admin"),
        # Even one who belongs to an organization, without its roles there.
        user(MARKET, Role.PLATFORM_ADMIN, name="market-platform-admin"),
    )
    for admin in admins:
        p = _raises(problems.FORBIDDEN, w.service.apply, admin, POLICE, CONDITIONAL, application())
        assert "consuming organization" in p.detail or MARKET in p.detail
        _raises(
            problems.FORBIDDEN,
            w.service.subscribe,
            admin,
            POLICE,
            UNCONDITIONAL,
            purposes=("road-safety",),
        )
    assert w.service.list_requests(w.platform) == []

    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    police_platform_admin = user(POLICE, Role.PLATFORM_ADMIN, name="police-platform-admin")
    for admin in (*admins, police_platform_admin):
        p = _raises(problems.FORBIDDEN, w.service.approve, admin, req.id)
        assert POLICE in p.detail and "approver" in p.detail
        _raises(problems.FORBIDDEN, w.service.refuse, admin, req.id, "不同意")
    assert w.service.get_request(w.approver, req.id).status == "submitted"
    assert w.service.list(w.platform) == []

    # A person of the provider decides; the platform administrator may still stop sharing.
    _, agr = w.service.approve(w.approver, req.id, now=MONDAY)
    for admin in (*admins, police_platform_admin):
        _raises(problems.FORBIDDEN, w.service.renew, admin, agr.id)
    assert w.service.suspend(w.platform, agr.id, "安全事件处置").status == "suspended"
    assert w.service.resume(w.platform, agr.id).status == "active"
    assert w.service.revoke(w.platform, agr.id, "停止共享").status == "revoked"
    assert [a.id for a in w.service.list(w.platform)] == [agr.id]


@pytest.mark.parametrize(
    "over, kind",
    [
        ({"purpose_text": " "}, problems.VALIDATION),
        ({"legal_basis": ""}, problems.LEGAL_BASIS_MISSING),
        ({"purposes": ["Not A Code"]}, problems.VALIDATION),
        ({"fields": ["no_such_item"]}, problems.VALIDATION),
        ({"methods": ["FETCH"]}, problems.VALIDATION),
        ({"paths": ["/absolute"]}, problems.VALIDATION),
        ({"apps": ["not-an-app"]}, problems.VALIDATION),
    ],
)
def test_bad_applications(world: World, over: dict[str, Any], kind: problems.ProblemType) -> None:
    w = world
    _raises(kind, w.service.apply, w.applicant, POLICE, CONDITIONAL, application(**over))
    assert w.service.list_requests(w.platform) == []


# --- deadlines ---------------------------------------------------------------------------------
def test_deadline_days_left_and_overdue_flag(world: World) -> None:
    w = world
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(), now=MONDAY)
    # The end of the 10th working day, China Standard Time (the calendar knows 2026).
    assert req.deadline == datetime(2026, 12, 14, 15, 59, 59, 999999, tzinfo=UTC)
    assert not req.deadline_provisional
    stored = w.service.get_request(w.approver, req.id, now=MONDAY)
    assert stored.deadline == req.deadline and stored.days_left == 10
    assert req.to_json()["deadline"].startswith("2026-12-14T23:59:59")
    assert req.days_left == 10 and not req.overdue
    friday = MONDAY + timedelta(days=4)
    assert w.service.get_request(w.approver, req.id, now=friday).days_left == 6
    late = MONDAY + timedelta(days=15)
    view = w.service.get_request(w.approver, req.id, now=late)
    assert view.overdue and view.days_left is not None and view.days_left < 0
    assert [r.id for r in w.service.list_requests(w.approver, overdue=True, now=late)] == [req.id]
    assert w.service.list_requests(w.approver, overdue=True, now=friday) == []
    assert [r.id for r in w.service.list_requests(w.approver, overdue=False, now=friday)] == [
        req.id
    ]
    # Once decided, a request is neither counting down nor overdue.
    w.service.refuse(w.approver, req.id, "超出共享条件", now=late)
    view = w.service.get_request(w.approver, req.id, now=late)
    assert not view.overdue and view.days_left is None
    assert w.service.list_requests(w.approver, overdue=True, now=late) == []


# --- the lifecycle ------------------------------------------------------------------------------
def test_suspend_resume_revoke_and_illegal_transitions(world: World) -> None:
    w = world
    _, agr_id = _approved(w)
    serial = w.registry.serial()
    _raises(problems.REASON_REQUIRED, w.service.suspend, w.approver, agr_id, "")
    _raises(problems.AGREEMENT_STATE, w.service.resume, w.approver, agr_id)
    # The consumer does not suspend; the provider's auditor neither.
    _raises(problems.FORBIDDEN, w.service.suspend, w.market_admin, agr_id, "暂停")
    _raises(problems.FORBIDDEN, w.service.suspend, w.police_auditor, agr_id, "暂停")
    view = w.service.suspend(w.approver, agr_id, "数据质量核查期间暂停")
    assert view.state is AgreementState.SUSPENDED and view.reason == "数据质量核查期间暂停"
    assert w.registry.serial() == serial + 1
    _raises(problems.AGREEMENT_STATE, w.service.suspend, w.approver, agr_id, "again")
    _raises(problems.AGREEMENT_STATE, w.service.renew, w.approver, agr_id)
    conf = w.service.for_configuration()
    assert conf["agreements"][0]["state"] == "suspended"
    assert conf["agreements"][0]["reason"] == "数据质量核查期间暂停"
    assert w.service.resume(w.police_admin, agr_id).state is AgreementState.ACTIVE
    assert w.registry.serial() == serial + 2
    # Revoking: either party's org-admin or the provider's approver; a reason; final.
    _raises(problems.FORBIDDEN, w.service.revoke, w.market_approver, agr_id, "撤销")
    _raises(problems.REASON_REQUIRED, w.service.revoke, w.market_admin, agr_id, "")
    revoked = w.service.revoke(w.market_admin, agr_id, "业务终止")
    assert revoked.state is AgreementState.REVOKED and revoked.status == "revoked"
    assert w.registry.serial() == serial + 3
    for fn, args in (
        (w.service.revoke, ("again",)),
        (w.service.suspend, ("x",)),
        (w.service.resume, ()),
    ):
        _raises(problems.AGREEMENT_STATE, fn, w.approver, agr_id, *args)
    _raises(problems.AGREEMENT_STATE, w.service.renew, w.approver, agr_id)
    assert w.registry.serial() == serial + 3
    for action in ("agreement.suspend", "agreement.resume", "agreement.revoke"):
        [detail] = _events(w, action)
        assert detail["agreement"] == agr_id and len(detail["sha256"]) == 64


def test_renew_makes_a_new_agreement_with_the_same_terms(world: World) -> None:
    w = world
    _, agr_id = _approved(w)
    old = w.service.get(w.approver, agr_id)
    _raises(problems.FORBIDDEN, w.service.renew, w.market_admin, agr_id)
    later = MONDAY + timedelta(days=170)
    new = w.service.renew(w.approver, agr_id, 365, now=later)
    doc, before = new.agreement(), old.agreement()
    assert new.id != agr_id and doc.renews == agr_id and new.renews == agr_id
    assert doc.fields == before.fields and doc.masking == before.masking
    assert doc.purposes == before.purposes and doc.request == before.request
    assert doc.resource == before.resource
    # Asked for 365 days, a renewal of a 180-day agreement lasts 180: no longer than the
    # original without a new application; shorter on request.
    assert doc.valid_until - doc.valid_from == timedelta(days=180)
    shorter = w.service.renew(w.approver, agr_id, 60, now=later).agreement()
    assert shorter.valid_until - shorter.valid_from == timedelta(days=60)
    default = w.service.renew(w.approver, agr_id, now=later).agreement()
    assert default.valid_until - default.valid_from == timedelta(days=180)
    _raises(problems.VALIDATION, w.service.renew, w.approver, agr_id, 0)
    assert doc.valid_from > before.valid_from
    # The old one stays in force until it expires; both are published.
    assert w.service.get(w.approver, agr_id, now=later).status == "active"
    ids = {e["agreement"]["id"] for e in w.service.for_configuration(now=later)["agreements"]}
    assert ids == {agr_id, new.id, shorter.id, default.id}
    assert _events(w, "agreement.renew")[0]["renews"] == agr_id
    # An expired one can be renewed as well, and shows as expired meanwhile.
    expired = MONDAY + timedelta(days=200)
    assert w.service.get(w.approver, agr_id, now=expired).status == "expired"
    assert [a.id for a in w.service.list(w.approver, state="expired", now=expired)] == [agr_id]
    assert w.service.renew(w.approver, agr_id, now=expired).renews == agr_id


def test_configuration_keeps_revoked_until_expiry_and_drops_the_long_expired(world: World) -> None:
    w = world
    _, first = _approved(w)
    _, second = _approved(w)
    w.service.revoke(w.approver, second, "合作终止")
    # 180 days of validity: revoked ones go when they expire, others a while later.

    def ids(when: datetime) -> set[str]:
        return {e["agreement"]["id"] for e in w.service.for_configuration(now=when)["agreements"]}

    assert ids(MONDAY + timedelta(days=1)) == {first, second}
    assert ids(MONDAY + timedelta(days=181)) == {first}
    assert ids(MONDAY + timedelta(days=250)) == set()


def test_who_sees_which_agreement(world: World) -> None:
    w = world
    _, agr_id = _approved(w)
    sub = w.service.subscribe(w.applicant, POLICE, UNCONDITIONAL, purposes=("road-safety",))
    assert {a.id for a in w.service.list(w.police_auditor)} == {agr_id, sub.id}
    assert {a.id for a in w.service.list(w.market_security)} == {agr_id, sub.id}
    assert {a.id for a in w.service.list(w.platform)} == {agr_id, sub.id}
    assert w.service.list(w.transport_admin) == []
    assert [a.id for a in w.service.list(w.platform, resource=UNCONDITIONAL)] == [sub.id]
    _raises(problems.FORBIDDEN, w.service.get, w.transport_admin, agr_id)
    _raises(problems.FORBIDDEN, w.service.document, w.transport_admin, agr_id)
    _raises(problems.NOT_FOUND, w.service.get, w.platform, "agr-nosuchagreement")
    req = w.service.list_requests(w.platform)[0]
    _raises(problems.FORBIDDEN, w.service.get_request, w.transport_admin, req.id)
    assert w.service.list_requests(w.transport_admin) == []


def test_emergency_agreements_are_the_platforms_and_the_only_way_to_non_shared(
    world: World,
) -> None:
    w = world
    _raises(
        problems.FORBIDDEN,
        w.service.arrange_emergency,
        w.police_admin,
        POLICE,
        NOT_SHARED,
        MARKET,
        ("epidemic-response",),
    )
    agr = w.service.arrange_emergency(
        w.platform, POLICE, NOT_SHARED, MARKET, ("epidemic-response",), valid_days=30
    )
    doc = agr.agreement()
    assert doc.conditions.emergency_only and agr.emergency_only
    assert doc.resource.sharing_type is SharingType.NONE
    assert _events(w, "agreement.arrange-emergency")[0]["sha256"] == agr.sha256
    # Only the platform changes what the platform arranged.
    _raises(problems.FORBIDDEN, w.service.suspend, w.approver, agr.id, "x")
    _raises(problems.FORBIDDEN, w.service.renew, w.approver, agr.id)
    assert w.service.suspend(w.platform, agr.id, "演练结束").state is AgreementState.SUSPENDED


# --- the organizations' keys ---------------------------------------------------------------------
def test_wrapping_key_file_is_private_and_keys_are_not_stored_in_clear(world: World) -> None:
    w = world
    _approved(w)
    path = w.data_dir / WRAPPING_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    with w.registry._sessions() as s:
        rows = list(s.scalars(select(OrganizationAgreementKey)))
        assert {r.org_code for r in rows} == {POLICE, MARKET}
        for row in rows:
            key = w.service.keys.private_key(s, row.org_code)
            raw = key.private_bytes_raw()
            stored = row.private_key_encrypted.encode() + base64.b64decode(
                row.private_key_encrypted
            )
            assert raw not in stored and base64.b64encode(raw) not in stored
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            assert base64.b64decode(row.public_key) == public
        # A row moved to another organization does not decrypt (AES-GCM associated data).
        police = next(r for r in rows if r.org_code == POLICE)
        market = next(r for r in rows if r.org_code == MARKET)
        market.private_key_encrypted = police.private_key_encrypted
        with pytest.raises(InvalidTag):
            w.service.keys.private_key(s, MARKET)
        s.rollback()
    # A second service (another replica) reads the same wrapping key and keys.
    again = AgreementService(w.registry)
    agr = again.subscribe(w.applicant, POLICE, UNCONDITIONAL, purposes=("road-safety",))
    conf = again.for_configuration()
    entry = next(e for e in conf["agreements"] if e["agreement"]["id"] == agr.id)
    document.verify(entry["agreement"], entry["sha256"], entry["signatures"], _keys(conf))


# --- fields are the items' names (review finding: masking by path escaped) ----------------------
def _field_refused(p: Problem, field: str) -> None:
    assert repr(field) in p.detail and "driver_mobile" in p.detail and "plate" in p.detail
    assert p.extra["field"] == field and "driver_mobile" in p.extra["allowed"]


@pytest.mark.parametrize("field", ["driver_mobile[]", "driver_mobile.number", "plate[].x"])
def test_a_catalogued_resources_fields_are_exactly_its_item_names(world: World, field: str) -> None:
    w = world
    # Asking for a path under a personal item would drop its default masking (keyed by the
    # item's name): refused wherever a projection is given.
    p = _raises(
        problems.VALIDATION,
        w.service.apply,
        w.applicant,
        POLICE,
        CONDITIONAL,
        application(fields=["plate", field]),
    )
    _field_refused(p, field)
    p = _raises(
        problems.VALIDATION,
        w.service.subscribe,
        w.applicant,
        POLICE,
        UNCONDITIONAL,
        purposes=("road-safety",),
        fields=(field,),
    )
    _field_refused(p, field)
    p = _raises(
        problems.VALIDATION,
        w.service.arrange_emergency,
        w.platform,
        POLICE,
        NOT_SHARED,
        MARKET,
        ("epidemic-response",),
        fields=(field,),
    )
    _field_refused(p, field)
    req = w.service.apply(w.applicant, POLICE, CONDITIONAL, application(fields=None), now=MONDAY)
    for narrowing in (
        Narrowing(fields=("plate", field)),
        Narrowing(masking={field: Masking(rule=MaskRule.SUPPRESS)}),
    ):
        p = _raises(problems.VALIDATION, w.service.approve, w.approver, req.id, narrowing)
        _field_refused(p, field)
    assert w.service.get_request(w.approver, req.id).status == "submitted"
    assert w.service.list(w.platform) == []
    # By its name, the personal item is projected and masked by default.
    _, agr = w.service.approve(
        w.approver, req.id, Narrowing(fields=("plate", "driver_mobile")), now=MONDAY
    )
    assert agr.agreement().masking == {"driver_mobile": Masking(rule=MaskRule.MOBILE)}


def test_an_uncatalogued_resources_fields_may_be_paths(world: World) -> None:
    w = world
    req = w.service.apply(
        w.applicant,
        POLICE,
        UNCATALOGUED,
        application(fields=["owner.mobile", "plates[]"]),
        now=MONDAY,
    )
    assert req.application.fields == ("owner.mobile", "plates[]")
    _, agr = w.service.approve(
        w.approver,
        req.id,
        Narrowing(
            fields=("owner.mobile",), masking={"owner.mobile": Masking(rule=MaskRule.MOBILE)}
        ),
        now=MONDAY,
    )
    doc = agr.agreement()
    assert doc.fields == ("owner.mobile",)
    assert doc.masking == {"owner.mobile": Masking(rule=MaskRule.MOBILE)}
    _raises(
        problems.VALIDATION,
        w.service.apply,
        w.applicant,
        POLICE,
        UNCATALOGUED,
        application(fields=["Not A Path"]),
    )


# --- a renewal is on the resource as it is now (review finding) ---------------------------------
def _republish(w: World, **changes: Any) -> None:
    """Publish a new version of the conditional resource, changed."""
    conditional = specs()[0][0]
    spec = ResourceSpec.model_validate(
        {**conditional.model_dump(mode="json", exclude={"version", "status"}), **changes}
    )
    CatalogService(w.registry).publish(w.platform, spec)


def test_renew_takes_the_current_version_and_rechecks_the_resource(world: World) -> None:
    w = world
    _, agr_id = _approved(w)
    before = w.service.get(w.approver, agr_id).agreement()
    assert before.resource.version == 1
    _republish(w, name="机动车交通违法记录（第二版）")
    renewed = w.service.renew(w.approver, agr_id, now=MONDAY + timedelta(days=1)).agreement()
    current = w.service._target(POLICE, CONDITIONAL).ref
    assert renewed.resource == current and current.version == 2
    assert renewed.resource.sha256 != before.resource.sha256
    assert renewed.fields == before.fields and renewed.masking == before.masking

    # Reclassified 不予共享: only an emergency agreement reaches it, renewed or not.
    _republish(w, sharing_type=SharingType.NONE.value, sharing_conditions="")
    p = _raises(problems.RESOURCE_NOT_SHARED, w.service.renew, w.approver, agr_id)
    assert "不予共享" in p.detail
    # Deprecated (废止): nothing new on it.
    CatalogService(w.registry).deprecate(w.platform, POLICE, CONDITIONAL, "并入新资源")
    p = _raises(problems.CONFLICT, w.service.renew, w.approver, agr_id)
    assert "deprecated" in p.detail
    assert {a.id for a in w.service.list(w.platform)} == {agr_id, renewed.id}


def test_renew_checks_the_projection_against_the_current_items(world: World) -> None:
    w = world
    _, agr_id = _approved(w)  # plate, code, occurred_at, driver_mobile
    items = specs()[0][0].model_dump(mode="json")["items"]
    _republish(w, items=[i for i in items if i["field"] != "driver_mobile"])
    p = _raises(problems.VALIDATION, w.service.renew, w.approver, agr_id)
    assert "'driver_mobile'" in p.detail


def test_an_emergency_agreement_on_a_non_shared_resource_is_renewed_by_the_platform(
    world: World,
) -> None:
    w = world
    agr = w.service.arrange_emergency(
        w.platform, POLICE, NOT_SHARED, MARKET, ("epidemic-response",), valid_days=30
    )
    renewed = w.service.renew(w.platform, agr.id, 365)
    doc = renewed.agreement()
    assert doc.conditions.emergency_only and doc.resource.sharing_type is SharingType.NONE
    assert doc.valid_until - doc.valid_from == timedelta(days=30)
