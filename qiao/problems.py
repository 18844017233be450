"""Errors as RFC 9457 problem details, each with a stable ``type``.

Problem types are split, as X-Road splits its faults, by who has to act:

* ``client``   — the calling app sent something wrong (fix the request);
* ``consumer`` — the caller's own node could not carry the exchange (its operator acts);
* ``provider`` — the provider's node or backend refused or failed (the provider acts);
* ``hub``      — the control plane refused an administrative or enrollment call.

The ``type`` URIs are stable identifiers (RFC 9457 §3.1.1 allows non-dereferenceable URIs);
``docs/problems.md`` lists every one with what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

PROBLEM_CONTENT_TYPE = "application/problem+json"
_PREFIX = "urn:qiao:problem:"

# The JSON Schema of a problem, for the hub's and the node's OpenAPI documents: RFC 9457
# §3.1's members every Qiao problem carries; extensions (``errors``, ``allowed_purposes``
# ...) are allowed by §3.2, so the object stays open.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; docs/problems.md lists every type",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "Stable URI of the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}


@dataclass(frozen=True)
class ProblemType:
    """One kind of failure: its stable URI, HTTP status and a short English title."""

    side: str
    name: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return f"{_PREFIX}{self.side}:{self.name}"


def _t(side: str, name: str, status: int, title: str) -> ProblemType:
    return ProblemType(side, name, status, title)


# --- client errors: the app's request is wrong -------------------------------------------
BAD_PATH = _t("client", "bad-path", 400, "The path is not /r1/{provider-org}/{resource}/{path}")
MISSING_CLIENT = _t("client", "missing-client", 400, "X-Qiao-Client header is missing")
BAD_CLIENT = _t("client", "bad-client", 400, "X-Qiao-Client is not {instance}/{org}/{app}")
UNKNOWN_CLIENT = _t("client", "unknown-client", 403, "The client app is not registered")
MISSING_CREDENTIAL = _t("client", "missing-credential", 401, "No app credential was given")
BAD_CREDENTIAL = _t("client", "bad-credential", 401, "The app credential is not valid")
BAD_HEADER = _t("client", "bad-header", 400, "A Qiao header has an invalid value")
UNKNOWN_PROVIDER = _t("client", "unknown-provider", 404, "No such provider organization")
UNKNOWN_RESOURCE = _t("client", "unknown-resource", 404, "No such resource at this provider")
BODY_TOO_LARGE = _t("client", "body-too-large", 413, "The request body is over the limit")
# Limits on the request itself (docs/operations.md, "Limits and timeouts"): answered by the
# listener, before any route sees the request, then the connection is closed.
REQUEST_TIMEOUT = _t(
    "client", "request-timeout", 408, "The request was not received in time; it was too slow"
)
HEADERS_TOO_LARGE = _t(
    "client", "headers-too-large", 431, "The request's header fields are too many or too large"
)
URI_TOO_LONG = _t("client", "uri-too-long", 414, "The request target (URL) is too long")
INCOMPLETE_BODY = _t(
    "client", "incomplete-body", 400, "The request body ended before it was complete"
)
BAD_TILE_PATH = _t(
    "client", "bad-tile-path", 400, "The path is not a C2SP tlog-tiles tile or entry bundle path"
)
METHOD_NOT_ALLOWED = _t("client", "method-not-allowed", 405, "Method not allowed here")
OUT_OF_SCOPE = _t("client", "out-of-scope", 403, "The app credential does not cover this resource")
INVALID_REQUEST = _t(
    "client", "invalid-request", 422, "The request body does not match the resource's schema"
)

# Agreements (docs/agreements.md): what no agreement, or the agreement's terms, do not allow.
NO_AGREEMENT = _t("client", "no-agreement", 403, "No agreement lets this client use this resource")
AGREEMENT_NOT_YET_VALID = _t(
    "client", "agreement-not-yet-valid", 403, "The agreement is not yet in force"
)
AGREEMENT_EXPIRED = _t("client", "agreement-expired", 403, "The agreement has expired")
AGREEMENT_SUSPENDED = _t("client", "agreement-suspended", 403, "The agreement is suspended")
AGREEMENT_REVOKED = _t("client", "agreement-revoked", 403, "The agreement has been revoked")
PURPOSE_NOT_ALLOWED = _t(
    "client",
    "purpose-not-allowed",
    403,
    "X-Qiao-Purpose is missing or not one the agreement allows",
)
END_USER_REQUIRED = _t(
    "client", "end-user-required", 403, "The agreement requires X-Qiao-User to name the end user"
)
OPERATION_NOT_ALLOWED = _t(
    "client", "operation-not-allowed", 403, "The agreement does not allow this method or path"
)
FIELD_NOT_ALLOWED = _t(
    "client", "field-not-allowed", 403, "The request asks for a field outside the agreement"
)
OUTSIDE_TIME_WINDOW = _t(
    "client", "outside-time-window", 403, "The agreement does not allow calls at this time"
)
EMERGENCY_ONLY = _t(
    "client", "emergency-only", 403, "The agreement is usable only during a declared emergency"
)
RATE_LIMITED = _t("client", "rate-limited", 429, "The agreement's rate limit is reached")
QUOTA_EXHAUSTED = _t("client", "quota-exhausted", 429, "The agreement's daily quota is used up")

# --- consumer-side errors: the caller's own node could not carry the exchange --------------
CONFIGURATION_EXPIRED = _t(
    "consumer", "configuration-expired", 503, "The global configuration has expired"
)
NO_CONFIGURATION = _t("consumer", "no-configuration", 503, "No global configuration yet")
PROVIDER_UNREACHABLE = _t(
    "consumer", "provider-unreachable", 502, "The provider's node could not be reached"
)
PROVIDER_TIMEOUT = _t("consumer", "provider-timeout", 504, "The provider's node did not answer")
# Event streams (docs/events.md): the node could not reach its event broker (the hub's, or
# NATS). Nothing was published or acknowledged; retrying with the same event ids is safe.
CONSUMER_BROKER_UNAVAILABLE = _t(
    "consumer", "broker-unavailable", 503, "This node's event broker cannot be reached"
)
PROVIDER_NOT_TRUSTED = _t(
    "consumer",
    "provider-not-trusted",
    502,
    "The provider's node certificate does not match the global configuration",
)
REQUEST_HASH_MISMATCH = _t(
    "consumer", "request-hash-mismatch", 502, "The provider acknowledged a different request"
)
HUB_KEYS_UNAVAILABLE = _t(
    "consumer", "hub-keys-unavailable", 503, "The hub's token signing keys are unavailable"
)
AGREEMENT_INVALID = _t(
    "consumer",
    "agreement-invalid",
    403,
    "The agreement does not verify (hash or signature) at the consumer's node",
)

# --- provider-side errors: the provider's node or backend refused or failed ----------------
CERTIFICATE_REVOKED = _t(
    "provider", "certificate-revoked", 403, "The calling node's certificate is revoked"
)
CERTIFICATE_MISMATCH = _t(
    "provider",
    "certificate-mismatch",
    403,
    "The calling node's certificate does not match the global configuration",
)
PROVIDER_UNKNOWN_RESOURCE = _t(
    "provider", "unknown-resource", 404, "The provider's node does not serve this resource"
)
BACKEND_UNAVAILABLE = _t("provider", "backend-unavailable", 502, "The provider backend is down")
BACKEND_TIMEOUT = _t("provider", "backend-timeout", 504, "The provider backend did not answer")
PROVIDER_BROKER_UNAVAILABLE = _t(
    "provider", "broker-unavailable", 503, "The provider node's event broker cannot be reached"
)
PROVIDER_CONFIGURATION_EXPIRED = _t(
    "provider", "configuration-expired", 503, "The provider's global configuration has expired"
)
PROVIDER_BODY_TOO_LARGE = _t(
    "provider", "body-too-large", 413, "The request body is over the provider's limit"
)
INVALID_RESPONSE = _t(
    "provider",
    "invalid-response",
    502,
    "The provider backend's answer does not match the resource's schema",
)
PROVIDER_AGREEMENT_INVALID = _t(
    "provider",
    "agreement-invalid",
    403,
    "The agreement does not verify (hash or signature) at the provider's node",
)

# --- hub (control plane) errors -----------------------------------------------------------
VALIDATION = _t("hub", "validation", 422, "The request is not valid")
NOT_FOUND = _t("hub", "not-found", 404, "Not found")
CONFLICT = _t("hub", "conflict", 409, "Conflicts with what is already registered")
UNAUTHORIZED = _t("hub", "unauthorized", 401, "Authentication is required")
FORBIDDEN = _t("hub", "forbidden", 403, "Not permitted")
BAD_ENROLLMENT_TOKEN = _t(
    "hub", "bad-enrollment-token", 403, "The enrollment token is unknown, used or expired"
)
BAD_CSR = _t("hub", "bad-csr", 400, "The certificate signing request is not acceptable")
INVALID_USCC = _t("hub", "invalid-uscc", 422, "Not a valid unified social credit code (GB 32100)")
EXTERNAL_SIGN_IN_REFUSED = _t(
    "hub", "external-sign-in-refused", 403, "The external identity provider's sign-in is refused"
)
EXTERNAL_IDP_FAILED = _t(
    "hub", "external-idp-failed", 502, "The external identity provider could not be reached"
)
SIGN_IN_FAILED = _t("hub", "sign-in-failed", 401, "The sign-in name, password or code is not right")
MFA_REQUIRED = _t("hub", "mfa-required", 401, "A second factor (TOTP or recovery code) is needed")
SESSION_EXPIRED = _t("hub", "session-expired", 401, "The session has ended; sign in again")
CSRF_REFUSED = _t("hub", "csrf-refused", 403, "The request lacks a valid CSRF token or origin")
WEAK_PASSWORD = _t("hub", "weak-password", 422, "The password does not meet the password policy")
UNKNOWN_DATA_ELEMENT = _t(
    "hub", "unknown-data-element", 422, "The resource binds a data element not in the catalog"
)
UNKNOWN_CODE_LIST = _t(
    "hub", "unknown-code-list", 422, "The data element names a code list not in the catalog"
)
LEGAL_BASIS_MISSING = _t(
    "hub", "legal-basis-missing", 422, "A conditional or non-shared resource needs a legal basis"
)
CATALOG_ENTRY_IN_USE = _t(
    "hub", "catalog-entry-in-use", 409, "The data element or code list is bound by resources"
)
CATALOG_IMPORT_FAILED = _t(
    "hub", "catalog-import-failed", 422, "The catalog workbook has errors; nothing was imported"
)
RESOURCE_NOT_SHARED = _t(
    "hub", "resource-not-shared", 409, "A non-shared resource is reachable only in an emergency"
)
REASON_REQUIRED = _t("hub", "reason-required", 422, "A refusal (or suspension) needs a reason")
REQUEST_DECIDED = _t("hub", "request-decided", 409, "The sharing request is already decided")
APPROVAL_WIDENS = _t(
    "hub", "approval-widens", 422, "An approval may narrow the request, never widen it"
)
AGREEMENT_STATE = _t(
    "hub", "agreement-state", 409, "The agreement's state does not allow this change"
)
SECOND_ADMINISTRATOR_REQUIRED = _t(
    "hub",
    "second-administrator-required",
    403,
    "Another platform administrator must confirm this emergency",
)
INTERNAL = _t("hub", "internal", 500, "Internal error")

ALL: tuple[ProblemType, ...] = tuple(v for v in globals().values() if isinstance(v, ProblemType))


@dataclass
class Problem(Exception):
    """An error that reaches the caller as ``application/problem+json``."""

    kind: ProblemType
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind.uri}: {self.detail or self.kind.title}"

    @property
    def status(self) -> int:
        return self.kind.status

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.kind.uri,
            "title": self.kind.title,
            "status": self.kind.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def to_json(self, instance: str | None = None) -> bytes:
        return orjson.dumps(self.to_dict(instance))
