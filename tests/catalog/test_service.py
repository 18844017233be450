"""Publishing, versioning, deprecation, authorization and bundles (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import func, select

from qiao import problems
from qiao.catalog.models import CatalogResourceVersion
from qiao.catalog.service import CatalogService, parse_spec
from qiao.catalog.spec import Catalog, DataElement, ResourceStatus
from qiao.identity.roles import CLI, Principal, Role
from qiao.problems import Problem
from qiao.registry.models import AdminEvent
from qiao.registry.services import RegistryService
from tests.catalog.conftest import ELEMENTS, SEX, A, B, spec

STEWARD_A = Principal("token:a", frozenset({Role.DATA_STEWARD}), org=A)
STEWARD_B = Principal("token:b", frozenset({Role.DATA_STEWARD}), org=B)
AUDITOR_A = Principal("token:audit", frozenset({Role.AUDITOR}), org=A)


def _kind(exc: pytest.ExceptionInfo[Problem]) -> str:
    return exc.value.kind.uri


def test_publish_versions_and_stays_immutable(
    catalog: CatalogService, registry: RegistryService
) -> None:
    serial = registry.serial()
    first = catalog.publish(STEWARD_A, spec())
    assert (first.version, first.created, first.status) == (1, True, ResourceStatus.PUBLISHED)
    assert registry.serial() > serial
    assert first.sha256 == hashlib.sha256(first.document).hexdigest()
    # The registry's exchange-level row exists, named like the resource.
    assert [(r.org_code, r.code, r.name) for r in registry.list_resources()] == [
        (A, "traffic-violations", "机动车交通违法记录")
    ]
    # The same spec again is a no-op.
    again = catalog.publish(STEWARD_A, spec())
    assert (again.version, again.created) == (1, False)
    # A change makes version 2; version 1 stays byte-identical for agreements that cite it.
    second = catalog.publish(STEWARD_A, spec(abstract="更新后的摘要：机动车违法记录。"))
    assert (second.version, second.latest_version) == (2, 2)
    old = catalog.get(A, "traffic-violations", version=1)
    assert old.document == first.document and old.sha256 == first.sha256
    assert json.loads(old.document)["version"] == 1
    assert catalog.get(A, "traffic-violations").version == 2
    assert [v.version for v in catalog.versions(A, "traffic-violations")] == [1, 2]
    with pytest.raises(Problem) as exc:
        catalog.get(A, "traffic-violations", version=3)
    assert _kind(exc) == problems.NOT_FOUND.uri


def test_deprecate_and_republish(catalog: CatalogService, registry: RegistryService) -> None:
    catalog.publish(STEWARD_A, spec())
    dep = catalog.deprecate(STEWARD_A, A, "traffic-violations", "replaced")
    assert dep.status is ResourceStatus.DEPRECATED and dep.spec.status is ResourceStatus.DEPRECATED
    assert catalog.get(A, "traffic-violations").status is ResourceStatus.DEPRECATED
    with registry._sessions() as s:
        actions = list(s.scalars(select(AdminEvent.action).order_by(AdminEvent.id)))
    assert "catalog.resource.deprecate" in actions and "catalog.resource.publish" in actions
    # Publishing it again brings it back without a new version when nothing changed.
    back = catalog.publish(STEWARD_A, spec())
    assert (back.version, back.status) == (1, ResourceStatus.PUBLISHED)


def test_unknown_elements_code_lists_providers_and_relations_are_refused(
    catalog: CatalogService,
) -> None:
    bad = spec(items=[{"field": "x", "name": "某项", "element": "DE9999"}])
    with pytest.raises(Problem) as exc:
        catalog.publish(STEWARD_A, bad)
    assert _kind(exc) == problems.UNKNOWN_DATA_ELEMENT.uri
    assert exc.value.extra["data_elements"] == ["DE9999"]
    with pytest.raises(Problem) as exc:
        catalog.publish_element(
            CLI,
            DataElement(
                identifier="DE0100",
                name="民族",
                definition="民族",
                type="string",
                code_list="GB/T 3304",
            ),
        )
    assert _kind(exc) == problems.UNKNOWN_CODE_LIST.uri
    with pytest.raises(Problem) as exc:
        catalog.publish(CLI, spec(provider="91350100M000100Y43".replace("Y43", "Y44")))
    assert _kind(exc) == problems.VALIDATION.uri
    with pytest.raises(Problem) as exc:
        catalog.publish(STEWARD_A, spec(related=["no-such-resource"]))
    assert _kind(exc) == problems.VALIDATION.uri and "related" in exc.value.detail
    catalog.publish(STEWARD_A, spec())
    ok = catalog.publish(STEWARD_A, spec(code="plates", related=[f"{A}/traffic-violations"]))
    assert ok.version == 1


def test_legal_basis_is_required_unless_unconditional() -> None:
    base = spec().model_dump(mode="json")
    for sharing in ("conditional", "none"):
        with pytest.raises(Problem) as exc:
            parse_spec({**base, "sharing_type": sharing, "legal_basis": ""})
        assert _kind(exc) == problems.LEGAL_BASIS_MISSING.uri
        assert exc.value.extra["errors"]
    assert parse_spec({**base, "sharing_type": "unconditional", "legal_basis": ""}).code


def test_authorization(catalog: CatalogService) -> None:
    catalog.publish(STEWARD_A, spec())
    for who in (STEWARD_B, AUDITOR_A):
        with pytest.raises(Problem) as exc:
            catalog.publish(who, spec(abstract="篡改"))
        assert _kind(exc) == problems.FORBIDDEN.uri
        with pytest.raises(Problem) as exc:
            catalog.deprecate(who, A, "traffic-violations")
        assert _kind(exc) == problems.FORBIDDEN.uri
    # Platform standards are the platform administrator's; stewards publish their own.
    el = DataElement(identifier="DE0200", name="案件编号", definition="案件", type="string")
    with pytest.raises(Problem) as exc:
        catalog.publish_element(STEWARD_A, el)
    assert _kind(exc) == problems.FORBIDDEN.uri
    with pytest.raises(Problem) as exc:
        catalog.publish_element(STEWARD_A, el, owner=B)
    assert _kind(exc) == problems.FORBIDDEN.uri
    assert catalog.publish_element(STEWARD_A, el, owner=A)
    assert catalog.get_element("DE0200") == (el, A)
    org_admin = Principal("token:oa", frozenset({Role.ORG_ADMIN}), org=A)
    assert catalog.publish(org_admin, spec(abstract="单位管理员更新")).version == 2


def test_elements_and_code_lists_freeze_once_bound(catalog: CatalogService) -> None:
    changed = ELEMENTS[3].model_copy(update={"definition": "改过的定义"})
    assert catalog.publish_element(CLI, changed)  # not bound yet: replaced in place
    assert not catalog.publish_element(CLI, changed)  # identical: nothing to do
    catalog.publish(STEWARD_A, spec())
    with pytest.raises(Problem) as exc:
        catalog.publish_element(CLI, ELEMENTS[3])
    assert _kind(exc) == problems.CATALOG_ENTRY_IN_USE.uri
    catalog.publish(
        STEWARD_A,
        spec(code="people", items=[{"field": "sex", "name": "性别", "element": "DE0003"}]),
    )
    fewer = SEX.model_copy(update={"codes": SEX.codes[:1]})
    with pytest.raises(Problem) as exc:
        catalog.publish_code_list(CLI, fewer)
    assert _kind(exc) == problems.CATALOG_ENTRY_IN_USE.uri


def test_import_is_all_or_nothing_and_export_round_trips(
    catalog: CatalogService, registry: RegistryService
) -> None:
    good = spec()
    related = spec(code="plates", name="号牌信息", related=["traffic-violations"])
    bad = spec(code="broken", items=[{"field": "x", "name": "某项", "element": "DE9999"}])
    new_el = DataElement(identifier="DE0300", name="驾驶证号", definition="驾驶证", type="string")
    serial = registry.serial()
    with pytest.raises(Problem) as exc:
        catalog.import_catalog(
            CLI, Catalog(data_elements=(new_el,), resources=(related, good, bad))
        )
    assert _kind(exc) == problems.UNKNOWN_DATA_ELEMENT.uri
    assert registry.serial() == serial
    assert catalog.export_catalog().resources == ()
    with pytest.raises(Problem):
        catalog.get_element("DE0300")
    # Related resources in one bundle are published in dependency order.
    summary = catalog.import_catalog(
        CLI, Catalog(data_elements=(new_el,), resources=(related, good))
    )
    assert (summary.resources, summary.new_versions, summary.data_elements) == (2, 2, 1)
    exported = catalog.export_catalog()
    assert [r.code for r in exported.resources] == ["plates", "traffic-violations"]
    assert all(r.version == 1 for r in exported.resources)
    assert SEX in exported.code_lists and len(exported.data_elements) == len(ELEMENTS) + 1
    # Importing the export again changes nothing.
    again = catalog.import_catalog(CLI, exported)
    assert again.new_versions == 0
    with registry._sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogResourceVersion)) == 2


def test_global_configuration_carries_versions(
    catalog: CatalogService, registry: RegistryService
) -> None:
    catalog.publish(STEWARD_A, spec())
    catalog.publish(STEWARD_A, spec(abstract="第二版"))
    [entry] = registry.global_conf_document()["resources"]
    assert entry["version"] == 2 and entry["status"] == "published"
    assert entry["schemas"] is None or entry["schemas"]["response"]["$id"].endswith(":2:response")


def test_a_steward_may_reimport_platform_standards_unchanged(catalog: CatalogService) -> None:
    bundle = Catalog(code_lists=(SEX,), data_elements=ELEMENTS, resources=(spec(),))
    summary = catalog.import_catalog(STEWARD_A, bundle, owner=A)
    assert (summary.code_lists, summary.data_elements, summary.new_versions) == (0, 0, 1)
    changed = ELEMENTS[0].model_copy(update={"definition": "改"})
    with pytest.raises(Problem) as exc:
        catalog.import_catalog(STEWARD_A, Catalog(data_elements=(changed,)), owner=A)
    assert _kind(exc) == problems.CONFLICT.uri and "the platform" in exc.value.detail
    # Outside an import, even an unchanged entry needs the authority to publish it.
    with pytest.raises(Problem) as exc:
        catalog.publish_code_list(AUDITOR_A, SEX, owner=A)
    assert _kind(exc) == problems.FORBIDDEN.uri
