"""Schemathesis against the hub's OpenAPI document, in process (issue 9, "fuzz").

Every operation the document lists is fuzzed three times over: anonymously, as the platform
operator, and with an access token of an organization holding every organization role, so the
cases get past 401 into the handlers. Half the positive cases name things that exist (the
organization, its resource, a submitted sharing request, a user ...), so they get past 404
too. Each answer must be:

- no server error (5xx);
- a status code and a content type the document declares for the operation, and a body that
  matches the declared schema (the hub declares every error as an RFC 9457 problem once for
  all operations: qiao/hub/openapi.py);
- for every 4xx and 5xx, ``application/problem+json`` with a ``type`` (docs/problems.md).

The console's pages (/console/) and the single sign-on endpoints answer HTML and redirects
and are not in the document; they get their own check below: no 5xx for any path parameter
or query, anonymous or signed in.

The short profile runs one case per operation, mode and caller (derandomized: CI repeats
them; building the strategies from the document costs more than the calls); ``make
reliability`` runs 100 per mode (200 per operation, ~50,000 cases). ``QIAO_FUZZ_EXAMPLES=N``
overrides both, to hunt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from qiao import pki
from qiao.config import HubSettings
from qiao.hub.app import create_app, open_registry
from qiao.identity.roles import CLI, Role
from qiao.problems import PROBLEM_CONTENT_TYPE
from reliability.figures import PROFILE, record

A = "91350100M000100Y43"  # the organization the fuzzer's known values name
B = "12350100MB00010016"  # the one that applies for A's resource
BASE = "https://hub.test"


# --- shared with reliability/test_fuzz_node.py --------------------------------------------------


def problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx answer is an RFC 9457 problem (§3) with a ``type``: the one error
    format a client of Qiao has to understand (docs/problems.md)."""
    if response.status_code < 400:
        return None
    media = response.headers.get("content-type", [""])
    media = (media[0] if isinstance(media, list) else media).split(";")[0].strip().lower()
    if media != PROBLEM_CONTENT_TYPE:
        raise AssertionError(
            f"{response.status_code} answered as {media or 'no content type'}, "
            f"not {PROBLEM_CONTENT_TYPE}"
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} problem is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
        raise AssertionError(f"{response.status_code} problem has no type: {str(body)[:200]}")
    if body.get("status", response.status_code) != response.status_code:
        raise AssertionError(f"problem status {body['status']} on a {response.status_code} answer")
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_json_errors,
]


def negatable(operation: Any) -> bool:
    """Whether Schemathesis can make a request the document forbids: a body, a parameter with
    a constraint, or a required query parameter or header to leave out. A free-form string in
    the path has no invalid value (the generator would search and give up)."""
    if len(operation.body):
        return True
    for group in (operation.path_parameters, operation.query, operation.headers):
        for p in group:
            schema = p.definition.get("schema", {})
            constrained = set(schema) - {"type", "title", "description"}
            if constrained or schema.get("type", "string") != "string":
                return True
            if p.is_required and p.definition.get("in") != "path":
                return True
    return False


@dataclass
class Run:
    """The cases run and the failures found against one target."""

    cases: int = 0
    operations: int = 0
    failures: dict[str, str] = field(default_factory=dict)


class Fuzzer:
    """Schemathesis's cases for every operation of one schema, run target after target.

    ``fixed(operation)`` gives ``as_strategy`` keyword arguments (``path_parameters``,
    ``headers``) holding some parts at known values in half of the positive cases (an
    existing request, the app's own client id ...), so cases reach past "not found" and
    "unknown client" into the handlers. The strategies are built on their first draw, from
    the document's JSON Schemas, which costs more than the cases themselves: the targets of
    one schema share them."""

    def __init__(self, schema: Any, fixed: Callable[[Any], dict[str, Any]] | None = None):
        self.operations = [result.ok() for result in schema.get_all_operations()]
        self._fixed = fixed
        self._strategies: dict[tuple[str, GenerationMode], Any] = {}

    def _strategy(self, operation: Any, mode: GenerationMode) -> Any:
        key = (operation.label, mode)
        if key not in self._strategies:
            strategy = operation.as_strategy(mode)
            known = self._fixed(operation) if self._fixed is not None else {}
            if any(known.values()) and mode is GenerationMode.POSITIVE:
                strategy = strategy | operation.as_strategy(mode, **known)
            self._strategies[key] = strategy
        return self._strategies[key]

    def run(self, call: Callable[[Any], None], *, examples: int) -> Run:
        """``call(case)`` on ``examples`` positive and as many negative cases of every
        operation (negative ones where the document forbids anything: :func:`negatable`)."""
        run = Run()
        for operation in self.operations:
            run.operations += 1
            modes = [GenerationMode.POSITIVE]
            if negatable(operation):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:

                @settings(
                    max_examples=examples,
                    derandomize=not PROFILE.full,  # CI repeats its cases; the full run explores
                    deadline=None,
                    database=None,
                    # No shrinking in the short profile: a failure shows the case as found.
                    phases=[Phase.generate, Phase.shrink] if PROFILE.full else [Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=self._strategy(operation, mode))
                def one(case: Any) -> None:
                    run.cases += 1
                    call(case)

                try:
                    one()
                except Unsatisfiable:
                    pass  # nothing to generate in this mode (all values allowed): no cases
                except BaseException as exc:  # a FailureGroup is a BaseExceptionGroup
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    label = f"{operation.label} ({mode.value})"
                    run.failures[label] = str(exc).strip()[:1500]
        return run


def report(run: Run) -> str:
    return "\n\n".join(f"== {label}\n{text}" for label, text in sorted(run.failures.items()))


def examples_per_operation(short: int, full: int) -> int:
    """Cases per operation and mode; ``QIAO_FUZZ_EXAMPLES`` overrides (to hunt locally)."""
    override = os.environ.get("QIAO_FUZZ_EXAMPLES", "").strip()
    return int(override) if override else PROFILE.pick(short, full)


# --- the hub under test -------------------------------------------------------------------------


@dataclass
class Hub:
    app: Any
    schema: Any
    headers: dict[str, dict[str, str]]  # caller -> credential headers
    known: dict[str, str]  # path parameter -> a value that exists
    session: tuple[str, str] = ("", "")  # a signed-in platform administrator: cookie, CSRF
    fuzzer: Fuzzer | None = None


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("fuzz-hub")
    settings_ = HubSettings.load(
        None,
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'hub.db'}",
        instance="CN-T",
        public_url=BASE,
        ledger_interval_seconds=3600,
        argon2_memory_kib=8,
        argon2_time_cost=1,
        argon2_parallelism=1,
        sign_in_max_failures=1_000_000,
    )
    registry = open_registry(settings_)
    registry.add_organization(A, "甲局")
    registry.add_organization(B, "乙局")
    registry.add_app(B, "app-b")
    token, _ = registry.create_enrollment_token(A)
    key = pki.generate_private_key()
    registry.enroll(
        token, pki.csr_to_pem(pki.create_csr(key, "a-node", A)).decode(), "a-node",
        "https://127.0.0.1:9443",
    )  # fmt: skip
    app = create_app(settings_, registry)
    from tests.catalog.conftest import ELEMENTS, SEX, spec

    catalog = app.state.catalog
    catalog.publish_code_list(CLI, SEX)
    for el in ELEMENTS:
        catalog.publish_element(CLI, el)
    catalog.publish(CLI, spec(code="res-a", provider=A))
    identity = app.state.identity
    identity.add_user(
        CLI, "target", org=A, roles=frozenset({Role.APP_DEVELOPER}), password="Bridge-pass-123"
    )
    identity.add_user(CLI, "operator", org=None, roles=frozenset({Role.PLATFORM_ADMIN}),
                      password="Bridge-pass-123")  # fmt: skip
    org_roles = frozenset(r for r in Role if r is not Role.PLATFORM_ADMIN)
    headers = {
        "anonymous": {},
        "platform operator": {
            "Authorization": f"Bearer {registry.create_operator_token('fuzz-platform')}"
        },
        "organization": {
            "Authorization": "Bearer "
            + registry.create_operator_token("fuzz-org", org=A, roles=org_roles)
        },
    }
    applicant = registry.create_operator_token("fuzz-b", org=B, roles=org_roles)
    with TestClient(app, base_url=BASE) as client:
        r = client.post(
            "/api/v1/requests",
            json={
                "provider": A,
                "resource": "res-a",
                "purposes": ["licensing"],
                "purpose_text": "行政审批核查",
                "legal_basis": "《行政许可法》第三十一条",
            },
            headers={"Authorization": f"Bearer {applicant}"},
        )
        assert r.status_code == 201, r.text
        request_id = r.json()["id"]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        session = identity.create_session(identity.user_id("operator"), ("pwd", "otp"), "fuzz")
        yield Hub(
            app,
            schema,
            headers,
            known={
                "org": A,
                "code": "res-a",
                "request_id": request_id,
                "username": "target",
                "identifier": "DE0001",
                "serial": "a-node",
                "subscriber": "a-node",
            },
            session=session,
        )


def _known(hub: Hub) -> Callable[[Any], dict[str, Any]]:
    def fixed(operation: Any) -> dict[str, Any]:
        names = {p.name for p in operation.path_parameters}
        return {"path_parameters": {n: v for n, v in hub.known.items() if n in names}}

    return fixed


CALLERS = ["anonymous", "platform operator", "organization"]


@pytest.mark.parametrize("caller", CALLERS)
def test_the_hub_answers_every_case_as_its_document_says(hub: Hub, caller: str) -> None:
    examples = examples_per_operation(1, 100)

    def call(case: Any) -> None:
        case.call_and_validate(headers=hub.headers[caller], checks=CHECKS)

    if hub.fuzzer is None:
        hub.fuzzer = Fuzzer(hub.schema, _known(hub))
    run = hub.fuzzer.run(call, examples=examples)
    record("fuzz", f"hub, {caller}: operations", run.operations)
    record("fuzz", f"hub, {caller}: cases run", run.cases, "cases")
    record(
        "fuzz", f"hub, {caller}: failures", len(run.failures), target="0",
        ok=not run.failures,
    )  # fmt: skip
    # The document lists the registry, catalog, agreements, identity, ledger, events ...
    assert run.operations >= 80
    assert run.cases >= run.operations * examples
    assert not run.failures, report(run)


# What this fuzzing found and what was fixed, each with the regression test that keeps it
# fixed (RELIABILITY.md reports them).
DEFECTS_FIXED = (
    (
        "every error answer (401, 403, 404, 409 ...) undeclared; 422 declared with FastAPI's "
        "body, not the problem the hub sends",
        "tests/hub/test_openapi.py::test_every_operation_declares_its_errors_as_problems",
    ),
    (
        "500 on an approval's time window with an offset (TypeError comparing times)",
        "tests/agreements/test_document.py::test_window_times_with_an_offset_are_refused",
    ),
    (
        "time window times declared as RFC 3339 full-time (offset required), refused by the hub",
        "tests/hub/test_openapi.py::test_time_window_times_are_declared_without_an_offset",
    ),
    (
        "500 on a catalog search with a NUL in its text (FTS5: unterminated string)",
        "tests/catalog/test_search.py::test_query_syntax_is_plain_text",
    ),
    (
        "500 on a catalog resource's ?version= beyond SQLite's integers (OverflowError)",
        "tests/catalog/test_api.py::"
        "test_a_version_beyond_any_stored_integer_is_a_problem_not_a_crash",
    ),
    (
        "500 on /oauth2/authorize with a response_type OAuth's error text may not quote",
        "tests/identity/test_oidc.py::"
        "test_parameters_with_characters_oauth_forbids_are_refused_not_a_crash",
    ),
    (
        "202 of the first administrator's MFA reset undeclared",
        "tests/hub/test_openapi.py::test_the_second_administrators_mfa_reset_answer_is_declared",
    ),
)


def test_the_defects_fuzzing_found_have_their_regression_tests() -> None:
    import importlib

    for _what, test in DEFECTS_FIXED:
        path, name = test.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), f"{test} is gone"
    record(
        "fuzz", "hub: defects found by fuzzing, fixed with a regression test",
        len(DEFECTS_FIXED), note="; ".join(what for what, _ in DEFECTS_FIXED),
    )  # fmt: skip


def test_the_hub_document_declares_every_error_as_a_problem(hub: Hub) -> None:
    doc = hub.schema.raw_schema
    assert "Problem" in doc["components"]["schemas"]
    undeclared = [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in ("get", "put", "post", "delete", "patch")
        and not {"4XX", "5XX"} <= set(operation["responses"])
    ]
    assert not undeclared
    # FastAPI's own 422 shape, which the hub never sends, is gone.
    assert "HTTPValidationError" not in str(doc)


# --- the pages and protocol endpoints outside the document: no 5xx ------------------------------


def _unlisted_routes(hub: Hub) -> list[tuple[str, str]]:
    # The route enumeration of the access table (included routers too).
    from tests.hub.test_rbac_matrix import _routes

    listed = {(m.upper(), p) for p, item in hub.schema.raw_schema["paths"].items() for m in item}
    return sorted(
        (method, path)
        for method, path in set(_routes(hub.app.routes))
        if method in ("GET", "POST") and (method, path) not in listed
    )


segments = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), min_size=1,
    max_size=20,
)  # fmt: skip
queries = st.dictionaries(
    st.sampled_from(["next", "q", "page", "lang", "box", "status", "client_id", "state", "code",
                     "redirect_uri", "response_type", "scope", "org"]),
    st.text(max_size=30),
    max_size=4,
)  # fmt: skip


def test_the_console_and_sign_on_pages_never_fail_with_a_server_error(hub: Hub) -> None:
    routes = _unlisted_routes(hub)
    assert any(p.startswith("/console/") for _, p in routes)
    cookie, csrf = hub.session
    failures: list[str] = []
    counted = [0]

    @settings(
        max_examples=PROFILE.pick(40, 3000),
        derandomize=not PROFILE.full,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        route=st.sampled_from(routes),
        values=st.lists(segments, min_size=4, max_size=4),
        query=queries,
        signed_in=st.booleans(),
        form=st.dictionaries(st.sampled_from(["username", "password", "code", "reason",
                                              "lang", "name", "roles"]), st.text(max_size=30)),
    )  # fmt: skip
    def one(
        route: tuple[str, str], values: list[str], query: dict[str, str], signed_in: bool,
        form: dict[str, str],
    ) -> None:  # fmt: skip
        counted[0] += 1
        method, template = route
        names = iter(values)
        path = re.sub(r"\{[^}]+\}", lambda _m: quote(next(names), safe=""), template)
        headers = {"Cookie": f"qiao_session={cookie}", "X-CSRF-Token": csrf} if signed_in else {}
        if method == "POST" and signed_in:
            form = {**form, "csrf_token": csrf}
        client.cookies.clear()
        r = client.request(
            method, path, params=query, headers=headers, data=form if method == "POST" else None
        )
        if r.status_code >= 500:
            failures.append(f"{method} {path} {query} signed_in={signed_in}: {r.status_code}")

    client = TestClient(hub.app, base_url=BASE, follow_redirects=False)
    one()
    record("fuzz", "hub console and sign-on pages: cases run", counted[0], "cases")
    record("fuzz", "hub console and sign-on pages: 5xx", len(failures), target="0",
           ok=not failures)  # fmt: skip
    assert not failures, "\n".join(failures[:20])
