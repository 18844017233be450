"""Validation in the running demo city: the hub derives the schemas from the published
catalog, the nodes compile them from the signed configuration, and the demo departments'
real answers pass the provider node's check."""

from __future__ import annotations

import httpx

from qiao.catalog.schema import compile_schema
from tests.integration.conftest import City
from tests.integration.test_exchange import T, records


def _resources(city: City) -> dict[str, dict[str, object]]:
    r = httpx.get(f"{city.dep.hub_url}/api/v1/global-configuration", timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()["document"]
    return {f"{x['org']}/{x['code']}": x for x in doc["resources"]}


def test_the_configuration_carries_each_catalogued_resources_schemas(city: City) -> None:
    resources = _resources(city)
    entry = resources[f"{city.dep.codes['police']}/vehicle-violations"]
    schemas = entry["schemas"]
    assert isinstance(schemas, dict) and isinstance(entry["version"], int)
    response = schemas["response"]
    assert response["$id"].endswith(f":vehicle-violations:{entry['version']}:response")
    compile_schema(response)  # what the nodes do with it
    # Resources registered outside the catalog (the lab's) carry none: streamed as before.
    assert not resources[f"{city.dep.codes['police']}/echo"].get("schemas")


def test_the_demo_backends_answers_match_the_catalog(city: City) -> None:
    for violation in city.city.violations[:5]:
        r = httpx.get(
            city.url(T[0], "police", "vehicle-violations"),
            params={"plate": violation.plate},
            headers=city.headers(*T, **{"X-Qiao-Purpose": "traffic-enforcement"}),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        xid = r.headers["x-qiao-id"]
        for dept in ("transport", "police"):
            (rec,) = records(city, dept, xid)
            assert rec["status"] == 200 and rec["problem_type"] == ""
