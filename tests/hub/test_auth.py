from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.hub.auth import need, require
from qiao.identity.roles import Principal, Role
from qiao.problems import Problem
from qiao.registry.services import RegistryService

A = "91350100M000100Y43"
B = "12350100MB00010016"


@pytest.fixture
def hub(tmp_path: Path) -> tuple[TestClient, RegistryService]:
    settings = HubSettings.load(None, data_dir=tmp_path, instance="CN-T")
    registry = open_registry(settings)
    registry.add_organization(A, "甲")
    registry.add_organization(B, "乙")
    app = create_app(settings, registry)

    @app.post("/test/{org}/steward-only")
    def steward_only(org: str, who: Principal = Depends(require(Role.DATA_STEWARD))) -> dict:  # type: ignore[type-arg]
        need(who, Role.DATA_STEWARD, org=org)
        return {"subject": who.subject, "org": who.org}

    return TestClient(app), registry


def test_a_scoped_token_acts_in_its_organization_only(
    hub: tuple[TestClient, RegistryService],
) -> None:
    client, registry = hub
    token = registry.create_operator_token("ci", org=A, roles=frozenset({Role.DATA_STEWARD}))
    h = {"Authorization": f"Bearer {token}"}
    ok = client.post(f"/test/{A}/steward-only", headers=h)
    assert ok.status_code == 200 and ok.json() == {"subject": "token:ci", "org": A}
    other = client.post(f"/test/{B}/steward-only", headers=h)
    assert other.status_code == 403
    assert other.json()["type"] == "urn:qiao:problem:hub:forbidden"
    assert B in other.json()["detail"]
    # The registry's own endpoints stay the platform administrator's.
    assert client.get("/api/v1/organizations", headers=h).status_code == 403


def test_a_token_without_the_role_is_refused(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    token = registry.create_operator_token("audit", org=A, roles=frozenset({Role.AUDITOR}))
    r = client.post(f"/test/{A}/steward-only", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "data-steward" in r.json()["detail"]


def test_the_operator_token_may_act_in_any_organization(
    hub: tuple[TestClient, RegistryService],
) -> None:
    client, registry = hub
    token = registry.create_operator_token("ops")
    r = client.post(f"/test/{B}/steward-only", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["subject"] == "operator:ops"


def test_scoped_tokens_need_a_real_organization_and_a_role(
    hub: tuple[TestClient, RegistryService],
) -> None:
    _client, registry = hub
    with pytest.raises(Problem):
        registry.create_operator_token("x", org=A)
    with pytest.raises(Problem):
        registry.create_operator_token(
            "x", org="91350100M000100Y44", roles=frozenset({Role.AUDITOR})
        )
    with pytest.raises(Problem):
        registry.create_operator_token("x", org=A, roles=frozenset({Role.PLATFORM_ADMIN}))
