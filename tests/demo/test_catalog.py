"""The demo city's catalog describes exactly what its backends answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiao.catalog import validators
from qiao.catalog.spec import (
    Catalog,
    DataElement,
    ElementType,
    Format,
    Item,
    ResourceSpec,
    SharingType,
)
from qiao.catalog.standards import standard_catalog
from qiao.demo import backends
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import DEPARTMENTS, org_codes
from qiao.demo.people import build_city

CODES = org_codes()
CATALOG = demo_catalog(CODES)
STANDARDS = standard_catalog()
ELEMENTS = {e.identifier: e for e in STANDARDS.data_elements}
CODE_LISTS = {c.identifier: c for c in STANDARDS.code_lists}
BY_CODE = {r.code: r for r in CATALOG.resources}

_FORMATS: dict[Format, Callable[[str], str]] = {
    Format.CITIZEN_ID: validators.validate_citizen_id,
    Format.USCC: validators.validate_uscc,
    Format.PLATE: validators.validate_plate,
    Format.MOBILE: validators.validate_mobile,
    Format.DIVISION: validators.validate_division_code,
}
_DATES: dict[ElementType, Callable[[str], str]] = {
    ElementType.DATE: validators.validate_date,
    ElementType.DATETIME: validators.validate_datetime,
    ElementType.TIME: validators.validate_time,
}


def problems_in(record: Any, items: tuple[Item, ...]) -> list[str]:
    """Field-by-field check of one record against items: names, types, formats, code lists."""
    if not isinstance(record, dict):
        return [f"record is {type(record).__name__}, not an object"]
    found: list[str] = []
    fields = {i.field: i for i in items}
    found += [f"{k}: not in the catalog" for k in record if k not in fields]
    for item in items:
        if item.field not in record or record[item.field] is None:
            if item.required:
                found.append(f"{item.field}: required but missing")
            continue
        value, element = record[item.field], ELEMENTS[item.element]
        found += [f"{item.field}: {p}" for p in _value_problems(value, element)]
    return found


def _value_problems(value: Any, element: DataElement) -> list[str]:
    t = element.type
    if t is ElementType.BOOLEAN:
        return [] if isinstance(value, bool) else ["not a boolean"]
    if t is ElementType.INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else ["not an integer"]
    if t is ElementType.NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else ["not a number"]
    if not isinstance(value, str):
        return ["not a string"]
    problems: list[str] = []
    try:
        if t in _DATES:
            _DATES[t](value)
        if element.format:
            _FORMATS[element.format](value)
    except validators.InvalidCode as e:
        problems.append(e.rule)
    if element.min_length is not None and len(value) < element.min_length:
        problems.append("too short")
    if element.max_length is not None and len(value) > element.max_length:
        problems.append("too long")
    if element.code_list and value not in {c.value for c in CODE_LISTS[element.code_list].codes}:
        problems.append(f"{value!r} not in {element.code_list}")
    return problems


def records_of(body: Any, resource: ResourceSpec) -> list[Any]:
    for part in resource.records_at.split("/")[1:]:
        body = body[part]
    return body if isinstance(body, list) else [body]


def test_every_item_binds_a_shipped_element_and_every_code_list_exists() -> None:
    for r in CATALOG.resources:
        for item in r.items + r.parameters:
            assert item.element in ELEMENTS, (r.code, item.field)
    for e in STANDARDS.data_elements:
        assert e.code_list is None or e.code_list in CODE_LISTS


def test_resources_match_the_departments_and_providers() -> None:
    declared = {(CODES[d.key], code) for d in DEPARTMENTS for code in d.resources}
    assert {(r.provider, r.code) for r in CATALOG.resources} == declared
    for r in CATALOG.resources:
        assert validators.is_valid_uscc(r.provider)


def test_sharing_types_cover_conditional_with_legal_basis_and_unconditional() -> None:
    identity = BY_CODE["identity-verification"]
    assert identity.sharing_type is SharingType.CONDITIONAL
    assert "《中华人民共和国居民身份证法》" in identity.legal_basis
    assert [p.field for p in identity.parameters] == ["citizen_id", "name"]
    assert BY_CODE["bike-stations"].sharing_type is SharingType.UNCONDITIONAL
    for r in CATALOG.resources:
        assert r.published_on and r.keywords and r.abstract


def test_related_resources_exist() -> None:
    for r in CATALOG.resources:
        for rel in r.related:
            assert rel in BY_CODE


def test_violation_code_list_is_the_demo_generators() -> None:
    from qiao.demo.people import VIOLATION_CODES

    codes = {c.value: c.label for c in CODE_LISTS["QIAO-VIOLATION"].codes}
    assert codes == {k: v[0] for k, v in VIOLATION_CODES.items()}


def test_the_checker_catches_what_a_node_would_refuse() -> None:
    items = BY_CODE["vehicle-violations"].items
    good = {
        "record_id": "440320260101000001",
        "plate": "粤BD12345",
        "code": "1344",
        "description": "x",
        "occurred_at": "2026-01-01T08:00:00+08:00",
        "location": "y",
        "fine_yuan": 200,
        "points": 3,
        "handled": False,
    }
    assert problems_in(good, items) == []
    assert problems_in({**good, "extra": 1}, items) == ["extra: not in the catalog"]
    assert problems_in({**good, "code": "0000"}, items) == ["code: '0000' not in QIAO-VIOLATION"]
    assert problems_in({**good, "points": "3"}, items) == ["points: not an integer"]
    assert problems_in({**good, "occurred_at": "2026-01-01 08:00"}, items)
    del good["plate"]
    assert problems_in(good, items) == ["plate: required but missing"]


async def _get(app: web.Application, method: str, path: str, **kw: Any) -> Any:
    async with TestClient(TestServer(app)) as client:
        resp = await client.request(method, path, **kw)
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture(scope="module")
def city() -> Any:
    return build_city()


async def test_every_demo_backend_response_conforms(city: Any) -> None:
    police = backends.public_security(city)
    plates = sorted({v.plate for v in city.violations})
    person = city.people[0]
    calls: list[tuple[str, web.Application, str, str, dict[str, Any]]] = [
        *(
            ("vehicle-violations", police, "GET", "/violations", {"params": {"plate": p}})
            for p in plates[:25]
        ),
        ("vehicle-violations", police, "GET", "/violations", {"params": {"plate": "粤B00000"}}),
        ("traffic-accidents", police, "GET", "/accidents", {}),
        ("traffic-accidents", police, "GET", "/accidents", {"params": {"district": "滨江区"}}),
        (
            "identity-verification",
            police,
            "POST",
            "/identity/verify",
            {"json": {"citizen_id": person.citizen_id, "name": person.name}},
        ),
        ("bike-stations", backends.transport(city), "GET", "/stations", {}),
        ("epidemic-daily", backends.health(city), "GET", "/daily", {}),
        *(
            (
                "enterprise-credit",
                backends.market_regulation(city),
                "GET",
                f"/enterprises/{e.uscc}",
                {},
            )
            for e in city.enterprises[:10]
        ),
    ]
    checked = 0
    for code, app, method, path, kw in calls:
        resource = BY_CODE[code]
        body = await _get(app, method, path, **kw)
        for record in records_of(body, resource):
            assert problems_in(record, resource.items) == [], (code, record)
            checked += 1
        if resource.parameters and "json" in kw:
            assert problems_in(kw["json"], resource.parameters) == []
    assert checked > 100


async def test_accidents_filter_by_district_and_date(city: Any) -> None:
    police = backends.public_security(city)
    everything = (await _get(police, "GET", "/accidents"))["accidents"]
    assert len(everything) == 120
    one = everything[0]
    day = one["occurred_at"][:10]
    by_day = await _get(police, "GET", "/accidents", params={"date": day})
    assert one in by_day["accidents"]
    assert all(a["occurred_at"].startswith(day) for a in by_day["accidents"])
    by_district = await _get(police, "GET", "/accidents", params={"district": one["district"]})
    assert all(a["district"] == one["district"] for a in by_district["accidents"])
    for a in everything:
        assert (a["severity"] == "3") == (a["deaths"] > 0)


def test_the_demo_bundle_is_a_consistent_catalog() -> None:
    bundle = Catalog(
        code_lists=STANDARDS.code_lists,
        data_elements=STANDARDS.data_elements,
        resources=CATALOG.resources,
    )
    assert len({r.code for r in bundle.resources}) == len(bundle.resources)


async def test_every_demo_backend_response_passes_the_derived_json_schema(city: Any) -> None:
    """The nodes' own check: the JSON Schema derived from the items (qiao.catalog.schema)."""
    from qiao.catalog.schema import compile_schema, derive_schemas

    police = backends.public_security(city)
    market = backends.market_regulation(city)
    calls: list[tuple[str, web.Application, str, str, dict[str, Any]]] = [
        *(
            ("vehicle-violations", police, "GET", "/violations", {"params": {"plate": p}})
            for p in sorted({v.plate for v in city.violations})
        ),
        ("traffic-accidents", police, "GET", "/accidents", {}),
        *(
            ("identity-verification", police, "POST", "/identity/verify",
             {"json": {"citizen_id": p.citizen_id, "name": p.name}})
            for p in city.people[:20]
        ),
        ("bike-stations", backends.transport(city), "GET", "/stations", {}),
        ("epidemic-daily", backends.health(city), "GET", "/daily", {}),
        *(
            ("enterprise-credit", market, "GET", f"/enterprises/{e.uscc}", {})
            for e in city.enterprises
        ),
    ]  # fmt: skip
    compiled = {}
    for r in CATALOG.resources:
        schemas = derive_schemas(r, ELEMENTS, CODE_LISTS)
        compiled[r.code] = {k: compile_schema(v) for k, v in schemas.items() if v is not None}
    for code, app, method, path, kw in calls:
        body = await _get(app, method, path, **kw)
        assert compiled[code]["response"].errors(body) == [], (code, path)
        if "json" in kw:
            assert compiled[code]["request"].errors(kw["json"]) == [], code
