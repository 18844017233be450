"""Schemathesis against a live node, over HTTP, with the node's own OpenAPI document
(qiao/node/openapi.py; issue 9, "fuzz").

A small city on SQLite: the hub and two real node processes, public security (the provider,
with the demo's backend and an echo backend) and transport (the consumer). The fuzzer calls
the transport node as its app ``traffic-enforcement``, with the app's valid API key, so the
cases get past authentication; half the positive cases also name the app's own client id, a
purpose its agreements allow, and public security's resources and streams, so they reach
the agreements, the provider's node and its backend. Each answer must be:

- no server error (5xx): in a healthy city every node and backend is up, so even 502, 503
  and 504 mean a node failed where it should have refused;
- a status, content type and body the document declares;
- for every refusal a node makes itself, ``application/problem+json`` with a ``type``. Two
  kinds of answer are not problems by their protocol: a provider backend's own error,
  relayed as it sent it with the exchange's ``X-Qiao-Request-Hash`` (docs/exchange-protocol.md),
  and the witness's answers, plain text by c2sp.org/tlog-witness.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from qiao.demo.backends import public_security
from qiao.demo.city import Deployment
from qiao.demo.people import build_city
from reliability.figures import record
from reliability.test_fuzz_hub import CHECKS, Fuzzer, examples_per_operation, report
from tests.integration.conftest import LAB_PURPOSE, LoopThread, _agree, lab_backend

CONSUMER, PROVIDER = "transport", "police"
APP = "traffic-enforcement"
# Public security's resources the fuzzer names, each with the purpose transport's agreement
# on it allows (qiao.demo.sharing; the echo agreement: tests/integration/conftest.py).
PURPOSES = {
    "echo": LAB_PURPOSE,
    "vehicle-violations": "traffic-enforcement",
    "traffic-accidents": "traffic-management",  # also the stream transport receives
}
RESOURCES = tuple(PURPOSES)


@dataclass
class LiveNode:
    url: str
    api_key: str
    client: str
    provider: str


class _City(Deployment):
    """The demo deployment without its people: nobody signs in to a node, and their
    password hashes (Argon2id, at the hub's full cost) are most of a demo hub's start."""

    def seed_users(self, settings: Any, reg: Any) -> Path:
        return self.data_dir / "users.json"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz-node")
    dep = _City(data_dir=data_dir, witnesses=(PROVIDER, CONSUMER))
    loop = LoopThread()
    lab = loop.serve(lab_backend())
    dep.backend_urls = {PROVIDER: loop.serve(public_security(build_city()))}
    dep.extra_services = {PROVIDER: {"echo": {"url": f"{lab}/echo", "timeout_seconds": 5.0}}}
    # Small enough that the fuzzer's large bodies meet the limit too (413, a problem).
    dep.node_settings = {"max_body_bytes": 256 * 1024}
    try:
        reg = dep.start_hub()
        reg.add_resource(dep.codes[PROVIDER], "echo")
        _agree(reg, dep.codes, CONSUMER, "echo", apps=(APP,))
        dep.start_nodes(reg, only={PROVIDER, CONSUMER})
        n = dep.nodes[CONSUMER]
        yield LiveNode(n.url, n.api_keys[APP], dep.client(CONSUMER, APP), dep.codes[PROVIDER])
    finally:
        dep.stop()
        loop.close()


def _relayed_or_witness(response: Any, case: Any) -> bool:
    if case.operation.path.startswith("/witness/"):
        return True  # c2sp.org/tlog-witness answers in text/plain
    return case.operation.path.startswith("/r1/") and "x-qiao-request-hash" in {
        k.lower() for k in response.headers
    }


def node_problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """The hub's check, less the answers that are not the node's own refusals."""
    if response.status_code >= 400 and _relayed_or_witness(response, case):
        return None
    return CHECKS[-1](ctx, response, case)


NODE_CHECKS = [*CHECKS[:-1], node_problem_json_errors]


def test_the_node_answers_every_case_as_its_document_says(node: LiveNode) -> None:
    schema = schemathesis.openapi.from_url(f"{node.url}/openapi.json")
    examples = examples_per_operation(3, 100)
    statuses: dict[int, int] = {}

    def fixed(operation: Any) -> dict[str, Any]:
        names = {p.name for p in operation.path_parameters}
        path = {"provider": node.provider} if "provider" in names else {}
        if operation.path.startswith(("/r1/", "/e1/")):
            # One resource per operation (spread over the three), with its purpose.
            resource = RESOURCES[len(operation.label) % len(RESOURCES)]
            if "resource" in names:
                path["resource"] = resource
            elif "stream" in names and "provider" in names:
                path["stream"] = resource = "traffic-accidents"
            elif "stream" in names:
                path["stream"] = "bike-stations"  # transport's own stream, to publish to
            return {
                "path_parameters": path,
                "headers": {"X-Qiao-Client": node.client, "X-Qiao-Purpose": PURPOSES[resource]},
            }
        return {"path_parameters": path}

    def call(case: Any) -> None:
        # A long poll or an event stream holds its answer up to 30 s (docs/events.md): the
        # fuzzer asks for JSON, and for no wait, so every case answers at once.
        if case.query and "wait" in case.query:
            case.query["wait"] = "0"
        headers = {"Authorization": f"Bearer {node.api_key}", "Accept": "application/json"}
        response = case.call_and_validate(headers=headers, checks=NODE_CHECKS, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    run = Fuzzer(schema, fixed).run(call, examples=examples)
    reached = sum(n for s, n in statuses.items() if s < 300)
    record("fuzz", "node: operations", run.operations)
    record("fuzz", "node: cases run", run.cases, "cases")
    record("fuzz", "node: cases answered 2xx (reached a backend or a stream)", reached, "cases")
    record("fuzz", "node: failures", len(run.failures), target="0", ok=not run.failures)
    assert run.operations >= 14
    assert not run.failures, report(run)
    # The cases got past the node's own refusals into the exchanges and the event streams.
    assert reached > 0, statuses
