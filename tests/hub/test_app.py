from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qiao import pki
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.problems import PROBLEM_CONTENT_TYPE

ORG = "91350100M000100Y43"


@pytest.fixture
def hub(tmp_path: Path) -> tuple[TestClient, str]:
    settings = HubSettings.load(None, data_dir=tmp_path, instance="CN-T")
    registry = open_registry(settings)
    token = registry.create_operator_token("test")
    return TestClient(create_app(settings, registry)), token


def _problem(r, status: int, type_: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body = r.json()
    assert body["type"] == type_ and body["status"] == status
    return body  # type: ignore[no-any-return]


def test_administration_needs_an_operator_token(hub: tuple[TestClient, str]) -> None:
    client, token = hub
    body = {"code": ORG, "name": "甲"}
    _problem(
        client.post("/api/v1/organizations", json=body), 401, "urn:qiao:problem:hub:unauthorized"
    )
    _problem(
        client.post(
            "/api/v1/organizations", json=body, headers={"Authorization": "Bearer qop_wrong"}
        ),
        403,
        "urn:qiao:problem:hub:forbidden",
    )
    ok = client.post(
        "/api/v1/organizations", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 201
    for path in ["/api/v1/organizations", "/api/v1/nodes", "/api/v1/resources"]:
        _problem(client.get(path), 401, "urn:qiao:problem:hub:unauthorized")


def test_administrative_actions_record_the_operator(hub: tuple[TestClient, str]) -> None:
    from sqlalchemy import select

    from qiao.registry.models import AdminEvent

    client, token = hub
    r = client.post(
        "/api/v1/organizations",
        json={"code": ORG, "name": "甲"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201
    registry = client.app.state.registry  # type: ignore[attr-defined]
    with registry._sessions() as s:
        events = list(s.scalars(select(AdminEvent).order_by(AdminEvent.id)))
    assert [(e.action, e.actor) for e in events][-1] == ("organization.add", "operator:test")
    assert ORG in events[-1].detail


def test_errors_are_problem_json(hub: tuple[TestClient, str]) -> None:
    client, token = hub
    auth = {"Authorization": f"Bearer {token}"}
    p = _problem(
        client.post(
            "/api/v1/organizations", json={"code": ORG[:-1] + "4", "name": "x"}, headers=auth
        ),
        422,
        "urn:qiao:problem:hub:invalid-uscc",
    )
    assert "check character" in p["detail"]
    p = _problem(
        client.post("/api/v1/organizations", json={"name": 5}, headers=auth),
        422,
        "urn:qiao:problem:hub:validation",
    )
    assert {e["field"] for e in p["errors"]} >= {"code"}
    _problem(
        client.post("/api/v1/organizations", content=b"{not json", headers=auth),
        422,
        "urn:qiao:problem:hub:validation",
    )
    _problem(client.get("/no/such/thing"), 404, "urn:qiao:problem:hub:not-found")
    _problem(
        client.post("/api/v1/organizations/NOPE/apps", json={"code": "a"}, headers=auth),
        404,
        "urn:qiao:problem:hub:not-found",
    )


def test_enrollment_and_configuration_over_http(hub: tuple[TestClient, str]) -> None:
    client, token = hub
    auth = {"Authorization": f"Bearer {token}"}
    assert (
        client.post(
            "/api/v1/organizations", json={"code": ORG, "name": "甲"}, headers=auth
        ).status_code
        == 201
    )
    t = client.post(f"/api/v1/organizations/{ORG}/enrollment-tokens", headers=auth).json()
    csr = pki.csr_to_pem(pki.create_csr(pki.generate_private_key(), "n1", ORG)).decode()
    body = {"token": t["token"], "node_name": "n1", "address": "https://127.0.0.1:9443", "csr": csr}
    r = client.post("/api/v1/enroll", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["org"] == ORG
    _problem(
        client.post("/api/v1/enroll", json=body), 403, "urn:qiao:problem:hub:bad-enrollment-token"
    )
    conf = client.get("/api/v1/global-configuration")
    assert conf.status_code == 200
    etag = conf.headers["etag"]
    assert (
        client.get("/api/v1/global-configuration", headers={"If-None-Match": etag}).status_code
        == 304
    )
    nodes = client.get("/api/v1/nodes", headers=auth).json()
    serial = nodes[0]["certificates"][0]["serial"]
    assert client.post(
        f"/api/v1/certificates/{serial}/revoke", json={"reason": "test"}, headers=auth
    ).json() == {"revoked": [serial]}
    # The revocation changed the configuration, so the old ETag no longer matches.
    assert (
        client.get("/api/v1/global-configuration", headers={"If-None-Match": etag}).status_code
        == 200
    )


def test_openapi_document_lists_the_api(hub: tuple[TestClient, str]) -> None:
    client, _ = hub
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/enroll", "/api/v1/global-configuration", "/api/v1/organizations"} <= set(paths)
