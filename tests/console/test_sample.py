"""The masked sample on a resource's page (issue 8): one fictional record that validates
against the resource's derived schema, masked as an agreement with the default masking
delivers it, shown escaped in both languages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qiao.agreements.service import AgreementService
from qiao.catalog import validators
from qiao.catalog.schema import compile_schema, derive_schemas
from qiao.catalog.spec import (
    Catalog,
    Code,
    CodeList,
    DataElement,
    ElementType,
    Format,
    ResourceSpec,
)
from qiao.catalog.standards import standard_catalog
from qiao.console.sample import SAMPLE_REGION, masked_fields, masked_sample, sample_record
from qiao.demo import city
from qiao.demo.catalog import demo_catalog
from qiao.identity.roles import CLI, Role
from tests.catalog.conftest import spec
from tests.console.conftest import A, B, Hub, sign_in
from tests.console.pages import Page
from tests.identity.support import make_hub

# The demo's departments, lent to the test hub's two organizations.
CODES = {"police": A, "transport": A, "market": B, "health": B}
STANDARDS = standard_catalog()
ELEMENTS = {e.identifier: e for e in STANDARDS.data_elements}
LISTS = {c.identifier: c for c in STANDARDS.code_lists}
DEMO = {r.code: r for r in demo_catalog(CODES).resources}
# GB 11643 masked by the citizen-id rule: region (6), 8 stars, the last 4.
MASKED_CITIZEN_ID = re.compile(r"^[0-9]{6}\*{8}[0-9]{3}[0-9X]$")


def at_records(resource: ResourceSpec, records: Any) -> Any:
    """``records`` placed at the resource's records_at (RFC 6901), as a backend answers."""
    for token in reversed(resource.records_at.split("/")[1:]):
        records = {token.replace("~1", "/").replace("~0", "~"): records}
    return records


@pytest.mark.parametrize("code", sorted(DEMO))
def test_the_sample_conforms_to_the_schema_of_every_demo_resource(code: str) -> None:
    resource = DEMO[code]
    record = sample_record(resource, ELEMENTS, LISTS)
    assert list(record) == [i.field for i in resource.items]  # optional items too
    schemas = derive_schemas(resource, ELEMENTS, LISTS)
    response = compile_schema(schemas["response"])
    # The schema's own format checkers (GB 11643, GB 32100, GA 36, …) run here.
    assert response.errors(at_records(resource, record)) == []
    assert response.errors(at_records(resource, [record])) == []
    if schemas.get("event") is not None:
        assert compile_schema(schemas["event"]).errors(record) == []


def test_the_schema_check_would_catch_a_wrong_sample() -> None:
    resource = DEMO["traffic-accidents"]
    record = sample_record(resource, ELEMENTS, LISTS)
    response = compile_schema(derive_schemas(resource, ELEMENTS, LISTS)["response"])
    # The masked record is not a valid citizen ID: the check above is not vacuous.
    wrong = {
        **record,
        "party_citizen_id": masked_sample(resource, ELEMENTS, LISTS)["party_citizen_id"],
    }
    assert [v.pointer for v in response.errors(at_records(resource, wrong))] == [
        "/accidents/party_citizen_id"
    ]


def test_identifiers_are_fictional_but_well_formed() -> None:
    record = sample_record(DEMO["traffic-accidents"], ELEMENTS, LISTS)
    citizen_id = record["party_citizen_id"]
    assert SAMPLE_REGION == city.REGION and citizen_id.startswith(city.REGION)
    assert validators.validate_citizen_id(citizen_id) == citizen_id
    assert validators.validate_plate(record["party_plate"]) == record["party_plate"]
    uscc = sample_record(DEMO["enterprise-credit"], ELEMENTS, LISTS)["uscc"]
    assert validators.validate_uscc(uscc) == uscc and uscc[2:8] == city.REGION
    # A name, an address: the fixed fictional ones.
    credit = sample_record(DEMO["enterprise-credit"], ELEMENTS, LISTS)
    assert credit["legal_representative"] == "张三"
    assert credit["address"] == "桥城市鼓楼区示例路1号"


def test_personal_fields_are_masked_by_their_default_rule() -> None:
    accidents = DEMO["traffic-accidents"]
    plain = sample_record(accidents, ELEMENTS, LISTS)
    masked = masked_sample(accidents, ELEMENTS, LISTS)
    assert MASKED_CITIZEN_ID.match(masked["party_citizen_id"])
    assert masked["party_citizen_id"][:6] == plain["party_citizen_id"][:6]
    assert masked["party_citizen_id"][-4:] == plain["party_citizen_id"][-4:]
    assert masked["party_plate"] == "粤B****5"
    # Everything else as it is: the default masking neither projects nor touches the rest.
    rest = set(plain) - {"party_citizen_id", "party_plate"}
    assert {k: masked[k] for k in rest} == {k: plain[k] for k in rest}
    assert masked_fields(accidents, ELEMENTS) == ("party_plate", "party_citizen_id")
    # Personal without a default rule (a name: DE0002 has no named format) stays: that is
    # what such an agreement delivers, unless its terms add a rule.
    credit = DEMO["enterprise-credit"]
    assert masked_sample(credit, ELEMENTS, LISTS) == sample_record(credit, ELEMENTS, LISTS)
    assert masked_fields(credit, ELEMENTS) == ()


@pytest.mark.parametrize("kind", [*Format, *ElementType])
def test_every_format_and_type_has_a_valid_value(kind: Format | ElementType) -> None:
    # A format or type added later without a sample value fails here, not on a page.
    named = isinstance(kind, Format)
    element = DataElement(
        identifier="X0",
        name="某项",
        definition="d",
        type="string" if named else kind,
        format=kind if named else None,
    )
    resource = spec(items=[{"field": "value", "name": "某项", "element": "X0"}])
    record = sample_record(resource, {"X0": element}, {})
    assert (
        compile_schema(derive_schemas(resource, {"X0": element}, {})["response"]).errors(record)
        == []
    )


def test_values_fit_lengths_patterns_and_code_lists() -> None:
    elements = {
        "X1": DataElement(
            identifier="X1", name="内部编号", definition="d", type="string", pattern="^[a-z]+$"
        ),
        "X2": DataElement(
            identifier="X2", name="说明", definition="d", type="string", min_length=30
        ),
        "X3": DataElement(
            identifier="X3", name="短码", definition="d", type="string", max_length=2
        ),
        "X4": DataElement(
            identifier="X4", name="等级", definition="d", type="integer", code_list="L"
        ),
        "X5": DataElement(identifier="X5", name="时刻", definition="d", type="time"),
    }
    lists = {"L": CodeList(identifier="L", name="等级", codes=(Code(value="3", label="三级"),))}
    resource = spec(
        items=[
            {"field": "ref", "name": "编号", "element": "X1"},
            {"field": "note", "name": "说明", "element": "X2"},
            {"field": "short", "name": "短码", "element": "X3"},
            {"field": "level", "name": "等级", "element": "X4"},
            {"field": "at", "name": "时刻", "element": "X5", "required": False},
        ]
    )
    record = sample_record(resource, elements, lists)
    assert record["ref"] == "sample" and record["level"] == 3
    assert len(record["note"]) == 30 and len(record["short"]) <= 2
    schema = compile_schema(derive_schemas(resource, elements, lists)["response"])
    assert schema.errors(record) == []


def test_an_unknown_data_element_or_code_list_has_no_sample() -> None:
    with pytest.raises(ValueError, match="unknown data element"):
        sample_record(spec(), {}, {})
    coded = {"DE0004": ELEMENTS["DE0011"].model_copy(update={"identifier": "DE0004"})}
    resource = spec(items=[{"field": "violation", "name": "违法行为", "element": "DE0004"}])
    with pytest.raises(ValueError, match="unknown code list"):
        sample_record(resource, coded, {})


# --- the page ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub with the shipped standards and the demo city's resources (so the default masking
    has personal elements to work on), and a markup probe in an item's name."""
    tmp: Path = tmp_path_factory.mktemp("sample")
    h = make_hub(tmp, f"sqlite:///{tmp / 'hub.db'}")
    catalog = h.app.state.catalog
    catalog.import_catalog(
        CLI,
        Catalog(
            code_lists=STANDARDS.code_lists,
            data_elements=STANDARDS.data_elements,
            resources=tuple(DEMO.values()),
        ),
    )
    catalog.publish(
        CLI,
        spec(
            code="markup-probe",
            items=[{"field": "note", "name": '<script>alert("x")</script>', "element": "DE0012"}],
        ),
    )
    h.user("steward", Role.DATA_STEWARD)
    yield h


@pytest.fixture
def browser(hub: Hub, client: TestClient) -> TestClient:
    sign_in(hub, client, "steward")
    return client


def test_the_page_shows_the_masked_sample_in_both_languages(browser: TestClient) -> None:
    path = f"/console/catalog/{A}/traffic-accidents"
    plain = sample_record(DEMO["traffic-accidents"], ELEMENTS, LISTS)
    masked = masked_sample(DEMO["traffic-accidents"], ELEMENTS, LISTS)
    zh = browser.get(path)
    en = browser.get(path, headers={"Accept-Language": "en"})
    for r in (zh, en):
        assert r.status_code == 200
        assert not Page.parse(r.text).inline
        # Formatted JSON, escaped by Jinja (the quotes), with the masked values only.
        assert f"&#34;party_citizen_id&#34;: &#34;{masked['party_citizen_id']}&#34;" in r.text
        assert "&#34;party_plate&#34;: &#34;粤B****5&#34;" in r.text
        assert plain["party_citizen_id"] not in r.text and plain["party_plate"] not in r.text
        assert '<span class="code">party_citizen_id</span>' in r.text
    assert "脱敏样例" in zh.text and "数值均为虚构" in zh.text and "默认脱敏的字段" in zh.text
    assert '<html lang="en">' in en.text and "Masked sample" in en.text
    assert "The values are fictional." in en.text and "脱敏样例" not in en.text


def test_a_resource_without_personal_items_says_nothing_is_masked(browser: TestClient) -> None:
    r = browser.get(f"/console/catalog/{A}/bike-stations")
    assert r.status_code == 200 and "脱敏样例" in r.text
    assert "没有默认脱敏的信息项" in r.text and "&#34;station_id&#34;" in r.text


def test_an_item_name_in_the_sample_renders_as_text(browser: TestClient) -> None:
    r = browser.get(f"/console/catalog/{A}/markup-probe")
    assert r.status_code == 200 and "脱敏样例" in r.text
    assert '<script>alert("x")</script>' not in r.text
    assert "示例&lt;script&gt;alert(\\&#34;x\\&#34;)&lt;/script&gt;" in r.text
    assert not Page.parse(r.text).inline


def test_the_default_masking_is_the_one_the_hub_gives_agreements(hub: Hub) -> None:
    # One selection for both (qiao.agreements.service.default_masking): the hub's resource
    # target for an agreement masks exactly the fields the sample masks, by the same rules.
    agreements = AgreementService(hub.registry)
    for code, resource in DEMO.items():
        target = agreements._target(resource.provider, code)
        assert tuple(target.default_masking) == masked_fields(resource, ELEMENTS), code
    accidents = agreements._target(A, "traffic-accidents").default_masking
    assert {f: m.rule.value for f, m in accidents.items()} == {
        "party_plate": "plate",
        "party_citizen_id": "citizen-id",
    }
