"""The hub's OpenAPI document declares what the hub really answers (qiao/hub/openapi.py):
every error as an RFC 9457 problem, and the statuses reliability/test_fuzz_hub.py found
undeclared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.hub.openapi import PROBLEM_SCHEMA
from qiao.problems import PROBLEM_CONTENT_TYPE

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    settings = HubSettings.load(None, data_dir=tmp, instance="CN-T")
    client = TestClient(create_app(settings, open_registry(settings)))
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_every_operation_declares_its_errors_as_problems(document: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/responses/Problem"}
    problem = document["components"]["responses"]["Problem"]
    assert list(problem["content"]) == [PROBLEM_CONTENT_TYPE]
    assert document["components"]["schemas"]["Problem"] == PROBLEM_SCHEMA
    wrong = [
        f"{method} {path} {status}"
        for method, path, op in _operations(document)
        for status in {"4XX", "5XX"} | {s for s in op["responses"] if s[0] in "45"}
        if op["responses"].get(status) != ref
    ]
    assert not wrong
    # FastAPI's 422 body (HTTPValidationError), which the hub never sends, is declared nowhere.
    assert "HTTPValidationError" not in str(document)


def test_the_problem_schema_accepts_what_the_hub_sends_and_nothing_less(
    document: dict[str, Any],
) -> None:
    client_error = {
        "type": "urn:qiao:problem:hub:validation",
        "title": "The request is not valid",
        "status": 422,
        "detail": "wait: a whole number of seconds 0-55, not 'x'",
        "instance": "/api/v1/global-configuration",
        "errors": [{"field": "wait", "rule": "int", "message": "not a number"}],
    }
    jsonschema.validate(client_error, PROBLEM_SCHEMA)
    for missing in ("type", "title", "status"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({k: v for k, v in client_error.items() if k != missing},
                                PROBLEM_SCHEMA)  # fmt: skip


def test_the_second_administrators_mfa_reset_answer_is_declared(document: dict[str, Any]) -> None:
    # Found by reliability/test_fuzz_hub.py: the first administrator's call answers 202
    # ("pending"), which the document did not list.
    responses = document["paths"]["/api/v1/users/{username}/mfa-reset"]["post"]["responses"]
    assert {"200", "202"} <= set(responses)


def test_time_window_times_are_declared_without_an_offset(document: dict[str, Any]) -> None:
    # JSON Schema's "time" format requires an offset (RFC 3339 full-time), which the hub
    # refuses for a window's China Standard Time (tests/agreements/test_document.py).
    window = document["components"]["schemas"]["TimeWindow"]["properties"]
    for name in ("start", "end"):
        assert "format" not in window[name]
        jsonschema.validate("08:30", window[name])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate("08:30:00+08:00", window[name])
