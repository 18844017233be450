"""The catalog's hub API: roles, problem+json shapes, versions, search and import/export."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qiao.catalog.service import CatalogService
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import CLI, Role
from qiao.registry.services import RegistryService
from tests.catalog.conftest import ELEMENTS, SEX, A, B, spec

PROBLEM = "application/problem+json"


@pytest.fixture
def hub(db_url: str, tmp_path: Path) -> tuple[TestClient, RegistryService]:
    settings = HubSettings.load(None, data_dir=tmp_path, instance="CN-T", database_url=db_url)
    registry = open_registry(settings)
    registry.add_organization(A, "市公安局")
    registry.add_organization(B, "市市场监督管理局")
    catalog = CatalogService(registry)
    catalog.publish_code_list(CLI, SEX)
    for el in ELEMENTS:
        catalog.publish_element(CLI, el)
    return TestClient(create_app(settings, registry)), registry


def _h(registry: RegistryService, org: str | None, *roles: Role) -> dict[str, str]:
    token = registry.create_operator_token(
        f"t-{org}-{'-'.join(roles)}", org=org, roles=frozenset(roles)
    )
    return {"Authorization": f"Bearer {token}"}


def _spec(**over: Any) -> dict[str, Any]:
    return spec(**over).model_dump(mode="json", exclude={"version", "status"})


def _problem(r: Any, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:qiao:problem:hub:{kind}" and body["status"] == status
    return body


def test_publish_show_versions_and_deprecate(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    steward = _h(registry, A, Role.DATA_STEWARD)
    r = client.post("/api/v1/catalog/resources", json=_spec(), headers=steward)
    assert r.status_code == 201 and r.json()["version"] == 1
    first = r.json()
    assert (
        client.post("/api/v1/catalog/resources", json=_spec(), headers=steward).status_code == 200
    )
    r = client.put(
        f"/api/v1/catalog/resources/{A}/traffic-violations",
        json=_spec(abstract="第二版摘要"),
        headers=steward,
    )
    assert r.status_code == 201 and r.json()["version"] == 2
    reader = _h(registry, B, Role.AUDITOR)
    shown = client.get(
        f"/api/v1/catalog/resources/{A}/traffic-violations?version=1", headers=reader
    ).json()
    assert shown["sha256"] == first["sha256"] and shown["latest_version"] == 2
    assert shown["spec"]["abstract"] == first["spec"]["abstract"]
    versions = client.get(
        f"/api/v1/catalog/resources/{A}/traffic-violations/versions", headers=reader
    ).json()
    assert [v["version"] for v in versions] == [1, 2]
    r = client.post(
        f"/api/v1/catalog/resources/{A}/traffic-violations/deprecate",
        json={"reason": "并入新资源"},
        headers=steward,
    )
    assert r.status_code == 200 and r.json()["status"] == "deprecated"
    # The global configuration names the published version.
    conf = client.get("/api/v1/global-configuration").json()["document"]
    [entry] = conf["resources"]
    assert (entry["code"], entry["version"], entry["status"]) == (
        "traffic-violations",
        2,
        "deprecated",
    )


def test_roles_and_organizations_are_enforced(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    url = "/api/v1/catalog/resources"
    assert client.post(url, json=_spec(), headers=_h(registry, A, Role.DATA_STEWARD)).is_success
    # A steward of another organization, an auditor, anonymous callers: refused.
    other = client.put(
        f"{url}/{A}/traffic-violations",
        json=_spec(abstract="他人修改"),
        headers=_h(registry, B, Role.DATA_STEWARD),
    )
    assert A in _problem(other, 403, "forbidden")["detail"]
    _problem(
        client.post(url, json=_spec(), headers=_h(registry, A, Role.AUDITOR)), 403, "forbidden"
    )
    _problem(
        client.post(
            f"{url}/{A}/traffic-violations/deprecate",
            json={},
            headers=_h(registry, B, Role.ORG_ADMIN),
        ),
        403,
        "forbidden",
    )
    _problem(client.get(url), 401, "unauthorized")
    # Platform standards need the platform administrator; a steward may own elements.
    el = {"identifier": "DE0500", "name": "案件编号", "definition": "案件", "type": "string"}
    steward = _h(registry, A, Role.DATA_STEWARD)
    _problem(
        client.post("/api/v1/catalog/data-elements", json=el, headers=steward), 403, "forbidden"
    )
    r = client.post(f"/api/v1/catalog/data-elements?owner={A}", json=el, headers=steward)
    assert r.status_code == 200 and r.json() == {"changed": True}
    shown = client.get("/api/v1/catalog/data-elements/DE0500", headers=steward).json()
    assert shown["owner"] == A and shown["element"]["name"] == "案件编号"
    r = client.get("/api/v1/catalog/code-lists/GB/T 2261.1", headers=steward)
    assert r.json()["code_list"]["codes"][0]["label"] == "男性"


def test_problem_shapes(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    steward = _h(registry, A, Role.DATA_STEWARD)
    url = "/api/v1/catalog/resources"
    body = _problem(
        client.post(url, json={**_spec(), "legal_basis": ""}, headers=steward),
        422,
        "legal-basis-missing",
    )
    assert body["errors"][0]["message"].startswith("a 有条件共享 resource needs")
    body = _problem(
        client.post(
            url, json={**_spec(), "sharing_type": "none", "legal_basis": ""}, headers=steward
        ),
        422,
        "legal-basis-missing",
    )
    bad_item = [{"field": "x", "name": "某项", "element": "DE9999"}]
    body = _problem(
        client.post(url, json=_spec(items=bad_item), headers=steward), 422, "unknown-data-element"
    )
    assert body["data_elements"] == ["DE9999"]
    body = _problem(
        client.post(url, json={**_spec(), "items": []}, headers=steward), 422, "validation"
    )
    assert body["errors"][0]["field"] == "items"
    _problem(client.post(url, content=b"{not json", headers=steward), 422, "validation")
    _problem(client.post(url, content=b"x" * (1024 * 1024 + 1), headers=steward), 422, "validation")
    _problem(client.put(f"{url}/{A}/other-code", json=_spec(), headers=steward), 422, "validation")
    _problem(client.get(f"{url}/{A}/nothing", headers=steward), 404, "not-found")
    _problem(client.get(f"{url}/{A}/x?version=0", headers=steward), 422, "validation")
    el = {
        "identifier": "DE0600",
        "name": "民族",
        "definition": "民族",
        "type": "string",
        "code_list": "GB/T 3304",
    }
    _problem(
        client.post("/api/v1/catalog/data-elements", json=el, headers=_h(registry, None)),
        422,
        "unknown-code-list",
    )
    client.post(url, json=_spec(), headers=steward)
    changed = {**ELEMENTS[3].model_dump(mode="json"), "definition": "改"}
    _problem(
        client.post("/api/v1/catalog/data-elements", json=changed, headers=_h(registry, None)),
        409,
        "catalog-entry-in-use",
    )


def test_search_endpoint(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    steward = _h(registry, A, Role.DATA_STEWARD)
    client.post("/api/v1/catalog/resources", json=_spec(), headers=steward)
    client.post(
        "/api/v1/catalog/resources",
        json=_spec(code="household", name="户籍人口", sharing_methods=["dataset"]),
        headers=steward,
    )
    get = client.get
    r = get("/api/v1/catalog/resources", params={"q": "违法"}, headers=steward).json()
    assert r["total"] == 2 and [h["code"] for h in r["hits"]] == ["household", "traffic-violations"]
    r = get("/api/v1/catalog/resources", params={"q": "户籍", "limit": 1}, headers=steward).json()
    assert r["total"] == 1 and r["hits"][0]["provider_name"] == "市公安局"
    r = get(
        "/api/v1/catalog/resources",
        params={"sharing_method": "dataset", "provider": A.lower()},
        headers=steward,
    ).json()
    assert [h["code"] for h in r["hits"]] == ["household"]
    for hostile in ["'; DROP TABLE catalog_resources; --", '"OR"', "NEAR(*)", "%_%"]:
        r = get("/api/v1/catalog/resources", params={"q": hostile}, headers=steward)
        assert r.status_code == 200 and r.json()["total"] == 0
    _problem(
        get("/api/v1/catalog/resources", params={"sharing_type": "maybe"}, headers=steward),
        422,
        "validation",
    )
    _problem(
        get("/api/v1/catalog/resources", params={"limit": 1000}, headers=steward), 422, "validation"
    )
    _problem(
        get("/api/v1/catalog/resources", params={"q": "x" * 201}, headers=steward),
        422,
        "validation",
    )


def test_openapi_documents_the_catalog(hub: tuple[TestClient, RegistryService]) -> None:
    client, _ = hub
    paths = client.get("/openapi.json").json()["paths"]
    post = paths["/api/v1/catalog/resources"]["post"]
    assert post["summary"] and "legal_basis" in str(
        post["requestBody"]["content"]["application/json"]["schema"]
    )
    assert "/api/v1/catalog/export" in paths and "/api/v1/catalog/import" in paths


needs_excel = pytest.mark.skipif(
    importlib.util.find_spec("qiao.catalog.excel") is None, reason="qiao.catalog.excel not built"
)


@needs_excel
def test_import_is_all_or_nothing(hub: tuple[TestClient, RegistryService]) -> None:
    from qiao.catalog.spec import Catalog

    write_workbook = importlib.import_module("qiao.catalog.excel").write_workbook

    client, registry = hub
    admin = _h(registry, None)
    good = spec()
    broken = spec(code="broken", items=[{"field": "x", "name": "某项", "element": "DE9999"}])
    data = write_workbook(Catalog(resources=(good, broken)))
    files = {"file": ("catalog.xlsx", data, "application/octet-stream")}
    body = _problem(
        client.post("/api/v1/catalog/import", files=files, headers=admin),
        422,
        "catalog-import-failed",
    )
    assert body["errors"] and all("row" in e for e in body["errors"])
    r = client.get("/api/v1/catalog/resources", headers=admin).json()
    assert r["total"] == 0
    data = write_workbook(Catalog(resources=(good,)))
    files = {"file": ("catalog.xlsx", data, "application/octet-stream")}
    r = client.post("/api/v1/catalog/import", files=files, headers=admin)
    assert r.status_code == 200 and r.json()["new_versions"] == 1
    r = client.get("/api/v1/catalog/export?format=xlsx", headers=admin)
    assert r.status_code == 200 and r.content[:2] == b"PK"


@pytest.mark.skipif(
    importlib.util.find_spec("qiao.catalog.dcat") is None, reason="qiao.catalog.dcat not built"
)
def test_dcat_export(hub: tuple[TestClient, RegistryService]) -> None:
    client, registry = hub
    steward = _h(registry, A, Role.DATA_STEWARD)
    client.post("/api/v1/catalog/resources", json=_spec(), headers=steward)
    r = client.get("/api/v1/catalog/export?format=dcat", headers=steward)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    assert "traffic-violations" in r.text and "市公安局" in r.text
    _problem(client.get("/api/v1/catalog/export?format=pdf", headers=steward), 422, "validation")


def test_a_version_beyond_any_stored_integer_is_a_problem_not_a_crash(
    hub: tuple[TestClient, RegistryService],
) -> None:
    # Found by reliability/test_fuzz_hub.py: ?version=2**63 made SQLite's driver raise
    # OverflowError, a 500.
    client, registry = hub
    url = f"/api/v1/catalog/resources/{A}/traffic-violations"
    reader = _h(registry, B, Role.AUDITOR)
    for version in (2**31, 2**63, 10**30):
        _problem(client.get(f"{url}?version={version}", headers=reader), 422, "validation")
    _problem(client.get(f"{url}?version={2**31 - 1}", headers=reader), 404, "not-found")
