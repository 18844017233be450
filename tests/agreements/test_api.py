"""The request and agreement routes of the hub: workflows, problem+json, roles, CSRF."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient

from qiao.agreements import document
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import CLI, Role
from qiao.registry.services import RegistryService
from tests.agreements.conftest import (
    CONDITIONAL,
    MARKET,
    MONDAY,
    NOT_SHARED,
    POLICE,
    TRANSPORT,
    UNCONDITIONAL,
    application,
    populate,
)

PROBLEM = "application/problem+json"
BASE = "https://hub.test"


@dataclass
class Hub:
    client: TestClient
    registry: RegistryService
    app: Any

    def token(self, org: str | None, *roles: Role) -> dict[str, str]:
        label = f"t-{org}-{'-'.join(roles)}"
        token = self.registry.create_operator_token(label, org=org, roles=frozenset(roles))
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def hub(db_url: str, tmp_path: Path) -> Iterator[Hub]:
    settings = HubSettings.load(
        None,
        data_dir=tmp_path,
        instance="CN-T",
        database_url=db_url,
        public_url=BASE,
        ledger_interval_seconds=3600,
        argon2_memory_kib=8,
        argon2_time_cost=1,
        argon2_parallelism=1,
    )
    registry = open_registry(settings)
    populate(registry)
    app = create_app(settings, registry)
    with TestClient(app, base_url=BASE) as client:
        yield Hub(client, registry, app)


def _problem(r: Any, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:qiao:problem:hub:{kind}" and body["status"] == status
    return body


def _apply(hub: Hub, **over: Any) -> dict[str, Any]:
    body = {
        "provider": POLICE,
        "resource": CONDITIONAL,
        **application(**over).model_dump(mode="json"),
    }
    r = hub.client.post(
        "/api/v1/requests", json=body, headers=hub.token(MARKET, Role.APP_DEVELOPER)
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_apply_approve_and_fetch_the_signed_agreement(hub: Hub) -> None:
    approver = hub.token(POLICE, Role.APPROVER)
    serial = hub.client.get("/api/v1/global-configuration").json()["document"]["serial"]
    req = _apply(hub)
    assert req["status"] == "submitted" and req["days_left"] is not None
    assert req["overdue"] is False and req["application"]["apps"] == ["credit-check"]
    inbox = hub.client.get("/api/v1/requests?box=inbox", headers=approver).json()
    assert [r["id"] for r in inbox] == [req["id"]]
    assert hub.client.get("/api/v1/requests?box=mine", headers=approver).json() == []
    shown = hub.client.get(f"/api/v1/requests/{req['id']}", headers=approver).json()
    assert shown["application"]["purpose_text"] == application().purpose_text
    # An approver of the applying organization may not decide.
    r = hub.client.post(
        f"/api/v1/requests/{req['id']}/approve", json={}, headers=hub.token(MARKET, Role.APPROVER)
    )
    assert POLICE in _problem(r, 403, "forbidden")["detail"]
    r = hub.client.post(
        f"/api/v1/requests/{req['id']}/approve",
        json={"fields": ["plate", "code"], "masking": {"plate": {"rule": "plate"}}},
        headers=approver,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["request"]["status"] == "approved"
    agr = out["agreement"]
    assert out["request"]["agreement_id"] == agr["id"] and agr["status"] == "active"
    assert agr["document"]["fields"] == ["plate", "code"]
    assert agr["document"]["masking"] == {"plate": {"rule": "plate", "params": {}}}

    consumer = hub.token(MARKET, Role.AUDITOR)
    r = hub.client.get(f"/api/v1/agreements/{agr['id']}/document", headers=consumer)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert hashlib.sha256(r.content).hexdigest() == agr["sha256"]
    assert r.headers["x-qiao-agreement-sha256"] == agr["sha256"]
    assert json.loads(r.content) == agr["document"]
    listed = hub.client.get("/api/v1/agreements", headers=consumer).json()
    assert [a["id"] for a in listed] == [agr["id"]]
    foreign = hub.token(TRANSPORT, Role.ORG_ADMIN)
    assert hub.client.get("/api/v1/agreements", headers=foreign).json() == []
    _problem(hub.client.get(f"/api/v1/agreements/{agr['id']}", headers=foreign), 403, "forbidden")

    # The signed global configuration carries it (in the full form the enrolled nodes fetch),
    # verifiable with the keys it publishes.
    body = hub.registry.signed_global_conf()["document"]
    assert body["serial"] > serial
    [entry] = body["agreements"]
    keys = {
        o["code"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(o["agreement_key"]))
        for o in body["organizations"]
        if o["agreement_key"]
    }
    assert document.verify(entry["agreement"], entry["sha256"], entry["signatures"], keys)


def test_odrl_export(hub: Hub) -> None:
    req = _apply(hub)
    approver = hub.token(POLICE, Role.APPROVER)
    r = hub.client.post(f"/api/v1/requests/{req['id']}/approve", headers=approver)
    agr = r.json()["agreement"]
    r = hub.client.get(f"/api/v1/agreements/{agr['id']}/odrl", headers=approver)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/ld+json")
    policy = r.json()
    assert "@context" in policy and agr["id"] in json.dumps(policy)


def test_refusal_needs_a_reason_and_a_decision_is_final(hub: Hub) -> None:
    approver = hub.token(POLICE, Role.APPROVER)
    req = _apply(hub)
    url = f"/api/v1/requests/{req['id']}"
    _problem(hub.client.post(f"{url}/refuse", json={}, headers=approver), 422, "reason-required")
    r = hub.client.post(f"{url}/refuse", json={"reason": "用途超出共享条件"}, headers=approver)
    assert r.status_code == 200 and r.json()["status"] == "refused"
    r = hub.client.post(f"{url}/refuse", json={"reason": "再次"}, headers=approver)
    _problem(r, 409, "request-decided")
    _problem(hub.client.post(f"{url}/approve", headers=approver), 409, "request-decided")


def test_what_may_be_requested(hub: Hub) -> None:
    applicant = hub.token(MARKET, Role.APP_DEVELOPER)
    body = {"provider": POLICE, "resource": NOT_SHARED, **application().model_dump(mode="json")}
    r = hub.client.post("/api/v1/requests", json=body, headers=applicant)
    assert "不予共享" in _problem(r, 409, "resource-not-shared")["detail"]
    r = hub.client.post(
        f"/api/v1/resources/{POLICE}/{NOT_SHARED}/subscribe",
        json={"purposes": ["x"]},
        headers=applicant,
    )
    _problem(r, 409, "resource-not-shared")
    r = hub.client.post(
        f"/api/v1/resources/{POLICE}/{CONDITIONAL}/subscribe",
        json={"purposes": ["x"]},
        headers=applicant,
    )
    _problem(r, 409, "conflict")
    r = hub.client.post(
        f"/api/v1/resources/{POLICE}/{UNCONDITIONAL}/subscribe",
        json={"purposes": ["road-safety"], "apps": ["licensing"]},
        headers=applicant,
    )
    assert r.status_code == 201, r.text
    assert r.json()["document"]["consumer"]["apps"] == ["licensing"]
    # A security officer does not apply; bodies are checked with limits.
    r = hub.client.post(
        f"/api/v1/resources/{POLICE}/{UNCONDITIONAL}/subscribe",
        json={"purposes": ["road-safety"]},
        headers=hub.token(MARKET, Role.SECURITY_OFFICER),
    )
    _problem(r, 403, "forbidden")
    r = hub.client.post(
        "/api/v1/requests", json={**body, "resource": CONDITIONAL, "valid_days": 99999},
        headers=applicant,
    )  # fmt: skip
    _problem(r, 422, "validation")
    r = hub.client.post(
        "/api/v1/requests", json={**body, "resource": CONDITIONAL, "surprise": 1}, headers=applicant
    )
    _problem(r, 422, "validation")
    r = hub.client.post(
        "/api/v1/requests",
        json={**body, "resource": CONDITIONAL, "legal_basis": ""},
        headers=applicant,
    )
    _problem(r, 422, "legal-basis-missing")


def test_approval_never_widens(hub: Hub) -> None:
    req = _apply(hub)
    r = hub.client.post(
        f"/api/v1/requests/{req['id']}/approve",
        json={"fields": ["plate", "fine"], "valid_days": 400},
        headers=hub.token(POLICE, Role.ORG_ADMIN),
    )
    body = _problem(r, 422, "approval-widens")
    assert "field 'fine'" in body["detail"]
    assert body["wider"] == ["field 'fine'", "400 days (applied for 180)"]


def test_deadline_and_overdue_flag(hub: Hub) -> None:
    service = hub.app.state.agreements
    service.clock = lambda: MONDAY
    req = _apply(hub)
    assert req["deadline"].startswith("2026-12-14T23:59:59") and req["days_left"] == 10
    approver = hub.token(POLICE, Role.APPROVER)
    assert hub.client.get("/api/v1/requests?overdue=true", headers=approver).json() == []
    service.clock = lambda: MONDAY + timedelta(days=20)
    late = hub.client.get("/api/v1/requests?overdue=true", headers=approver).json()
    assert [r["id"] for r in late] == [req["id"]] and late[0]["overdue"] is True
    assert late[0]["days_left"] < 0


def test_lifecycle_transitions(hub: Hub) -> None:
    approver = hub.token(POLICE, Role.APPROVER)
    req = _apply(hub)
    agr = hub.client.post(f"/api/v1/requests/{req['id']}/approve", headers=approver).json()
    url = f"/api/v1/agreements/{agr['agreement']['id']}"
    _problem(hub.client.post(f"{url}/suspend", json={}, headers=approver), 422, "reason-required")
    _problem(hub.client.post(f"{url}/resume", headers=approver), 409, "agreement-state")
    r = hub.client.post(f"{url}/suspend", json={"reason": "核查"}, headers=approver)
    assert r.status_code == 200 and r.json()["state"] == "suspended"
    r = hub.client.post(f"{url}/suspend", json={"reason": "核查"}, headers=approver)
    _problem(r, 409, "agreement-state")
    assert hub.client.post(f"{url}/resume", headers=approver).json()["state"] == "active"
    r = hub.client.post(f"{url}/renew", json={"valid_days": 30}, headers=approver)
    assert r.status_code == 201 and r.json()["renews"] == agr["agreement"]["id"]
    # The consumer's approver may not revoke; its org-admin may.
    r = hub.client.post(
        f"{url}/revoke", json={"reason": "x"}, headers=hub.token(MARKET, Role.APPROVER)
    )
    _problem(r, 403, "forbidden")
    r = hub.client.post(
        f"{url}/revoke", json={"reason": "业务终止"}, headers=hub.token(MARKET, Role.ORG_ADMIN)
    )
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    _problem(hub.client.post(f"{url}/renew", json={}, headers=approver), 409, "agreement-state")
    states = {
        a["id"]: a["status"] for a in hub.client.get("/api/v1/agreements", headers=approver).json()
    }
    assert sorted(states.values()) == ["active", "revoked"]


def test_emergency_arrangement_is_the_platforms(hub: Hub) -> None:
    body = {
        "provider": POLICE,
        "resource": NOT_SHARED,
        "consumer": MARKET,
        "purposes": ["epidemic-response"],
        "valid_days": 30,
    }
    r = hub.client.post(
        "/api/v1/agreements/emergency", json=body, headers=hub.token(POLICE, Role.ORG_ADMIN)
    )
    _problem(r, 403, "forbidden")
    r = hub.client.post("/api/v1/agreements/emergency", json=body, headers=hub.token(None))
    assert r.status_code == 201, r.text
    assert r.json()["emergency_only"] is True
    assert r.json()["document"]["conditions"]["emergency_only"] is True


def test_a_signed_in_approver_needs_the_csrf_token(hub: Hub) -> None:
    req = _apply(hub)
    identity = hub.app.state.identity
    identity.add_user(
        CLI, "police-approver", org=POLICE, roles=frozenset({Role.APPROVER}),
        password="Bridge-pass-123",
    )  # fmt: skip
    session, csrf = identity.create_session(
        identity.user_id("police-approver"), ("pwd", "otp"), "testclient"
    )
    hub.client.cookies.set("qiao_session", session)
    url = f"/api/v1/requests/{req['id']}/refuse"
    _problem(hub.client.post(url, json={"reason": "不符合条件"}), 403, "csrf-refused")
    r = hub.client.post(url, json={"reason": "不符合条件"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["decided_by"] == "user:police-approver"
    hub.client.cookies.clear()


def test_unknown_ids_and_anonymous_callers(hub: Hub) -> None:
    auditor = hub.token(POLICE, Role.AUDITOR)
    _problem(hub.client.get("/api/v1/requests/req-nosuchthing", headers=auditor), 404, "not-found")
    _problem(
        hub.client.get("/api/v1/agreements/agr-nosuchthing0000", headers=auditor), 404, "not-found"
    )
    _problem(hub.client.get("/api/v1/agreements"), 401, "unauthorized")
    r = hub.client.get("/openapi.json").json()
    summary = r["paths"]["/api/v1/requests/{request_id}/approve"]["post"]["summary"]
    assert "Approve" in summary


def test_the_platform_administrator_does_not_sign_for_the_departments(hub: Hub) -> None:
    platform = hub.token(None)
    body = {"provider": POLICE, "resource": CONDITIONAL, **application().model_dump(mode="json")}
    p = _problem(hub.client.post("/api/v1/requests", json=body, headers=platform), 403, "forbidden")
    assert "consuming organization" in p["detail"]
    # The consumer= override is gone: a person applies for their own organization.
    own = hub.token(MARKET, Role.APP_DEVELOPER)
    r = hub.client.post("/api/v1/requests", json={**body, "consumer": MARKET}, headers=own)
    _problem(r, 422, "validation")
    r = hub.client.post(
        f"/api/v1/resources/{POLICE}/{UNCONDITIONAL}/subscribe",
        json={"purposes": ["road-safety"]},
        headers=platform,
    )
    _problem(r, 403, "forbidden")
    req = _apply(hub)
    for action, payload in (("approve", {}), ("refuse", {"reason": "不同意"})):
        r = hub.client.post(
            f"/api/v1/requests/{req['id']}/{action}", json=payload, headers=platform
        )
        assert POLICE in _problem(r, 403, "forbidden")["detail"]
    approver = hub.token(POLICE, Role.APPROVER)
    shown = hub.client.get(f"/api/v1/requests/{req['id']}", headers=approver).json()
    assert shown["status"] == "submitted"
    # The provider's approver decides; the platform may still suspend, never renew.
    agr = hub.client.post(f"/api/v1/requests/{req['id']}/approve", headers=approver).json()
    url = f"/api/v1/agreements/{agr['agreement']['id']}"
    _problem(hub.client.post(f"{url}/renew", json={}, headers=platform), 403, "forbidden")
    r = hub.client.post(f"{url}/suspend", json={"reason": "安全事件"}, headers=platform)
    assert r.status_code == 200 and r.json()["state"] == "suspended"


def test_fields_and_masks_name_items_and_renewals_last_no_longer(hub: Hub) -> None:
    developer = hub.token(MARKET, Role.APP_DEVELOPER)
    body = {
        "provider": POLICE,
        "resource": CONDITIONAL,
        **application(fields=["plate", "driver_mobile[]"]).model_dump(mode="json"),
    }
    r = hub.client.post("/api/v1/requests", json=body, headers=developer)
    p = _problem(r, 422, "validation")
    assert "'driver_mobile[]'" in p["detail"] and p["field"] == "driver_mobile[]"
    assert "driver_mobile" in p["allowed"]
    req = _apply(hub)
    approver = hub.token(POLICE, Role.APPROVER)
    url = f"/api/v1/requests/{req['id']}/approve"
    r = hub.client.post(
        url, json={"masking": {"driver_mobile[]": {"rule": "suppress"}}}, headers=approver
    )
    assert "'driver_mobile[]'" in _problem(r, 422, "validation")["detail"]
    agr = hub.client.post(url, json={"valid_days": 90}, headers=approver).json()["agreement"]
    assert agr["document"]["masking"] == {"driver_mobile": {"rule": "mobile", "params": {}}}
    renew = f"/api/v1/agreements/{agr['id']}/renew"
    for payload in ({}, {"valid_days": 365}):
        r = hub.client.post(renew, json=payload, headers=approver)
        assert r.status_code == 201, r.text
        doc = r.json()["document"]
        length = datetime.fromisoformat(doc["valid_until"]) - datetime.fromisoformat(
            doc["valid_from"]
        )
        assert length == timedelta(days=90)


def test_an_approval_with_window_times_with_an_offset_is_a_problem_not_a_crash(hub: Hub) -> None:
    # Found by reliability/test_fuzz_hub.py: the hub answered 500 (a TypeError comparing an
    # offset-aware time with a naive one) before looking at the request at all.
    req = _apply(hub)
    r = hub.client.post(
        f"/api/v1/requests/{req['id']}/approve",
        json={"time_windows": [{"days": [1], "start": "08:00:00+08:00"}]},
        headers=hub.token(POLICE, Role.APPROVER),
    )
    assert "without an offset" in _problem(r, 422, "validation")["detail"]
