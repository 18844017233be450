"""The hub's events API for nodes: who may publish, who may read, what a signature covers.

Against a real hub served by uvicorn on SQLite (tests/events/conftest.py ``served_hub``); the
conformance suite runs ``HubBroker`` through the same hub as backend "hub".
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from qiao import pki
from qiao.events import envelope
from qiao.events.broker import Outgoing
from qiao.events.remote import HubBroker, HubError, register_events_key, sign_node_request
from qiao.node.confcache import NodeCredentials
from qiao.registry.models import Node
from tests.events.conftest import ServedHub, served_hub

STREAM_PATH = "/api/v1/events/logs/GOV-PS/traffic-accidents"
LOG = f"{STREAM_PATH}/transport-node"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[ServedHub]:
    with served_hub(tmp_path) as served:
        yield served


def event(i: int, size: int = 32) -> dict[str, str]:
    return {
        "event_id": f"e-{i}",
        "partition_key": f"accident-{i}",
        "envelope": base64.b64encode(bytes(size)).decode(),
        "published_at": datetime.now(UTC).isoformat(),
    }


def send(
    hub: ServedHub,
    credentials: NodeCredentials | None,
    method: str,
    target: str,
    body: Any = None,
    *,
    signed_target: str | None = None,
    signed_body: bytes | None = None,
) -> httpx.Response:
    """One request as a node would send it; ``signed_*`` sign something else than is sent."""
    data = b"" if body is None else json.dumps(body).encode()
    headers: dict[str, str] = {}
    if credentials is not None:
        headers = sign_node_request(
            credentials,
            method,
            signed_target or target,
            data if signed_body is None else signed_body,
        )
    return httpx.request(method, hub.url + target, content=data, headers=headers, timeout=30)


def problem(response: httpx.Response, status: int, name: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:qiao:problem:{name}"
    return str(body["detail"])


def test_a_signed_publish_and_fetch_round_trip(hub: ServedHub) -> None:
    published = send(hub, hub.publisher, "POST", LOG, {"events": [event(1), event(2)]})
    assert published.status_code == 200, published.text
    assert published.json() == {"offsets": [1, 2]}
    reader = hub.subscribers["transport-node"]
    got = send(hub, reader, "GET", f"{LOG}?after=0&limit=10&wait=0")
    assert got.status_code == 200, got.text
    events = got.json()["events"]
    assert [(e["offset"], e["event_id"]) for e in events] == [(1, "e-1"), (2, "e-2")]
    assert base64.b64decode(events[0]["envelope"]) == bytes(32)
    assert send(hub, reader, "POST", f"{LOG}/ack", {"offset": 2}).json() == {"acked": 2}
    assert send(hub, reader, "GET", f"{LOG}/acked").json() == {"acked": 2}
    later = "2099-01-01T00:00:00Z"
    assert send(hub, reader, "GET", f"{LOG}/offset-at?when={later}").json() == {"offset": 2}


def test_an_unsigned_request_is_refused(hub: ServedHub) -> None:
    detail = problem(send(hub, None, "GET", f"{LOG}/acked"), 401, "hub:unauthorized")
    assert "X-Qiao-Node" in detail
    problem(send(hub, None, "POST", LOG, {"events": [event(1)]}), 401, "hub:unauthorized")


def test_a_signature_by_another_key_is_refused(hub: ServedHub) -> None:
    # The publisher's name and certificate, another key: what a thief without the key has.
    forged = replace(hub.publisher, key=pki.generate_private_key())
    response = send(hub, forged, "POST", LOG, {"events": [event(1)]})
    assert "does not verify" in problem(response, 401, "hub:unauthorized")


def test_a_captured_request_cannot_carry_another_body_or_path(hub: ServedHub) -> None:
    original = json.dumps({"events": [event(1)]}).encode()
    # Same signature headers, another body: refused.
    response = send(hub, hub.publisher, "POST", LOG, {"events": [event(2)]}, signed_body=original)
    assert "does not verify" in problem(response, 401, "hub:unauthorized")
    # Another log (path) than was signed: refused.
    other = f"{STREAM_PATH}/district-node"
    response = send(hub, hub.publisher, "POST", other, {"events": [event(1)]}, signed_target=LOG)
    problem(response, 401, "hub:unauthorized")
    # Another query than was signed: refused.
    reader = hub.subscribers["transport-node"]
    response = send(hub, reader, "GET", f"{LOG}?after=0", signed_target=f"{LOG}?after=5")
    problem(response, 401, "hub:unauthorized")
    assert send(hub, reader, "GET", f"{LOG}?after=0").json() == {"events": []}


def test_a_signed_time_outside_300_seconds_is_refused(hub: ServedHub) -> None:
    # Signed times are whole seconds (truncated), so a clock 301 s ahead can sign a time
    # only 300.x s ahead of the hub's: step well past the bound on both sides.
    for skew in (-302, 302):

        def skewed(by: float = skew) -> float:
            return time.time() + by

        reader = replace(hub.subscribers["transport-node"], clock=skewed)
        detail = problem(send(hub, reader, "GET", f"{LOG}/acked"), 401, "hub:unauthorized")
        assert "300 s" in detail
    reader = replace(hub.subscribers["transport-node"], clock=lambda: time.time() - 250)
    assert send(hub, reader, "GET", f"{LOG}/acked").json() == {"acked": 0}


def test_only_nodes_of_the_provider_organization_publish(hub: ServedHub) -> None:
    foreign = hub.subscribers["district-node"]
    response = send(hub, foreign, "POST", LOG, {"events": [event(1)]})
    assert "GOV-PS" in problem(response, 403, "hub:forbidden")
    # Nothing of it reached the log.
    reader = hub.subscribers["transport-node"]
    assert send(hub, reader, "GET", f"{LOG}?after=0").json() == {"events": []}


def test_only_the_subscriber_reads_its_log(hub: ServedHub) -> None:
    assert send(hub, hub.publisher, "POST", LOG, {"events": [event(1)]}).status_code == 200
    for intruder in (hub.subscribers["district-node"], hub.publisher):
        problem(send(hub, intruder, "GET", f"{LOG}?after=0"), 403, "hub:forbidden")
        problem(send(hub, intruder, "POST", f"{LOG}/ack", {"offset": 1}), 403, "hub:forbidden")
        problem(send(hub, intruder, "GET", f"{LOG}/acked"), 403, "hub:forbidden")
        when = "2099-01-01T00:00:00Z"
        response = send(hub, intruder, "GET", f"{LOG}/offset-at?when={when}")
        problem(response, 403, "hub:forbidden")
    reader = hub.subscribers["transport-node"]
    assert send(hub, reader, "GET", f"{LOG}/acked").json() == {"acked": 0}


def test_oversized_batches_are_refused(hub: ServedHub) -> None:
    many = {"events": [event(i, size=1) for i in range(1001)]}
    detail = problem(send(hub, hub.publisher, "POST", LOG, many), 422, "hub:validation")
    assert "1000" in detail
    # Over 4 MiB in all, though each envelope is within the broker's limit.
    big = {"events": [event(i, size=900_000) for i in range(5)]}
    problem(send(hub, hub.publisher, "POST", LOG, big), 413, "client:body-too-large")
    reader = hub.subscribers["transport-node"]
    assert send(hub, reader, "GET", f"{LOG}?after=0").json() == {"events": []}
    # Limits on reading too.
    problem(send(hub, reader, "GET", f"{LOG}?limit=1001"), 422, "hub:validation")
    problem(send(hub, reader, "GET", f"{LOG}?wait=26"), 422, "hub:validation")


def test_bad_names_and_events_are_refused(hub: ServedHub) -> None:
    bad_subscriber = f"{STREAM_PATH}/node.one"
    detail = problem(
        send(hub, hub.publisher, "POST", bad_subscriber, {"events": [event(1)]}),
        422,
        "hub:validation",
    )
    assert "subscriber" in detail
    bad_stream = "/api/v1/events/logs/GOV-PS/Traffic/transport-node"
    response = send(hub, hub.publisher, "POST", bad_stream, {"events": [event(1)]})
    assert "stream" in problem(response, 422, "hub:validation")
    bad_event = {**event(1), "event_id": "has space"}
    response = send(hub, hub.publisher, "POST", LOG, {"events": [bad_event]})
    assert "event id" in problem(response, 422, "hub:validation")
    not_base64 = {**event(1), "envelope": "***"}
    response = send(hub, hub.publisher, "POST", LOG, {"events": [not_base64]})
    assert "base64" in problem(response, 422, "hub:validation")
    reader = hub.subscribers["transport-node"]
    response = send(hub, reader, "POST", f"{LOG}/ack", {"offset": 3})
    assert "never published" in problem(response, 422, "hub:validation")


async def test_hub_broker_splits_large_batches_and_raises_refusals(hub: ServedHub) -> None:
    publisher = HubBroker(hub.url, hub.publisher)
    reader = HubBroker(hub.url, hub.subscribers["transport-node"])
    try:
        now = datetime.now(UTC)
        events = [Outgoing(f"e-{i}", "k", b"sealed", now) for i in range(1500)]
        stream = "GOV-PS/traffic-accidents"
        assert await publisher.publish(stream, "transport-node", events) == list(range(1, 1501))
        got = await reader.fetch(stream, "transport-node", after=1000, limit=5000)
        assert [e.offset for e in got] == list(range(1001, 1501))
        with pytest.raises(ValueError, match="never published"):
            await reader.ack(stream, "transport-node", 1501)
        with pytest.raises(HubError, match="403 urn:qiao:problem:hub:forbidden"):
            await publisher.fetch(stream, "transport-node", after=0, limit=1)
        with pytest.raises(NotImplementedError, match="retention"):
            await reader.trim(stream, before=now)
    finally:
        await publisher.close()
        await reader.close()


async def test_a_node_registers_its_events_key(hub: ServedHub) -> None:
    credentials = hub.subscribers["district-node"]
    key_text = envelope.event_key_to_text(envelope.generate_event_key().public_key())
    serial = hub.registry.serial()
    await register_events_key(hub.url, credentials, key_text)
    with Session(hub.registry.engine) as s:
        stored = s.scalar(select(Node.events_key).where(Node.name == "district-node"))
        other = s.scalar(select(Node.events_key).where(Node.name == "transport-node"))
    assert stored == key_text
    assert other != key_text
    assert hub.registry.serial() == serial + 1  # the configuration carries it from now on
    with pytest.raises(ValueError, match="events key"):
        await register_events_key(hub.url, credentials, "not-a-key")
    unsigned = httpx.post(f"{hub.url}/api/v1/nodes/events-key", json={"events_key": key_text})
    problem(unsigned, 401, "hub:unauthorized")


def test_the_routes_are_documented(hub: ServedHub) -> None:
    spec = httpx.get(f"{hub.url}/openapi.json").json()
    path = "/api/v1/events/logs/{org}/{code}/{subscriber}"
    assert spec["paths"][path]["post"]["summary"].startswith("Publish")
    assert "requestBody" in spec["paths"][path]["post"]
    assert spec["paths"][path]["get"]["summary"]
    for action in ("ack", "acked", "offset-at"):
        assert any(m.get("summary") for m in spec["paths"][f"{path}/{action}"].values())
    assert spec["paths"]["/api/v1/nodes/events-key"]["post"]["summary"]
