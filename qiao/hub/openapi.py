"""The hub's OpenAPI document, as FastAPI generates it, with the errors it really answers.

FastAPI declares each operation's success and, where it validates a body or a parameter, a
422 ``application/json`` of its own ``HTTPValidationError`` shape. The hub answers every error
(422 included) as RFC 9457 ``application/problem+json`` instead (qiao.hub.app's handlers), and
any operation may refuse a caller (401, 403), name something unknown (404) or fail (5xx). So
every operation declares the ``4XX`` and ``5XX`` ranges (OpenAPI 3.1 §4.8.16.2) as one shared
Problem response, and FastAPI's 422 becomes that Problem: a client generated from the document
then parses the errors the hub sends, and a schema-checking fuzzer
(reliability/test_fuzz_hub.py) holds the hub to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from qiao.problems import PROBLEM_CONTENT_TYPE, PROBLEM_SCHEMA

PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "An RFC 9457 problem (docs/problems.md)",
    "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def with_problems(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the Problem schema and every operation's error responses declared."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    components.setdefault("responses", {})["Problem"] = PROBLEM_RESPONSE
    ref = {"$ref": "#/components/responses/Problem"}
    for item in document.get("paths", {}).values():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            # Errors a domain names (catalog, agreements ...) stay named, with the body they
            # really have; FastAPI's own 422 described one the hub never sends.
            for status in [s for s in responses if str(s)[:1] in ("4", "5")]:
                responses[status] = ref
            responses.setdefault("4XX", ref)
            responses.setdefault("5XX", ref)
    # Nothing refers to FastAPI's validation error shapes any more.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """Serve ``/openapi.json`` with the problems declared (generated once, on first call)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_problems(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
