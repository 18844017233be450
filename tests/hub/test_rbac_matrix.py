"""Every route of the hub × every role × own and foreign organization (and anonymous),
checked against the access table below, written by hand from docs/identity.md ("Who may
do what"), not derived from the code.

A route missing from the table fails the test: whoever adds a route decides who may call
it, here. The catalog's routes (/api/v1/catalog/...) join with one line each.

Each role is tried twice: as an organization-scoped access token and as a signed-in user
session (with its second factor and CSRF token). "Own" callers hold the role in
organization A, the one every path names; "foreign" ones hold it in B. A call is *refused*
when the hub answers 401/403 with an authentication or authorization problem; any other
answer (200, 404 for a made-up id, 409, 422 for a made-up body ...) means the role check
let it through.

The console's pages (/console/...) answer people in a browser, in HTML: there a refusal is
a redirect to the sign-in page (with ``next=``) or a 403 page, and only a session gets in
(a bearer token is no way into the console).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from qiao import pki
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import CLI, Role

A = "91350100M000100Y43"  # the organization every path names
B = "12350100MB00010016"  # the caller's organization when it is "foreign"
BASE = "https://hub.test"

R = Role
ORG_ROLES = [r for r in Role if r is not Role.PLATFORM_ADMIN]


@dataclass(frozen=True)
class Access:
    """Who may call a route. ``kind``: ``public`` (anyone, anonymous too), ``caller`` (any
    authenticated caller), ``session`` (a signed-in person, not a token), ``roles`` (the
    platform administrator and holders of ``roles``; with ``scoped`` only in the
    organization the call is about)."""

    kind: str
    roles: frozenset[Role] = frozenset()
    scoped: bool = False
    body: Any = None
    query: str = ""
    people_only: bool = False  # organization access tokens may not (two-person rules)
    # Whether the platform administrator passes as holder of every role; False where only a
    # person of the organization concerned may act (applying, subscribing: docs/agreements.md).
    platform: bool = True
    console: bool = False  # an HTML page of the console: refusals are redirects or 403 pages


PUBLIC = Access("public")
# Only a node, by a signature with its node key over the request (qiao.events.remote): no
# person or token of any role gets in.
NODE = Access("node")
CALLER = Access("caller")
SESSION = Access("session")
# The console: a signed-in person's page; a form anyone may send with the CSRF token of the
# page it came from (sign-in, the language switch) — here only session callers carry one.
CONSOLE = Access("session", console=True)
CONSOLE_FORM = Access("form", console=True)


def roles(
    *rs: Role,
    scoped: bool = True,
    body: Any = None,
    query: str = "",
    people_only: bool = False,
    platform: bool = True,
) -> Access:
    return Access("roles", frozenset(rs), scoped, body, query, people_only, platform)


PLATFORM = roles(R.PLATFORM_ADMIN, scoped=False)

# Who applies, reads requests and decides (docs/agreements.md), for the console's rows.
APPLICANT_ROLES = (R.ORG_ADMIN, R.APP_DEVELOPER, R.DATA_STEWARD, R.APPROVER)
READER_ROLES = (*APPLICANT_ROLES, R.AUDITOR)
DECIDER_ROLES = (R.APPROVER, R.ORG_ADMIN)
# Who reads the console's audit and registry pages (qiao/console/audit.py, registry.py).
AUDIT_ROLES = (R.AUDITOR, R.SECURITY_OFFICER, R.ORG_ADMIN)
CONSOLE_PLATFORM = Access("roles", frozenset({R.PLATFORM_ADMIN}), console=True)

# --- the expected-access table ---------------------------------------------------------------
TABLE: dict[tuple[str, str], Access] = {
    # health, trust, the signed configuration: public (nodes fetch it before enrolling)
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/api/v1/global-configuration"): PUBLIC,
    ("POST", "/api/v1/enroll"): PUBLIC,  # the one-time enrollment token is the credential
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # registry
    ("GET", "/api/v1/organizations"): roles(
        R.ORG_ADMIN, R.SECURITY_OFFICER, R.AUDITOR, scoped=False
    ),
    ("POST", "/api/v1/organizations"): PLATFORM,
    ("POST", "/api/v1/organizations/{org}/apps"): roles(R.ORG_ADMIN, body={"code": "app-x"}),
    ("POST", "/api/v1/organizations/{org}/enrollment-tokens"): roles(R.SECURITY_OFFICER),
    ("GET", "/api/v1/nodes"): roles(R.SECURITY_OFFICER, R.AUDITOR, scoped=False),
    ("POST", "/api/v1/certificates/{serial}/revoke"): roles(R.SECURITY_OFFICER, body={}),
    ("GET", "/api/v1/resources"): roles(*Role, scoped=False),
    ("POST", "/api/v1/resources"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, body={"org": A, "code": "res-x"}
    ),
    # the ledger: public verification (C2SP tiles, checkpoints, receipts); nodes submit
    # signed batches (the node's signature is the credential)
    ("GET", "/ledger/checkpoint"): PUBLIC,
    ("GET", "/ledger/receipts/{exchange_id}"): PUBLIC,
    ("GET", "/ledger/entries/{index}"): PUBLIC,
    ("GET", "/ledger/policy"): PUBLIC,
    ("GET", "/ledger/status"): PUBLIC,
    ("GET", "/ledger/tile/{path:path}"): PUBLIC,
    ("POST", "/api/v1/ledger/submissions"): PUBLIC,
    # the embedded event broker and the nodes' event keys: nodes only (docs/events.md)
    ("POST", "/api/v1/events/logs/{org}/{code}/{subscriber}"): NODE,
    ("GET", "/api/v1/events/logs/{org}/{code}/{subscriber}"): NODE,
    ("POST", "/api/v1/events/logs/{org}/{code}/{subscriber}/ack"): NODE,
    ("GET", "/api/v1/events/logs/{org}/{code}/{subscriber}/acked"): NODE,
    ("GET", "/api/v1/events/logs/{org}/{code}/{subscriber}/offset-at"): NODE,
    ("POST", "/api/v1/nodes/events-key"): NODE,
    # identity: signing in and one's own sessions and factors
    ("POST", "/api/v1/session"): PUBLIC,
    ("GET", "/api/v1/session"): CALLER,
    ("DELETE", "/api/v1/session"): SESSION,
    ("POST", "/api/v1/session/revoke-all"): SESSION,
    ("GET", "/api/v1/sessions"): SESSION,
    ("DELETE", "/api/v1/sessions/{session_id}"): SESSION,
    ("POST", "/api/v1/me/mfa/totp"): SESSION,
    ("POST", "/api/v1/me/mfa/totp/confirm"): SESSION,
    ("POST", "/api/v1/me/mfa/recovery-codes"): SESSION,
    ("PUT", "/api/v1/me/password"): SESSION,
    # identity: an organization's users
    ("GET", "/api/v1/users"): roles(R.ORG_ADMIN, R.AUDITOR, query=f"org={A}"),
    ("POST", "/api/v1/users"): roles(
        R.ORG_ADMIN, body={"username": "made-here", "org": A, "roles": ["org-admin"]}
    ),
    ("GET", "/api/v1/users/{username}"): roles(R.ORG_ADMIN, R.AUDITOR),
    ("POST", "/api/v1/users/{username}/disable"): roles(R.ORG_ADMIN),
    ("POST", "/api/v1/users/{username}/enable"): roles(R.ORG_ADMIN),
    ("PUT", "/api/v1/users/{username}/roles"): roles(R.ORG_ADMIN, body={"roles": []}),
    ("POST", "/api/v1/users/{username}/mfa-reset"): roles(R.ORG_ADMIN, people_only=True),
    # single sign-on: protocol endpoints answer by their own rules (RFC 6749, OIDC Core)
    ("GET", "/.well-known/openid-configuration"): PUBLIC,
    ("GET", "/oauth2/jwks"): PUBLIC,
    ("GET", "/oauth2/authorize"): PUBLIC,
    ("GET", "/oauth2/login"): PUBLIC,
    ("POST", "/oauth2/token"): PUBLIC,
    ("GET", "/oauth2/userinfo"): PUBLIC,
    ("POST", "/oauth2/userinfo"): PUBLIC,
    ("GET", "/oauth2/logout"): PUBLIC,
    ("GET", "/api/v1/session/external/{idp}/start"): PUBLIC,
    ("GET", "/api/v1/session/external/{idp}/callback"): PUBLIC,
    ("POST", "/api/v1/orgs/{org}/oidc-clients"): roles(
        R.ORG_ADMIN, body={"name": "x", "redirect_uris": ["https://app.example/cb"]}
    ),
    ("GET", "/api/v1/orgs/{org}/oidc-clients"): roles(R.ORG_ADMIN, R.AUDITOR),
    ("DELETE", "/api/v1/orgs/{org}/oidc-clients/{client_id}"): roles(R.ORG_ADMIN),
    ("POST", "/api/v1/oidc/keys/rotate"): PLATFORM,
    # the catalog: anyone signed in reads it; the owning organization's stewards and
    # administrators publish (platform standards: the platform administrator)
    ("GET", "/api/v1/catalog/resources"): CALLER,
    ("GET", "/api/v1/catalog/resources/{org}/{code}"): CALLER,
    ("GET", "/api/v1/catalog/resources/{org}/{code}/versions"): CALLER,
    ("GET", "/api/v1/catalog/data-elements"): CALLER,
    ("GET", "/api/v1/catalog/data-elements/{identifier:path}"): CALLER,
    ("GET", "/api/v1/catalog/code-lists"): CALLER,
    ("GET", "/api/v1/catalog/code-lists/{identifier:path}"): CALLER,
    ("GET", "/api/v1/catalog/export"): CALLER,
    ("POST", "/api/v1/catalog/resources"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, body=lambda: _catalog_spec("res-cat")
    ),
    ("PUT", "/api/v1/catalog/resources/{org}/{code}"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, body=lambda: _catalog_spec("res-a")
    ),
    ("POST", "/api/v1/catalog/resources/{org}/{code}/deprecate"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, body={"reason": "并入新资源"}
    ),
    ("POST", "/api/v1/catalog/data-elements"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, query=f"owner={A}", body=lambda: _element()
    ),
    ("POST", "/api/v1/catalog/code-lists"): roles(
        R.DATA_STEWARD, R.ORG_ADMIN, query=f"owner={A}", body=lambda: _code_list()
    ),
    # The workbook import needs a steward or administrator at the door, and checks each
    # row's organization inside (one transaction; any refusal refuses all).
    ("POST", "/api/v1/catalog/import"): roles(R.DATA_STEWARD, R.ORG_ADMIN, scoped=False),
    # sharing requests and agreements (docs/agreements.md): the consumer's org-admins, app
    # developers, stewards and approvers apply and subscribe; the provider's approvers and
    # org-admins decide, suspend, resume, renew (and revoke, as may the consumer's org-admin);
    # the parties' users read their own. Which organization a request or an agreement belongs
    # to is checked once it is loaded (tests/agreements/test_api.py), so these rows check the
    # role at the door.
    ("POST", "/api/v1/resources/{org}/{code}/subscribe"): roles(
        R.ORG_ADMIN,
        R.APP_DEVELOPER,
        R.DATA_STEWARD,
        R.APPROVER,
        scoped=False,
        platform=False,
        body={"purposes": ["road-safety"]},
    ),
    ("POST", "/api/v1/requests"): roles(
        R.ORG_ADMIN,
        R.APP_DEVELOPER,
        R.DATA_STEWARD,
        R.APPROVER,
        scoped=False,
        platform=False,
        body={
            "provider": A,
            "resource": "res-a",
            "purposes": ["licensing"],
            "purpose_text": "行政审批核查",
            "legal_basis": "《行政许可法》第三十一条",
        },
    ),
    ("GET", "/api/v1/requests"): roles(
        R.ORG_ADMIN, R.APP_DEVELOPER, R.DATA_STEWARD, R.APPROVER, R.AUDITOR, scoped=False
    ),
    ("GET", "/api/v1/requests/{request_id}"): roles(
        R.ORG_ADMIN, R.APP_DEVELOPER, R.DATA_STEWARD, R.APPROVER, R.AUDITOR, scoped=False
    ),
    ("POST", "/api/v1/requests/{request_id}/approve"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={}
    ),
    ("POST", "/api/v1/requests/{request_id}/refuse"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={"reason": "不符合共享条件"}
    ),
    ("POST", "/api/v1/requests/{request_id}/withdraw"): roles(
        R.ORG_ADMIN, R.APP_DEVELOPER, R.DATA_STEWARD, R.APPROVER, scoped=False, platform=False
    ),
    ("GET", "/api/v1/agreements"): CALLER,
    ("GET", "/api/v1/agreements/{agreement_id}"): CALLER,
    ("GET", "/api/v1/agreements/{agreement_id}/document"): CALLER,
    ("GET", "/api/v1/agreements/{agreement_id}/odrl"): CALLER,
    ("POST", "/api/v1/agreements/{agreement_id}/suspend"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={"reason": "核查期间暂停"}
    ),
    ("POST", "/api/v1/agreements/{agreement_id}/resume"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={}
    ),
    ("POST", "/api/v1/agreements/{agreement_id}/revoke"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={"reason": "合作终止"}
    ),
    ("POST", "/api/v1/agreements/{agreement_id}/renew"): roles(
        R.APPROVER, R.ORG_ADMIN, scoped=False, body={"valid_days": 30}
    ),
    ("POST", "/api/v1/agreements/emergency"): roles(
        R.PLATFORM_ADMIN,
        scoped=False,
        body={"provider": A, "resource": "res-a", "consumer": B, "purposes": ["epidemic"]},
    ),
    # emergency mode (应急): platform administrators declare, confirm (another one) and end;
    # security officers and auditors of every organization read (the service shows each
    # only its own organization's accesses); auditors review the accesses afterwards.
    ("POST", "/api/v1/emergencies"): roles(
        R.PLATFORM_ADMIN, scoped=False, body={"reason": "应急演练", "hours": 1}
    ),
    ("POST", "/api/v1/emergencies/{emergency_id}/confirm"): PLATFORM,
    ("POST", "/api/v1/emergencies/{emergency_id}/end"): roles(
        R.PLATFORM_ADMIN, scoped=False, body={"reason": "演练结束"}
    ),
    ("GET", "/api/v1/emergencies"): roles(R.SECURITY_OFFICER, R.AUDITOR, scoped=False),
    ("GET", "/api/v1/emergencies/{emergency_id}"): roles(
        R.SECURITY_OFFICER, R.AUDITOR, scoped=False
    ),
    ("GET", "/api/v1/emergencies/{emergency_id}/accesses"): roles(
        R.SECURITY_OFFICER, R.AUDITOR, scoped=False
    ),
    ("POST", "/api/v1/emergencies/{emergency_id}/accesses/review"): roles(
        R.AUDITOR, scoped=False, body={"exchange_id": "x-1", "node": "a-node", "note": "合规"}
    ),
    # the web console (docs/console.md): sign-in is open, the rest needs a signed-in person;
    # the catalog's pages are everyone's, as its API is
    ("GET", "/"): PUBLIC,  # a redirect to /console/
    ("GET", "/console/sign-in"): PUBLIC,
    ("POST", "/console/sign-in"): CONSOLE_FORM,
    ("GET", "/console/sign-in/code"): PUBLIC,
    ("POST", "/console/sign-in/code"): CONSOLE_FORM,
    ("POST", "/console/language"): CONSOLE_FORM,
    ("POST", "/console/sign-out"): CONSOLE,
    ("GET", "/console/mfa"): CONSOLE,
    ("POST", "/console/mfa/start"): CONSOLE,
    ("POST", "/console/mfa/confirm"): CONSOLE,
    ("GET", "/console/"): CONSOLE,
    ("GET", "/console/catalog"): CONSOLE,
    ("GET", "/console/catalog/{org}/{code}"): CONSOLE,
    # requests and agreements in the console: the same role at the door as their JSON API
    # (above); applying and subscribing also need a person of an organization, as there
    ("GET", "/console/catalog/{org}/{code}/apply"): Access(
        "roles", frozenset(APPLICANT_ROLES), platform=False, console=True
    ),
    ("POST", "/console/catalog/{org}/{code}/apply"): Access(
        "roles", frozenset(APPLICANT_ROLES), platform=False, console=True
    ),
    ("POST", "/console/catalog/{org}/{code}/subscribe"): Access(
        "roles", frozenset(APPLICANT_ROLES), platform=False, console=True
    ),
    ("GET", "/console/requests"): Access("roles", frozenset(READER_ROLES), console=True),
    ("GET", "/console/requests/{request_id}"): Access(
        "roles", frozenset(READER_ROLES), console=True
    ),
    ("POST", "/console/requests/{request_id}/approve"): Access(
        "roles", frozenset(DECIDER_ROLES), console=True
    ),
    ("POST", "/console/requests/{request_id}/refuse"): Access(
        "roles", frozenset(DECIDER_ROLES), console=True
    ),
    ("POST", "/console/requests/{request_id}/withdraw"): Access(
        "roles", frozenset(APPLICANT_ROLES), platform=False, console=True
    ),
    ("GET", "/console/agreements"): CONSOLE,
    ("GET", "/console/agreements/{agreement_id}"): CONSOLE,
    ("GET", "/console/agreements/{agreement_id}/document"): CONSOLE,
    ("GET", "/console/agreements/{agreement_id}/odrl"): CONSOLE,
    **{
        (method, f"/console/agreements/{{agreement_id}}/{action}"): Access(
            "roles", frozenset(DECIDER_ROLES), console=True
        )
        for action in ("suspend", "resume", "revoke")
        for method in ("GET", "POST")
    },
    # audit and registry in the console (docs/console.md): the roles of their JSON APIs;
    # which organization's records or users is the page's and the service's to narrow.
    ("GET", "/console/audit"): Access("roles", frozenset(AUDIT_ROLES), console=True),
    ("GET", "/console/audit/exchanges/{index}"): Access(
        "roles", frozenset(AUDIT_ROLES), console=True
    ),
    ("GET", "/console/audit/exchanges/{index}/receipt"): Access(
        "roles", frozenset(AUDIT_ROLES), console=True
    ),
    ("GET", "/console/audit/emergencies"): Access(
        "roles", frozenset({R.SECURITY_OFFICER, R.AUDITOR}), console=True
    ),
    ("POST", "/console/audit/emergencies/{emergency_id}/review"): Access(
        "roles", frozenset({R.AUDITOR}), console=True
    ),
    ("GET", "/console/registry"): Access("roles", frozenset(AUDIT_ROLES), console=True),
    ("POST", "/console/registry/organizations"): CONSOLE_PLATFORM,
    ("POST", "/console/registry/organizations/{org}/apps"): Access(
        "roles", frozenset({R.ORG_ADMIN}), scoped=True, console=True
    ),
    ("POST", "/console/registry/organizations/{org}/enrollment-tokens"): Access(
        "roles", frozenset({R.SECURITY_OFFICER}), scoped=True, console=True
    ),
    ("GET", "/console/registry/users"): Access(
        "roles", frozenset({R.ORG_ADMIN, R.AUDITOR}), console=True
    ),
    ("POST", "/console/registry/users"): Access("roles", frozenset({R.ORG_ADMIN}), console=True),
    **{
        ("POST", f"/console/registry/users/{{username}}/{action}"): Access(
            "roles", frozenset({R.ORG_ADMIN}), scoped=True, console=True
        )
        for action in ("disable", "enable", "roles")
    },
    ("GET", "/console/registry/emergencies"): Access(
        "roles", frozenset({R.SECURITY_OFFICER, R.AUDITOR}), console=True
    ),
    ("POST", "/console/registry/emergencies"): CONSOLE_PLATFORM,
    ("POST", "/console/registry/emergencies/{emergency_id}/confirm"): CONSOLE_PLATFORM,
    ("POST", "/console/registry/emergencies/{emergency_id}/end"): CONSOLE_PLATFORM,
}


def _catalog_spec(code: str) -> Any:
    from tests.catalog.conftest import spec

    return spec(code=code, provider=A).model_dump(mode="json", exclude={"version", "status"})


def _element() -> Any:
    from qiao.catalog.spec import DataElement

    el = DataElement(identifier="DE0900", name="本局代码", definition="本局自定义", type="string")
    return el.model_dump(mode="json")


def _code_list() -> Any:
    from tests.catalog.conftest import SEX

    return SEX.model_copy(update={"identifier": "A-LOCAL-1"}).model_dump(mode="json")


# Values for path parameters: everything lives in organization A.
PARAMS = {
    "org": A,
    "serial": "a-node",  # the node's name (revoking by name revokes its certificates)
    "code": "res-a",
    "client": f"CN-T/{B}/app-b",
    "username": "target",
    "session_id": "999999",
    "exchange_id": "no-such-exchange",
    "index": "0",
    "path": "0/000",
    "idp": "no-such-idp",
    "client_id": "qc_no_such_client",
    "identifier": "DE0001",
    "request_id": "req-nosuchrequest",
    "agreement_id": "agr-nosuchagreement0",
    "emergency_id": "em-aaaaaaaaaaaa",
    "subscriber": "b-node",
}

REFUSALS = {
    "urn:qiao:problem:hub:unauthorized",
    "urn:qiao:problem:hub:forbidden",
    "urn:qiao:problem:hub:session-expired",
    "urn:qiao:problem:hub:csrf-refused",
}


@dataclass(frozen=True)
class Caller:
    kind: str  # "anonymous" | "token" | "session"
    role: Role | None = None
    org: str | None = None

    @property
    def name(self) -> str:
        if self.role is None:
            return "anonymous"
        where = {None: "", A: "@own", B: "@foreign"}[self.org]
        return f"{self.kind}:{self.role.value}{where}"


CALLERS = [Caller("anonymous")] + [
    Caller(kind, role, org)
    for kind in ("token", "session")
    for role in Role
    for org in ([None] if role is Role.PLATFORM_ADMIN else [A, B])
]


def expected(access: Access, caller: Caller) -> bool:
    if access.kind == "public":
        return True
    if access.kind == "node":
        return False
    if caller.kind == "anonymous":
        return False
    if access.kind == "form":
        return caller.kind == "session"
    if access.console and caller.kind == "token":
        return False
    if access.kind == "caller":
        return True
    if access.kind == "session":
        return caller.kind == "session"
    assert caller.role is not None
    if access.people_only and caller.kind == "token":
        return False  # the platform's operator tokens too: two-person rules need people
    if caller.role is Role.PLATFORM_ADMIN:
        return access.platform
    if caller.role not in access.roles:
        return False
    return not access.scoped or caller.org == A


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, included routers too."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            sub = getattr(getattr(r, "include_context", None), "prefix", "")
            yield from _routes(inner.routes, prefix + sub)
            continue
        for method in sorted(getattr(r, "methods", None) or ()):
            if method != "HEAD":
                yield method, prefix + r.path


def _fill(path: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        assert name in PARAMS, f"add a value for the path parameter {{{name}}} to PARAMS"
        return PARAMS[name]

    return re.sub(r"\{([^}]+)\}", value, path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # SQLite only: the role checks do not touch the database's dialect, and the escalation
    # cases run on both databases in tests/identity (test_service, test_api).
    tmp = tmp_path_factory.mktemp("rbac")
    url = f"sqlite:///{tmp / 'hub.db'}"
    settings = HubSettings.load(
        None,
        data_dir=tmp,
        database_url=url,
        instance="CN-T",
        public_url=BASE,
        ledger_interval_seconds=3600,
        argon2_memory_kib=8,
        argon2_time_cost=1,
        argon2_parallelism=1,
        sign_in_max_failures=10_000,
    )
    registry = open_registry(settings)
    registry.add_organization(A, "甲局")
    registry.add_organization(B, "乙局")
    registry.add_app(B, "app-b")
    registry.add_resource(A, "res-a")
    token, _ = registry.create_enrollment_token(A)
    key = pki.generate_private_key()
    csr = pki.csr_to_pem(pki.create_csr(key, "a-node", A)).decode()
    registry.enroll(token, csr, "a-node", "https://127.0.0.1:9443")
    app = create_app(settings, registry)
    identity = app.state.identity
    catalog = getattr(app.state, "catalog", None)
    if catalog is not None:  # the catalog's vocabulary and one resource of A
        from tests.catalog.conftest import ELEMENTS, SEX, spec

        catalog.publish_code_list(CLI, SEX)
        for el in ELEMENTS:
            catalog.publish_element(CLI, el)
        catalog.publish(CLI, spec(code="res-a", provider=A))
    identity.add_user(
        CLI, "target", org=A, roles=frozenset({Role.APP_DEVELOPER}), password="Bridge-pass-123"
    )
    credentials: dict[Caller, Any] = {}
    for c in CALLERS:
        if c.kind == "token":
            assert c.role is not None
            if c.role is Role.PLATFORM_ADMIN:
                credentials[c] = registry.create_operator_token("platform")
            else:
                credentials[c] = registry.create_operator_token(
                    c.name, org=c.org, roles=frozenset({c.role})
                )
        elif c.kind == "session":
            assert c.role is not None
            username = c.name.split(":")[1].replace("@", "-")
            identity.add_user(
                CLI, username, org=c.org, roles=frozenset({c.role}), password="Caller-pass-123"
            )
            credentials[c] = identity.user_id(username)
    return app, credentials


_clients: dict[int, TestClient] = {}


def _client(app: Any) -> TestClient:
    if id(app) not in _clients:
        _clients[id(app)] = TestClient(app, base_url=BASE, follow_redirects=False)
    return _clients[id(app)]


def _call(app: Any, credentials: dict[Caller, Any], caller: Caller, method: str, path: str,
          access: Access) -> Any:  # fmt: skip
    client = _client(app)
    client.cookies.clear()
    headers: dict[str, str] = {}
    if caller.kind == "token":
        headers["Authorization"] = f"Bearer {credentials[caller]}"
    elif caller.kind == "session":
        # A fresh session per call: sign-out routes end the one they are called with.
        session, csrf = app.state.identity.create_session(
            credentials[caller], ("pwd", "otp"), "testclient"
        )
        headers["Cookie"] = f"qiao_session={session}"
        headers["X-CSRF-Token"] = csrf
    url = _fill(path) + (f"?{access.query}" if access.query else "")
    kwargs: dict[str, Any] = {"headers": headers}
    if access.body is not None:
        kwargs["json"] = access.body() if callable(access.body) else access.body
    return client.request(method, url, **kwargs)


def _refused(r: Any) -> bool:
    if r.status_code == 303:  # the console sends whoever it refuses to sign in
        where = urlsplit(r.headers.get("location", ""))
        return where.path == "/console/sign-in" and "next" in parse_qs(where.query)
    if r.status_code == 403 and r.headers.get("content-type", "").startswith("text/html"):
        return True  # the console's refusal page
    if r.status_code not in (401, 403):
        return False
    try:
        return r.json().get("type") in REFUSALS
    except ValueError:
        return False


def test_every_route_is_in_the_table(hub: Any) -> None:
    app, _ = hub
    routes = set(_routes(app.routes))
    missing = sorted(routes - TABLE.keys())
    assert not missing, f"routes without an entry in the access table: {missing}"
    gone = sorted(TABLE.keys() - routes)
    assert not gone, f"table entries for routes that no longer exist: {gone}"


def test_every_route_answers_every_caller_as_the_table_says(hub: Any) -> None:
    app, credentials = hub
    wrong = []
    for method, path in sorted(set(_routes(app.routes))):
        access = TABLE.get((method, path))
        if access is None:
            continue  # reported by test_every_route_is_in_the_table
        for caller in CALLERS:
            r = _call(app, credentials, caller, method, path, access)
            allowed = not _refused(r)
            if allowed != expected(access, caller):
                wrong.append(
                    f"{method} {path} as {caller.name}: {r.status_code} "
                    f"{r.text[:120]!r} (expected {'allowed' if not allowed else 'refused'})"
                )
    assert not wrong, "\n".join(wrong)


def test_anonymous_and_foreign_refusals_are_problem_json(hub: Any) -> None:
    app, credentials = hub
    r = _call(app, credentials, CALLERS[0], "GET", "/api/v1/users", TABLE[("GET", "/api/v1/users")])
    assert r.status_code == 401 and r.json()["type"] == "urn:qiao:problem:hub:unauthorized"
    foreign = Caller("token", Role.ORG_ADMIN, B)
    r = _call(app, credentials, foreign, "POST", "/api/v1/users/{username}/disable",
              TABLE[("POST", "/api/v1/users/{username}/disable")])  # fmt: skip
    assert r.status_code == 403 and r.json()["type"] == "urn:qiao:problem:hub:forbidden"
    assert A in r.json()["detail"]


def test_the_matrix_is_large_enough_to_mean_something() -> None:
    assert len(CALLERS) == 1 + 2 * (1 + 2 * len(ORG_ROLES))
    assert len(TABLE) >= 50
