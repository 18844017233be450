"""The node's OpenAPI document (qiao/node/openapi.py): valid OpenAPI 3.1, served by the app
listener, and complete: every route of a real node's app listener is in it, and every
operation in it reaches a route (reliability/test_fuzz_node.py fuzzes a live node with it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from qiao import __version__
from qiao.config import NodeSettings
from qiao.events.node_api import EventsApi
from qiao.node.app import Node
from qiao.node.openapi import document

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# Values for the document's path parameters, as a node's apps would send them.
SAMPLE = {
    "provider": "91350100M000100Y43",
    "resource": "vehicle-violations",
    "path": "records",
    "stream": "traffic-accidents",
}


async def _unused(_r: web.Request) -> web.Response:
    raise AssertionError("the routes are only enumerated here")


def app_listener(tmp_path: Path) -> web.Application:
    """A node's app listener with every optional part on (events, witness): the same
    ``Node.app_listener`` a running node serves, on stand-ins for the services behind it."""
    node: Any = Node.__new__(Node)
    node.settings = NodeSettings(data_dir=tmp_path)
    node.consumer = SimpleNamespace(handle=_unused)
    node.events = EventsApi(
        conf_cache=None, identity=None, keys=None, publisher=None, delivery=None,
        recorder=None, max_body_bytes=1024,
    )  # type: ignore[arg-type]  # fmt: skip
    node.witness = object()
    return node.app_listener()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    ]


def _url(template: str) -> str:
    for name, value in SAMPLE.items():
        template = template.replace(f"{{{name}}}", value)
    assert "{" not in template, f"add a sample value for {template}"
    return template


async def _route(app: web.Application, method: str, url: str) -> Any:
    match = await app.router.resolve(make_mocked_request(method, url, app=app))
    return None if match.http_exception is not None else match.route


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document(__version__)
    assert doc["openapi"].startswith("3.1.")
    # The OpenAPI 3.1 schema (OAI/OpenAPI-Specification schemas/v3.1), as Schemathesis ships it.
    schemathesis.openapi.from_dict(doc).validate()

    # And every schema in it is a valid JSON Schema (OpenAPI 3.1 uses draft 2020-12).
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("schema"), dict):
                jsonschema.Draft202012Validator.check_schema(node["schema"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_every_route_of_the_app_listener_is_in_the_document(tmp_path: Path) -> None:
    app = app_listener(tmp_path)
    doc = document(__version__)
    served: dict[Any, set[str]] = {}
    for method, path in _operations(doc):
        route = await _route(app, method, _url(path))
        assert route is not None, f"{method} {path} reaches no route of the app listener"
        served.setdefault(route, set()).add(method)
    missing = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside each GET
        # A route for any method ("*", the exchanges) must be documented for every method
        # a resource's operations use.
        wanted = (
            {"GET", "POST", "PUT", "PATCH", "DELETE"} if route.method == "*" else {route.method}
        )
        lacking = wanted - served.get(route, set())
        if lacking:
            missing.append(f"{sorted(lacking)} {route.resource.canonical}")
    assert not missing, f"routes of the app listener missing from the document: {missing}"
    assert len(served) >= 7  # health, the document, two exchange forms, three event routes ...


async def test_the_app_listener_serves_the_document(tmp_path: Path) -> None:
    async with TestClient(TestServer(app_listener(tmp_path))) as client:
        r = await client.get("/openapi.json")
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == document(__version__)


def test_every_refusal_the_node_makes_is_declared_as_a_problem() -> None:
    doc = document(__version__)
    problem = {"$ref": "#/components/responses/Problem"}
    for path, item in doc["paths"].items():
        for op in item.values():
            if path.startswith("/e1/"):
                assert op["responses"]["4XX"] == problem == op["responses"]["5XX"], path
            if path.startswith("/r1/"):
                # The backend's own errors pass through as it sent them; the nodes' are problems.
                relayed = doc["components"]["responses"]["ProblemOrRelayed"]["content"]
                assert "application/problem+json" in relayed
                assert op["responses"]["4XX"]["$ref"].endswith("/ProblemOrRelayed")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"title": "no type"}, doc["components"]["schemas"]["Problem"])
