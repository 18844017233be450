"""The exchange protocol's pure parts: paths, Qiao headers, the request hash.

A department app calls ``{METHOD} /r1/{provider-org}/{resource}/{path}`` on its own node with
``X-Qiao-Client: {instance}/{org}/{app}``. The request hash binds a response to the exact
request (X-Road does the same with its request hash): both nodes compute

    SHA-256( "qiao-request-v1\\n" METHOD "\\n" path-and-query "\\n" exchange-id "\\n"
             client "\\n" hex(SHA-256(body)) )

and the provider returns it as ``X-Qiao-Request-Hash``; the consumer refuses a response whose
hash differs from its own.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from qiao import problems
from qiao.problems import Problem

H_CLIENT = "X-Qiao-Client"
H_ID = "X-Qiao-Id"
H_PURPOSE = "X-Qiao-Purpose"
H_USER = "X-Qiao-User"
H_REQUEST_HASH = "X-Qiao-Request-Hash"

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CLIENT_RE = re.compile(r"^([A-Za-z0-9-]{1,32})/([0-9A-Z]{18})/([A-Za-z0-9_-]{1,64})$")
# Purpose codes and end-user ids travel into records (and later the ledger): keep them short
# and printable so a hostile caller cannot smuggle control characters into audit data.
_TEXT_RE = re.compile(r"^[\x21-\x7e\u00a0-\uffff][\x20-\x7e\u00a0-\uffff]{0,199}$")

# Request headers a node passes on to the next hop; everything else (cookies, the app's
# credential, hop-by-hop headers) stays behind.
FORWARD_REQUEST_HEADERS = (
    "Content-Type",
    "Accept",
    "Accept-Language",
    "Content-Language",
    "Content-Encoding",
    "If-None-Match",
    "If-Modified-Since",
    "Range",
)
FORWARD_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Language",
    "Content-Encoding",
    "Cache-Control",
    "ETag",
    "Last-Modified",
    "Content-Range",
    "Accept-Ranges",
    "Location",
    # RFC 9110 §10.2.3: an app refused by the provider's rate limit or quota learns when to
    # come back.
    "Retry-After",
)


@dataclass(frozen=True)
class Target:
    provider_org: str
    resource: str
    path: str  # the rest of the path after the resource, without a leading slash


def parse_target(path: str) -> Target:
    """Split ``/r1/{provider-org}/{resource}/{path}``; refuse anything else."""
    parts = path.split("/", 4)
    if len(parts) < 4 or parts[0] != "" or parts[1] != "r1":
        raise Problem(problems.BAD_PATH, f"{path!r} is not /r1/{{provider-org}}/{{resource}}/...")
    org, resource = parts[2], parts[3]
    rest = parts[4] if len(parts) == 5 else ""
    if len(org) != 18 or not org.isalnum() or not _CODE_RE.match(resource):
        raise Problem(problems.BAD_PATH, f"{path!r}: bad provider organization or resource code")
    if any(seg in (".", "..") for seg in rest.split("/")):
        raise Problem(problems.BAD_PATH, "'.' and '..' are not allowed in the resource path")
    return Target(org.upper(), resource, rest)


@dataclass(frozen=True)
class Client:
    instance: str
    org: str
    app: str

    def __str__(self) -> str:
        return f"{self.instance}/{self.org}/{self.app}"


def parse_client(value: str | None) -> Client:
    if not value:
        raise Problem(problems.MISSING_CLIENT, f"send {H_CLIENT}: {{instance}}/{{org}}/{{app}}")
    m = _CLIENT_RE.match(value)
    if m is None:
        raise Problem(
            problems.BAD_CLIENT,
            f"{H_CLIENT} {value[:200]!r} is not {{instance}}/{{18-character org code}}/{{app}}",
        )
    return Client(*m.groups())


def exchange_id(value: str | None) -> str:
    """The caller's X-Qiao-Id if it is well formed, or a fresh one."""
    if value is None:
        return str(uuid.uuid4())
    if not _ID_RE.match(value):
        raise Problem(problems.BAD_HEADER, f"{H_ID} must be 1-128 of A-Z a-z 0-9 . _ : -")
    return value


def optional_text(name: str, value: str | None) -> str:
    if value is None or value == "":
        return ""
    if not _TEXT_RE.match(value):
        raise Problem(problems.BAD_HEADER, f"{name} must be 1-200 printable characters")
    return value


def request_hash(method: str, path_qs: str, xid: str, client: str, body_sha256: str) -> str:
    text = f"qiao-request-v1\n{method}\n{path_qs}\n{xid}\n{client}\n{body_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()
