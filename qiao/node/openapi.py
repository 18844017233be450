"""The node's OpenAPI document, served at ``GET /openapi.json`` on the app listener.

The node's routes are aiohttp handlers, not FastAPI ones, so the document is written here
rather than generated; ``reliability/test_fuzz_node.py`` fuzzes a live node against it and
tests/node/test_openapi.py checks that every route of the app listener appears in it.

What it describes (docs/exchange-protocol.md, docs/events.md, docs/ledger.md):

- ``/r1/{provider}/{resource}[/{path}]``: an exchange. The answer is the provider backend's,
  relayed with its status, content type and body, plus ``X-Qiao-Id`` and
  ``X-Qiao-Request-Hash``; what the nodes refuse themselves is an RFC 9457 problem. Any method
  passes; the document lists the five a resource's operations use.
- ``/e1/...``: publishing to and pulling from event streams; every refusal a problem.
- ``/witness/add-checkpoint``: c2sp.org/tlog-witness, whose answers are plain text by that
  specification (the cosignature lines; a refusal's reason; 409's body the stored tree size).
"""

from __future__ import annotations

from typing import Any

from qiao.events.delivery import MAX_LIMIT, MAX_WAIT
from qiao.events.publisher import MAX_EVENTS
from qiao.ledger.witness import MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE
from qiao.problems import PROBLEM_CONTENT_TYPE, PROBLEM_SCHEMA

_PROBLEM_REF = {"$ref": "#/components/responses/Problem"}
# The patterns the node checks (qiao.exchange.protocol, qiao.events.node_api).
_ORG = r"^[0-9A-Z]{18}$"  # a unified social credit code (GB 32100)
_RESOURCE = r"^[A-Za-z0-9_-]{1,64}$"
_STREAM = r"^[a-z0-9][a-z0-9-]{0,63}$"
_CLIENT = r"^[A-Za-z0-9-]{1,32}/[0-9A-Z]{18}/[A-Za-z0-9_-]{1,64}$"
_ID = r"^[A-Za-z0-9._:-]{1,128}$"
# 1-200 printable characters (no control characters: they end up in audit records).
_PRINTABLE = r"^[^\x00-\x1f\x7f]{1,200}$"


def _header(name: str, description: str, schema: dict[str, Any], required: bool = False) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


CLIENT = _header(
    "X-Qiao-Client",
    "The calling app: {instance}/{org}/{app}, an app of this node's organization",
    {"pattern": _CLIENT},
    required=True,
)
CLIENT_OPTIONAL = {**CLIENT, "required": False}
PURPOSE = _header(
    "X-Qiao-Purpose", "The purpose code, one the agreement allows", {"pattern": _PRINTABLE}
)
END_USER = _header(
    "X-Qiao-User",
    "The person the app acts for (required by agreements with end_user_required)",
    {"pattern": _PRINTABLE},
)
EXCHANGE_ID = _header(
    "X-Qiao-Id",
    "Correlation and idempotency id; the node makes a UUID when it is absent",
    {"pattern": _ID},
)

_ANSWER_HEADERS = {
    "X-Qiao-Id": {
        "description": "The exchange's id, the same in both nodes' records",
        "schema": {"type": "string"},
    },
    "X-Qiao-Request-Hash": {
        "description": "Hex SHA-256 binding the answer to the exact request "
        "(docs/exchange-protocol.md, 'The request hash')",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}


def _exchange(method: str, with_path: bool) -> dict[str, Any]:
    parameters: list[Any] = [
        {"$ref": "#/components/parameters/provider"},
        {"$ref": "#/components/parameters/resource"},
    ]
    if with_path:
        parameters.append({"$ref": "#/components/parameters/path"})
    parameters += [
        {"$ref": "#/components/parameters/client"},
        {"$ref": "#/components/parameters/purpose"},
        {"$ref": "#/components/parameters/endUser"},
        {"$ref": "#/components/parameters/exchangeId"},
    ]
    operation: dict[str, Any] = {
        "tags": ["exchange"],
        "operationId": f"exchange{'Path' if with_path else ''}{method.capitalize()}",
        "summary": f"{method.upper()} the provider's resource"
        + (" below its path" if with_path else ""),
        "parameters": parameters,
        "security": [{"appCredential": []}],
        "responses": {
            # The backend's own answer, whatever its type; errors the nodes find themselves
            # are problems, a backend's own errors pass through as the backend sent them.
            "2XX": {"$ref": "#/components/responses/Relayed"},
            "3XX": {"$ref": "#/components/responses/Relayed"},
            "4XX": {"$ref": "#/components/responses/ProblemOrRelayed"},
            "5XX": {"$ref": "#/components/responses/ProblemOrRelayed"},
        },
    }
    if method in ("post", "put", "patch"):
        operation["requestBody"] = {
            "required": False,
            "description": "Passed to the provider's backend (validated against the "
            "resource's schema when the consumer node validates requests)",
            "content": {"*/*": {"schema": {}}},
        }
    return operation


def _problem_responses(ok: dict[str, Any]) -> dict[str, Any]:
    return {**ok, "4XX": _PROBLEM_REF, "5XX": _PROBLEM_REF}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_EVENT_CALLER = [
    {"$ref": "#/components/parameters/clientOptional"},
    {"$ref": "#/components/parameters/purpose"},
    {"$ref": "#/components/parameters/endUser"},
]
_OFFSET = {"type": "integer", "minimum": 0}


def _events_paths() -> dict[str, Any]:
    stream = {
        "name": "stream",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": _STREAM},
        "description": "The stream's resource code",
    }
    provider = {"$ref": "#/components/parameters/provider"}
    event = {"type": "object", "description": "One event: a JSON object the stream's schema "
             "describes", "additionalProperties": True}  # fmt: skip
    delivered = {
        "type": "object",
        "required": ["offset", "event_id", "published_at", "event"],
        "properties": {
            "offset": _OFFSET,
            "event_id": {"type": "string"},
            "partition_key": {"type": ["string", "null"]},
            "published_at": {"type": "string", "format": "date-time"},
            "event": {"type": "object"},
        },
    }
    digits = {"type": "string", "pattern": "^[0-9]{1,18}$"}
    return {
        "/e1/{stream}": {
            "post": {
                "tags": ["events"],
                "operationId": "publishEvents",
                "summary": "Publish events to one of this organization's streams",
                "parameters": [stream, {"$ref": "#/components/parameters/clientOptional"}],
                "security": [{"appCredential": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["events"],
                                        "properties": {
                                            "events": {
                                                "type": "array",
                                                "items": event,
                                                "minItems": 1,
                                                "maxItems": MAX_EVENTS,
                                            }
                                        },
                                        "additionalProperties": False,
                                    },
                                    {**event, "not": {"required": ["events"]}},
                                ]
                            }
                        }
                    },
                },
                "responses": _problem_responses(
                    {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["events"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["event_id", "offsets"],
                                            "properties": {
                                                "event_id": {"type": "string"},
                                                "offsets": {
                                                    "type": "object",
                                                    "description": "Subscribing node -> the "
                                                    "event's offset in its log",
                                                    "additionalProperties": _OFFSET,
                                                },
                                            },
                                        },
                                    }
                                },
                            },
                            "Every subscribing node's log holds the events",
                        )
                    }
                ),
            }
        },
        "/e1/{provider}/{stream}": {
            "get": {
                "tags": ["events"],
                "operationId": "pullEvents",
                "summary": "Pull (or, with Accept: text/event-stream, stream) received events",
                "parameters": [
                    provider,
                    stream,
                    *_EVENT_CALLER,
                    {
                        "name": "after",
                        "in": "query",
                        "schema": digits,
                        "description": "Offset to read after (default: the node's position)",
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                        "description": "Replay from this RFC 3339 time",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": 100,
                        },
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": int(MAX_WAIT),
                            "default": 0,
                        },
                        "description": "Seconds to hold the answer while nothing arrives",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": digits,
                        "description": "Server-sent events: resume after this offset",
                    },
                ],
                "security": [{"appCredential": []}],
                "responses": _problem_responses(
                    {
                        "200": {
                            "description": "The events, and where the next pull starts; or "
                            "server-sent events (WHATWG HTML §9.2)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["events", "next"],
                                        "properties": {
                                            "events": {"type": "array", "items": delivered},
                                            "next": _OFFSET,
                                        },
                                    }
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        }
                    }
                ),
            }
        },
        "/e1/{provider}/{stream}/ack": {
            "post": {
                "tags": ["events"],
                "operationId": "acknowledgeEvents",
                "summary": "This node has handled the stream up to an offset",
                "parameters": [provider, stream, *_EVENT_CALLER],
                "security": [{"appCredential": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["offset"],
                                "properties": {"offset": _OFFSET},
                            }
                        }
                    },
                },
                "responses": _problem_responses(
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["acked"],
                                "properties": {"acked": _OFFSET},
                            },
                            "The node's position in the stream now",
                        )
                    }
                ),
            }
        },
    }


def _witness_paths() -> dict[str, Any]:
    def text(description: str, media: str = "text/plain") -> dict[str, Any]:
        return {"description": description, "content": {media: {"schema": {"type": "string"}}}}

    return {
        "/witness/add-checkpoint": {
            "post": {
                "tags": ["witness"],
                "operationId": "addCheckpoint",
                "summary": "Cosign the log's checkpoint (c2sp.org/tlog-witness)",
                "description": "Sent by the hub. The body is 'old <size>', the consistency "
                "proof's hashes one per line (base64), an empty line, then the signed "
                f"checkpoint; at most {MAX_REQUEST_BYTES} bytes.",
                "requestBody": {
                    "required": True,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": text("The witness's cosignature lines"),
                    "400": text("Malformed, or old size larger than the checkpoint's"),
                    "403": text("The checkpoint's signature does not verify"),
                    "404": text("The checkpoint's origin is not a log this witness follows"),
                    "409": text(
                        "The old size is not the size the witness holds; the body is that size",
                        SIZE_CONTENT_TYPE,
                    ),
                    "413": text("The request is over the size limit"),
                    "422": text("The consistency proof does not verify"),
                },
            }
        }
    }


def _health() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["status", "version", "node", "org", "instance", "configuration"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "version": {"type": "string"},
            "node": {"type": "string"},
            "org": {"type": "string"},
            "instance": {"type": "string"},
            "configuration": {"type": "object"},
            "reason": {"type": "string"},
        },
    }
    return {
        "get": {
            "tags": ["health"],
            "operationId": "health",
            "summary": "Whether the node can carry exchanges (a valid global configuration)",
            "responses": {
                "200": _json(body, "The node holds a valid global configuration"),
                "503": _json(body, "It does not: no configuration yet, or it expired"),
            },
        }
    }


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a node's app listener."""
    methods = ("get", "post", "put", "patch", "delete")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Qiao node",
            "version": version,
            "description": "A department's node (前置交换节点), as its apps see it: exchanges "
            "with other departments' resources (docs/exchange-protocol.md), event streams "
            "(docs/events.md), and the ledger witness (docs/ledger.md). Errors the node finds "
            "itself are RFC 9457 problem+json (docs/problems.md).",
        },
        "paths": {
            "/healthz": _health(),
            "/openapi.json": {
                "get": {
                    "tags": ["health"],
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
                }
            },
            "/r1/{provider}/{resource}": {m: _exchange(m, False) for m in methods},
            "/r1/{provider}/{resource}/{path}": {m: _exchange(m, True) for m in methods},
            **_events_paths(),
            **_witness_paths(),
        },
        "components": {
            "securitySchemes": {
                "appCredential": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key of the app (qiao node key create), or an "
                    "access token the hub issued to it (docs/sso.md)",
                }
            },
            "parameters": {
                "provider": {
                    "name": "provider",
                    "in": "path",
                    "required": True,
                    "description": "The provider organization's unified social credit code",
                    "schema": {"type": "string", "pattern": _ORG},
                },
                "resource": {
                    "name": "resource",
                    "in": "path",
                    "required": True,
                    "description": "The resource's code",
                    "schema": {"type": "string", "pattern": _RESOURCE},
                },
                "path": {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "The rest of the path, passed to the backend",
                    "schema": {"type": "string"},
                },
                "client": CLIENT,
                "clientOptional": CLIENT_OPTIONAL,
                "purpose": PURPOSE,
                "endUser": END_USER,
                "exchangeId": EXCHANGE_ID,
            },
            "schemas": {
                "Problem": PROBLEM_SCHEMA,
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem (docs/problems.md)",
                    "content": {
                        PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                },
                "Relayed": {
                    "description": "The provider backend's answer, relayed",
                    "headers": _ANSWER_HEADERS,
                    "content": {"*/*": {"schema": {}}},
                },
                "ProblemOrRelayed": {
                    "description": "A problem the nodes found, or the backend's own error "
                    "relayed as it sent it",
                    "content": {
                        PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}},
                        "*/*": {"schema": {}},
                    },
                },
            },
        },
    }
