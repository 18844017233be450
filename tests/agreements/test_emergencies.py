"""Emergency mode (应急): the two-administrator rule, lapse, expiry, end, the configuration's
share, access notes and their review; through the service (SQLite and PostgreSQL), the API
and the ``qiao emergency`` commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from qiao import problems
from qiao.agreements.emergencies import EmergencyService, EmergencyStatus
from qiao.cli import app as cli_app
from qiao.config import HubSettings
from qiao.db import session_factory
from qiao.demo.processes import write_toml
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import CLI, Principal, Role
from qiao.identity.service import IdentityService
from qiao.problems import Problem, ProblemType
from qiao.registry.models import AdminEvent
from qiao.registry.services import RegistryService

A = "91350100M000100Y43"  # 市卫生健康委员会: provides the epidemic statistics
B = "12350100MB00010016"  # 市公安局: a consumer
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
FAST: dict[str, Any] = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}

ADMIN1 = Principal("user:admin1", frozenset({Role.PLATFORM_ADMIN}), kind="user")
ADMIN2 = Principal("user:admin2", frozenset({Role.PLATFORM_ADMIN}), kind="user")
AUDITOR_A = Principal("user:aud-a", frozenset({Role.AUDITOR}), org=A, kind="user")
AUDITOR_B = Principal("user:aud-b", frozenset({Role.AUDITOR}), org=B, kind="user")
OFFICER_B = Principal("user:sec-b", frozenset({Role.SECURITY_OFFICER}), org=B, kind="user")
APPROVER_A = Principal("user:app-a", frozenset({Role.APPROVER}), org=A, kind="user")


def settings_for(tmp_path: Path, db_url: str) -> HubSettings:
    return HubSettings.load(None, data_dir=tmp_path, database_url=db_url, instance="CN-T", **FAST)


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> RegistryService:
    reg = open_registry(settings_for(tmp_path, db_url))
    reg.add_organization(A, "市卫生健康委员会")
    reg.add_organization(B, "市公安局")
    reg.add_resource(A, "epidemic-daily")
    reg.add_resource(A, "vaccinations")
    return reg


@pytest.fixture
def svc(registry: RegistryService) -> EmergencyService:
    return EmergencyService(registry)


def raises(kind: ProblemType, fn: Any, *args: Any, **kwargs: Any) -> Problem:
    with pytest.raises(Problem) as e:
        fn(*args, **kwargs)
    assert e.value.kind is kind, e.value
    return e.value


def events(registry: RegistryService, prefix: str = "emergency.") -> list[tuple[str, str, Any]]:
    with session_factory(registry.engine)() as s:
        rows = s.scalars(
            select(AdminEvent).where(AdminEvent.action.startswith(prefix)).order_by(AdminEvent.id)
        )
        return [(e.action, e.actor, json.loads(e.detail)) for e in rows]


def declare(svc: EmergencyService, **kw: Any) -> str:
    args: dict[str, Any] = {
        "resources": [f"{A}/epidemic-daily"],
        "organizations": [B],
        "reason": "疫情应急演练",
        "duration_hours": 24,
        "now": T0,
    }
    args.update(kw)
    return svc.declare(ADMIN1, **args).id


# --- the two-administrator rule -----------------------------------------------------------
def test_an_emergency_names_at_least_one_resource(
    svc: EmergencyService, registry: RegistryService
) -> None:
    # An empty resource scope would open every emergency-only agreement there is.
    serial = registry.serial()
    p = raises(problems.VALIDATION, svc.declare, ADMIN1, resources=[], reason="疫情",
               duration_hours=1)  # fmt: skip
    assert "at least one" in p.detail
    p = raises(problems.VALIDATION, svc.declare, ADMIN1, reason="疫情", duration_hours=1)
    assert "at least one" in p.detail
    assert svc.list(ADMIN1) == [] and events(registry) == [] and registry.serial() == serial
    # Organizations may be left empty: every consumer organization of those resources.
    e = svc.declare(ADMIN1, resources=[f"{A}/epidemic-daily"], reason="疫情", duration_hours=1)
    assert e.resources == (f"{A}/epidemic-daily",) and e.organizations == ()


def test_two_administrators_declare_and_confirm(
    svc: EmergencyService, registry: RegistryService
) -> None:
    serial = registry.serial()
    e = svc.declare(
        ADMIN1,
        resources=[f"{A.lower()}/epidemic-daily", f"{A}/epidemic-daily"],
        organizations=[B],
        reason="  疫情应急演练  ",
        duration_hours=24,
        now=T0,
    )
    assert e.id.startswith("em-") and len(e.id) == 15
    assert e.status is EmergencyStatus.PROPOSED
    assert e.resources == (f"{A}/epidemic-daily",)  # normalized, once
    assert e.reason == "疫情应急演练"
    assert e.confirm_before == T0 + timedelta(hours=1)
    # A proposal changes nothing the nodes act on.
    assert registry.serial() == serial
    assert svc.for_configuration(now=T0) == []

    p = raises(problems.SECOND_ADMINISTRATOR_REQUIRED, svc.confirm, ADMIN1, e.id, now=T0)
    assert p.status == 403 and "another platform administrator" in p.detail
    assert registry.serial() == serial

    start = T0 + timedelta(minutes=5)
    active = svc.confirm(ADMIN2, e.id, now=start)
    assert active.status is EmergencyStatus.ACTIVE
    assert active.confirmed_by == "user:admin2" and active.confirmed_at == start
    assert active.expires_at == start + timedelta(hours=24)
    assert registry.serial() == serial + 1
    assert svc.for_configuration(now=start) == [
        {
            "id": e.id,
            "reason": "疫情应急演练",
            "resources": [f"{A}/epidemic-daily"],
            "organizations": [B],
            "starts_at": start.isoformat(),
            "expires_at": (start + timedelta(hours=24)).isoformat(),
        }
    ]
    # A confirmed emergency is not confirmed twice.
    raises(problems.CONFLICT, svc.confirm, ADMIN2, e.id, now=start)
    assert [(a, actor) for a, actor, _ in events(registry)] == [
        ("emergency.declare", "user:admin1"),
        ("emergency.confirm", "user:admin2"),
    ]
    declared = events(registry)[0][2]
    assert declared["reason"] == "疫情应急演练" and declared["hours"] == 24
    assert declared["organizations"] == [B]


def test_an_account_the_declarer_created_cannot_confirm(
    svc: EmergencyService, registry: RegistryService
) -> None:
    """One administrator could otherwise create a second platform-administrator account and
    confirm their own emergency with it."""
    from qiao.identity.models import User

    with registry._sessions.begin() as s:
        s.add(User(username="admin3", created_by="user:admin1"))
        s.add(User(username="admin4", created_by="user:admin2"))
    admin3 = Principal("user:admin3", frozenset({Role.PLATFORM_ADMIN}), kind="user")
    admin4 = Principal("user:admin4", frozenset({Role.PLATFORM_ADMIN}), kind="user")
    e = svc.declare(ADMIN1, resources=[f"{A}/epidemic-daily"], reason="演练", duration_hours=1)
    p = raises(problems.SECOND_ADMINISTRATOR_REQUIRED, svc.confirm, admin3, e.id)
    assert "created by user:admin1" in p.detail
    assert svc.confirm(admin4, e.id).status is EmergencyStatus.ACTIVE


def test_the_configuration_carries_emergencies_in_force(
    svc: EmergencyService, registry: RegistryService
) -> None:
    e = declare(svc, organizations=[], now=None)
    svc.confirm(ADMIN2, e)
    listed = registry.global_conf_document()["emergencies"]
    assert [x["id"] for x in listed] == [e]
    # No organizations named: every consumer organization; the resources are always named.
    assert listed[0]["resources"] == [f"{A}/epidemic-daily"] and listed[0]["organizations"] == []
    signed = registry.signed_global_conf()
    assert signed["document"]["emergencies"][0]["id"] == e


def test_declaring_needs_a_platform_administrator_a_reason_and_a_sane_duration(
    registry: RegistryService, svc: EmergencyService
) -> None:
    scope = [f"{A}/epidemic-daily"]
    raises(problems.FORBIDDEN, svc.declare, OFFICER_B, resources=scope, reason="x",
           duration_hours=1)  # fmt: skip
    raises(problems.REASON_REQUIRED, svc.declare, ADMIN1, resources=scope, reason="  ",
           duration_hours=1)  # fmt: skip
    for hours in (0, -1, 73):
        raises(problems.VALIDATION, svc.declare, ADMIN1, resources=scope, reason="x",
               duration_hours=hours)  # fmt: skip
    assert svc.declare(ADMIN1, resources=scope, reason="x", duration_hours=72).hours == 72
    short = EmergencyService(registry, max_hours=4)
    raises(problems.VALIDATION, short.declare, ADMIN1, resources=scope, reason="x",
           duration_hours=5)  # fmt: skip
    # The scope names registered resources and organizations.
    for bad in ("epidemic-daily", f"{A}/", f"{A}/no-such-resource", f"{B}/epidemic-daily"):
        raises(problems.VALIDATION, svc.declare, ADMIN1, resources=[bad], reason="x",
               duration_hours=1)  # fmt: skip
    raises(problems.INVALID_USCC, svc.declare, ADMIN1, organizations=["123"], reason="x",
           duration_hours=1)  # fmt: skip
    unregistered = "91110000600037341L"  # a valid code, not registered here
    raises(problems.VALIDATION, svc.declare, ADMIN1, organizations=[unregistered], reason="x",
           duration_hours=1)  # fmt: skip
    raises(problems.FORBIDDEN, svc.confirm, AUDITOR_A, declare(svc))


def test_an_unconfirmed_proposal_lapses(registry: RegistryService) -> None:
    svc = EmergencyService(registry, confirm_seconds=600)
    e = declare(svc)
    assert svc.get(ADMIN1, e, now=T0 + timedelta(seconds=599)).status is EmergencyStatus.PROPOSED
    later = T0 + timedelta(seconds=600)
    assert svc.get(ADMIN1, e, now=later).status is EmergencyStatus.LAPSED
    p = raises(problems.CONFLICT, svc.confirm, ADMIN2, e, now=later)
    assert "lapsed" in p.detail
    raises(problems.CONFLICT, svc.end, ADMIN1, e, "too late anyway", now=later)
    assert svc.for_configuration(now=later) == []
    # The default window is an hour.
    e2 = declare(EmergencyService(registry))
    raises(problems.CONFLICT, EmergencyService(registry).confirm, ADMIN2, e2,
           now=T0 + timedelta(hours=1))  # fmt: skip


def test_an_emergency_ends_by_itself_at_expiry(
    svc: EmergencyService, registry: RegistryService
) -> None:
    e = declare(svc, duration_hours=2)
    svc.confirm(ADMIN2, e, now=T0)
    serial = registry.serial()
    end = T0 + timedelta(hours=2)
    assert [x["id"] for x in svc.for_configuration(now=end - timedelta(seconds=1))] == [e]
    assert svc.for_configuration(now=end) == []
    assert svc.get(AUDITOR_B, e, now=end).status is EmergencyStatus.EXPIRED
    # Nothing had to happen on the hub for it to expire.
    assert registry.serial() == serial
    raises(problems.CONFLICT, svc.end, ADMIN1, e, "over", now=end)


def test_any_platform_administrator_ends_an_emergency_early(
    svc: EmergencyService, registry: RegistryService
) -> None:
    e = declare(svc)
    svc.confirm(ADMIN2, e, now=T0)
    serial = registry.serial()
    raises(problems.FORBIDDEN, svc.end, OFFICER_B, e, "stop", now=T0)
    raises(problems.REASON_REQUIRED, svc.end, ADMIN1, e, " ", now=T0)
    later = T0 + timedelta(hours=1)
    ended = svc.end(ADMIN1, e, "疫情已控制", now=later)
    assert ended.status is EmergencyStatus.ENDED
    assert (ended.ended_by, ended.ended_at, ended.end_reason) == (
        "user:admin1",
        later,
        "疫情已控制",
    )
    assert registry.serial() == serial + 1  # nodes learn it at once, not at expiry
    assert svc.for_configuration(now=later) == []
    raises(problems.CONFLICT, svc.end, ADMIN2, e, "again", now=later)
    # A proposal is withdrawn the same way, and can no longer be confirmed.
    p = declare(svc)
    assert svc.end(ADMIN1, p, "declared by mistake", now=T0).status is EmergencyStatus.ENDED
    raises(problems.CONFLICT, svc.confirm, ADMIN2, p, now=T0)
    actions = [a for a, _, _ in events(registry)]
    assert actions == [
        "emergency.declare",
        "emergency.confirm",
        "emergency.end",
        "emergency.declare",
        "emergency.end",
    ]


def test_who_may_read_emergencies(svc: EmergencyService) -> None:
    e = declare(svc)
    for reader in (ADMIN1, AUDITOR_A, AUDITOR_B, OFFICER_B, CLI):
        assert [x.id for x in svc.list(reader)] == [e]
        assert svc.get(reader, e).id == e
    raises(problems.FORBIDDEN, svc.list, APPROVER_A)
    raises(problems.FORBIDDEN, svc.get, APPROVER_A, e)
    raises(problems.NOT_FOUND, svc.get, ADMIN1, "em-aaaaaaaaaaaa")
    raises(problems.NOT_FOUND, svc.get, ADMIN1, "'; drop table emergencies; --")


# --- what was done under an emergency -------------------------------------------------------
def note(svc: EmergencyService, e: str, exchange: str, client_org: str = B, **kw: Any) -> bool:
    args: dict[str, Any] = {
        "exchange_id": exchange,
        "node": "node-b",
        "ledger_index": 7,
        "provider_org": A,
        "resource": "epidemic-daily",
        "client": f"CN-T/{client_org}/police-app",
        "at": T0 + timedelta(minutes=10),
    }
    args.update(kw)
    return svc.note_access(e, **args)


def test_accesses_are_noted_once_and_reviewed(
    svc: EmergencyService, registry: RegistryService
) -> None:
    e = declare(svc)
    svc.confirm(ADMIN2, e, now=T0)
    assert note(svc, e, "x-1") is True
    assert note(svc, e, "x-1") is False  # a resubmitted record is noted once
    assert note(svc, e, "x-1", node="node-c") is True  # same id from another node: another
    assert note(svc, e, "x-2") is True
    raises(problems.NOT_FOUND, note, svc, "em-aaaaaaaaaaaa", "x-3")
    seen = svc.accesses(ADMIN1, e)
    assert [(a.exchange_id, a.node) for a in seen] == [
        ("x-1", "node-b"),
        ("x-1", "node-c"),
        ("x-2", "node-b"),
    ]
    first = seen[0].to_json()
    assert first["ledger_index"] == 7 and first["reviewed"] is False
    assert first["client"] == f"CN-T/{B}/police-app"

    raises(problems.FORBIDDEN, svc.review, OFFICER_B, e, "x-1", "node-b", "ok")
    raises(problems.REASON_REQUIRED, svc.review, AUDITOR_A, e, "x-1", "node-b", "  ")
    raises(problems.NOT_FOUND, svc.review, AUDITOR_A, e, "x-9", "node-b", "ok")
    at = T0 + timedelta(days=1)
    done = svc.review(AUDITOR_A, e, "x-1", "node-b", "用于应急处置,合规", now=at)
    assert (done.reviewed_by, done.reviewed_at, done.review_note) == (
        "user:aud-a",
        at,
        "用于应急处置,合规",
    )
    raises(problems.CONFLICT, svc.review, ADMIN1, e, "x-1", "node-b", "again")
    unreviewed = svc.accesses(ADMIN1, e, unreviewed_only=True)
    assert [(a.exchange_id, a.node) for a in unreviewed] == [("x-1", "node-c"), ("x-2", "node-b")]
    assert svc.review(ADMIN1, e, "x-2", "node-b", "ok").reviewed_by == "user:admin1"
    reviews = [d for a, _, d in events(registry) if a == "emergency.access.review"]
    assert [(d["exchange_id"], d["node"]) for d in reviews] == [
        ("x-1", "node-b"),
        ("x-2", "node-b"),
    ]
    assert [actor for a, actor, _ in events(registry) if a.endswith("review")] == [
        "user:aud-a",
        "user:admin1",
    ]


def test_readers_outside_the_platform_see_their_own_organizations_accesses(
    svc: EmergencyService,
) -> None:
    e = declare(svc)
    svc.confirm(ADMIN2, e, now=T0)
    c = "91110000600037341L"  # an organization with no part in the exchange
    note(svc, e, "x-1")
    auditor_c = Principal("user:aud-c", frozenset({Role.AUDITOR}), org=c, kind="user")
    assert [a.exchange_id for a in svc.accesses(AUDITOR_A, e)] == ["x-1"]  # provider
    assert [a.exchange_id for a in svc.accesses(OFFICER_B, e)] == ["x-1"]  # consumer
    assert svc.accesses(auditor_c, e) == []
    raises(problems.NOT_FOUND, svc.review, auditor_c, e, "x-1", "node-b", "looked")
    raises(problems.FORBIDDEN, svc.accesses, APPROVER_A, e)


# --- API ------------------------------------------------------------------------------------
def test_the_api(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    registry = open_registry(settings)
    registry.add_organization(A, "市卫生健康委员会")
    registry.add_organization(B, "市公安局")
    registry.add_resource(A, "epidemic-daily")
    client = TestClient(create_app(settings, registry))

    def as_(label: str, org: str | None = None, role: Role | None = None) -> dict[str, str]:
        roles = frozenset({role}) if role else frozenset()
        token = registry.create_operator_token(label, org=org, roles=roles)
        return {"Authorization": f"Bearer {token}"}

    one, two = as_("admin-one"), as_("admin-two")
    auditor = as_("aud-a", A, Role.AUDITOR)
    body = {"reason": "疫情应急演练", "hours": 24, "resources": [f"{A}/epidemic-daily"]}
    r = client.post("/api/v1/emergencies", json=body, headers=auditor)
    assert r.status_code == 403
    r = client.post("/api/v1/emergencies", json={**body, "hours": 999}, headers=one)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = client.post("/api/v1/emergencies", json={**body, "reason": ""}, headers=one)
    assert r.json()["type"] == "urn:qiao:problem:hub:reason-required"
    # An empty or missing resource scope: 422, never "every resource".
    for unscoped in ({**body, "resources": []}, {"reason": "疫情应急演练", "hours": 24}):
        r = client.post("/api/v1/emergencies", json=unscoped, headers=one)
        assert r.status_code == 422 and r.json()["type"] == "urn:qiao:problem:hub:validation"
    r = client.post("/api/v1/emergencies", json=body, headers=one)
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["status"] == "proposed" and e["declared_by"] == "operator:admin-one"

    r = client.post(f"/api/v1/emergencies/{e['id']}/confirm", headers=one)
    assert r.status_code == 403
    assert r.json()["type"] == "urn:qiao:problem:hub:second-administrator-required"
    r = client.post(f"/api/v1/emergencies/{e['id']}/confirm", headers=two)
    assert r.status_code == 200 and r.json()["status"] == "active"
    # In the full configuration, the one enrolled nodes fetch.
    conf = registry.signed_global_conf()["document"]
    assert [x["id"] for x in conf["emergencies"]] == [e["id"]]

    assert [x["id"] for x in client.get("/api/v1/emergencies", headers=auditor).json()] == [e["id"]]
    assert client.get(f"/api/v1/emergencies/{e['id']}", headers=auditor).json()["confirmed_by"] == (
        "operator:admin-two"
    )
    assert client.get("/api/v1/emergencies/em-aaaaaaaaaaaa", headers=one).status_code == 404

    app_state_svc: EmergencyService = client.app.state.emergencies  # type: ignore[attr-defined]
    app_state_svc.note_access(
        e["id"],
        exchange_id="x-1",
        node="node-b",
        ledger_index=3,
        provider_org=A,
        resource="epidemic-daily",
        client=f"CN-T/{B}/police-app",
        at=T0,
    )
    url = f"/api/v1/emergencies/{e['id']}/accesses"
    assert [a["exchange_id"] for a in client.get(url, headers=auditor).json()] == ["x-1"]
    review = {"exchange_id": "x-1", "node": "node-b", "note": "合规"}
    r = client.post(url + "/review", json=review, headers=auditor)
    assert r.status_code == 200 and r.json()["reviewed_by"] == "token:aud-a"
    assert client.get(url + "?unreviewed=true", headers=auditor).json() == []

    r = client.post(f"/api/v1/emergencies/{e['id']}/end", json={"reason": ""}, headers=two)
    assert r.status_code == 422
    r = client.post(f"/api/v1/emergencies/{e['id']}/end", json={"reason": "结束"}, headers=two)
    assert r.status_code == 200 and r.json()["status"] == "ended"
    assert registry.signed_global_conf()["document"]["emergencies"] == []


# --- the commands ---------------------------------------------------------------------------
def test_the_commands_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = write_toml(tmp_path / "hub.toml", {"data_dir": str(tmp_path), "instance": "CN-T", **FAST})
    settings = HubSettings.load(cfg)
    registry = open_registry(settings)
    registry.add_organization(A, "市卫生健康委员会")
    registry.add_organization(B, "市公安局")
    registry.add_resource(A, "epidemic-daily")
    identity = IdentityService(registry, settings)
    password = "Bridge-over-river-9"
    identity.add_user(CLI, "wang.admin", org=None, roles=frozenset({Role.PLATFORM_ADMIN}),
                      password=password)  # fmt: skip
    identity.add_user(CLI, "li.admin", org=None, roles=frozenset({Role.PLATFORM_ADMIN}),
                      password=password)  # fmt: skip
    identity.add_user(CLI, "zhao.audit", org=A, roles=frozenset({Role.AUDITOR}), password=password)
    em = ["emergency", "--config", str(cfg)]

    r = runner.invoke(cli_app, [*em, "declare", "--as", "zhao.audit", "--reason", "x",
                                "--hours", "2"])  # fmt: skip
    assert r.exit_code == 2 and "platform administrator" in r.output
    r = runner.invoke(cli_app, [*em, "declare", "--as", "nobody", "--reason", "x", "--hours", "2"])
    assert r.exit_code == 2 and "nobody" in r.output
    r = runner.invoke(cli_app, [*em, "declare", "--as", "wang.admin", "--reason", "疫情应急演练",
                                "--hours", "2", "--resource", f"{A}/epidemic-daily",
                                "--org", B])  # fmt: skip
    assert r.exit_code == 0, r.output
    eid = r.stdout.strip().splitlines()[-1]
    assert eid.startswith("em-")

    r = runner.invoke(cli_app, [*em, "confirm", eid, "--as", "wang.admin"])
    assert r.exit_code == 2 and "second-administrator-required" in r.output
    serial = registry.serial()
    r = runner.invoke(cli_app, [*em, "confirm", eid, "--as", "li.admin"])
    assert r.exit_code == 0 and "active until" in r.output, r.output
    assert registry.serial() == serial + 1

    r = runner.invoke(cli_app, [*em, "list"])
    assert r.exit_code == 0 and eid in r.output and "active" in r.output
    r = runner.invoke(cli_app, [*em, "show", eid, "--as", "zhao.audit"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["declared_by"] == "user:wang.admin" and shown["confirmed_by"] == "user:li.admin"
    assert shown["resources"] == [f"{A}/epidemic-daily"] and shown["organizations"] == [B]

    EmergencyService(registry).note_access(
        eid,
        exchange_id="x-1",
        node="node-b",
        ledger_index=None,
        provider_org=A,
        resource="epidemic-daily",
        client=f"CN-T/{B}/police-app",
        at=T0,
    )
    r = runner.invoke(cli_app, [*em, "accesses", eid, "--unreviewed"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["exchange_id"] == "x-1"

    r = runner.invoke(cli_app, [*em, "end", eid, "--reason", "演练结束"])  # the local operator
    assert r.exit_code == 0, r.output
    assert json.loads(runner.invoke(cli_app, [*em, "show", eid]).stdout)["status"] == "ended"
    actors = [actor for _, actor, _ in events(registry)]
    assert actors == ["user:wang.admin", "user:li.admin", "cli:local-operator"]
    # Without --as, the local operator is one administrator: it cannot confirm its own.
    r = runner.invoke(cli_app, [*em, "declare", "--reason", "x", "--hours", "1"])
    assert r.exit_code == 2 and "at least one" in r.output
    r = runner.invoke(cli_app, [*em, "declare", "--reason", "x", "--hours", "1",
                                "--resource", f"{A}/epidemic-daily"])  # fmt: skip
    own = r.stdout.strip().splitlines()[-1]
    r = runner.invoke(cli_app, [*em, "confirm", own])
    assert r.exit_code == 2 and "second-administrator-required" in r.output
