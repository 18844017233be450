"""An event stream's life through the running city: when the provider's approver suspends or
revokes an agreement, within 5 seconds the subscriber's pulls are refused, its open
server-sent event stream ends with the problem, and new events are no longer sealed to its
node; resuming undoes it. And a subscriber node that was away gets what was published in the
meantime, in order, when it returns."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from qiao.agreements.service import AgreementService
from qiao.demo.people import generate_accidents
from qiao.demo.sharing import person
from qiao.identity.roles import Role
from tests.integration.conftest import City
from tests.integration.test_agreements import _within

LIMIT_S = 5.0
STREAM = "traffic-accidents"
PURPOSE = "traffic-management"
SUBSCRIBER = ("health", "epidemic-stats")  # subscribed here, so the demo's own stays as is


def _headers(city: City, dept: str, app: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {city.dep.nodes[dept].api_keys[app]}",
        "X-Qiao-Client": city.dep.client(dept, app),
        "X-Qiao-Purpose": PURPOSE,
    }


def _stream_url(city: City, dept: str) -> str:
    return f"{city.dep.nodes[dept].url}/e1/{city.dep.codes['police']}/{STREAM}"


def _publish(city: City, tag: str, count: int = 1) -> dict[str, Any]:
    events = [{**a, "event_id": f"{tag}-{i}"} for i, a in enumerate(generate_accidents(count))]
    r = httpx.post(
        f"{city.dep.nodes['police'].url}/e1/{STREAM}",
        json={"events": events},
        headers=_headers(city, "police", "police-app"),
        timeout=30,
    )
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _sealed_to(answer: dict[str, Any]) -> set[str]:
    """The subscriber nodes the provider's 202 answer names for its first event."""
    return set(answer["events"][0]["offsets"])


def _pull(city: City, dept: str, app: str, **params: Any) -> httpx.Response:
    return httpx.get(
        _stream_url(city, dept), params=params, headers=_headers(city, dept, app), timeout=30
    )


@dataclass
class OpenStream:
    """A server-sent event stream read in a thread, as a browser's EventSource would."""

    url: str
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    ended_at: float | None = None
    opened: threading.Event = field(default_factory=threading.Event)

    def start(self) -> OpenStream:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.opened.wait(10), "the stream did not open"
        return self

    def _run(self) -> None:
        headers = {**self.headers, "Accept": "text/event-stream"}
        timeout = httpx.Timeout(10, read=30)  # keep-alives come every 15 s
        with httpx.stream("GET", self.url, headers=headers, timeout=timeout) as r:
            assert r.status_code == 200, r.read()
            self.opened.set()
            event = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "error":
                        self.error = data
                    else:
                        self.events.append(data)
        self.ended_at = time.monotonic()


def test_suspending_and_revoking_stop_pulls_streams_and_sealing_within_5_s(city: City) -> None:
    dept, app = SUBSCRIBER
    node = f"{dept}-node"
    codes = city.dep.codes
    svc = AgreementService(city.registry)
    made = svc.subscribe(
        person(codes, dept, Role.APP_DEVELOPER), codes["police"], STREAM, purposes=(PURPOSE,)
    )
    approver = person(codes, "police", Role.APPROVER)
    # In force at both nodes: sealed to the subscriber's node, and its app may pull.
    _within(LIMIT_S, lambda: node in _sealed_to(_publish(city, f"on-{city.db}")))
    _within(LIMIT_S, lambda: _pull(city, dept, app, after=0).status_code == 200)
    timings: dict[str, dict[str, float]] = {}

    def stops(change: Callable[[], Any], problem: str) -> dict[str, float]:
        stream = OpenStream(_stream_url(city, dept), _headers(city, dept, app)).start()
        t0 = time.monotonic()
        change()
        took = {
            "pull": _within(
                LIMIT_S,
                lambda: _pull(city, dept, app).json().get("type") == problem,
            ),
            "sealing": _within(
                LIMIT_S, lambda: node not in _sealed_to(_publish(city, f"off-{city.db}"))
            ),
        }
        _within(LIMIT_S, lambda: stream.ended_at is not None)
        assert stream.ended_at is not None
        took["stream"] = stream.ended_at - t0
        assert stream.error is not None and stream.error["type"] == problem, stream.error
        r = _pull(city, dept, app)
        assert r.status_code == 403 and r.headers["content-type"].startswith(
            "application/problem+json"
        )
        return took

    timings["suspended"] = stops(
        lambda: svc.suspend(approver, made.id, "核查订阅用途"),
        "urn:qiao:problem:client:agreement-suspended",
    )
    svc.resume(approver, made.id)
    tag = f"back-{city.db}"
    _within(LIMIT_S, lambda: node in _sealed_to(_publish(city, tag)))
    _within(LIMIT_S, lambda: _pull(city, dept, app, after=0).status_code == 200)
    timings["revoked"] = stops(
        lambda: svc.revoke(approver, made.id, "订阅结束"),
        "urn:qiao:problem:client:agreement-revoked",
    )
    worst = max(t for took in timings.values() for t in took.values())
    assert worst < LIMIT_S, timings
    print(f"\n[{city.db}] seconds from the change at the hub: {timings}")


def test_events_published_while_a_subscriber_was_away_are_delivered_when_it_returns(
    city: City,
) -> None:
    dept, app = "transport", "traffic-enforcement"
    # Its position: up to a marker published now.
    position = _publish(city, f"mark-{city.db}")["events"][0]["offsets"]["transport-node"]
    info = city.dep.nodes[dept]
    info.process.stop()
    try:
        assert not info.process.running
        tag = f"away-{city.db}"
        answer = _publish(city, tag, count=5)
        # Sealed to the node's log at the broker although the node is down.
        assert [e["offsets"]["transport-node"] for e in answer["events"]] == list(
            range(position + 1, position + 6)
        )
    finally:
        info.process.start()
        info.process.wait_healthy(60)
    r = _pull(city, dept, app, after=position, wait=5)
    assert r.status_code == 200, r.text
    got = r.json()["events"]
    assert [e["event_id"] for e in got] == [f"{tag}-{i}" for i in range(5)]
    assert [e["offset"] for e in got] == list(range(position + 1, position + 6))


def test_an_access_token_from_the_hub_reads_the_stream_for_its_user(city: City) -> None:
    from tests.integration.test_sso import token

    _publish(city, f"sso-{city.db}")
    url = _stream_url(city, "transport")
    headers = {"X-Qiao-Purpose": PURPOSE}
    r = httpx.get(
        url, params={"after": 0}, headers={**headers, "Authorization": f"Bearer {token(city)}"}
    )
    assert r.status_code == 200, r.text
    assert any(e["event_id"] == f"sso-{city.db}-0" for e in r.json()["events"])
    for bad, problem in (
        (token(city, scope="openid profile"), "urn:qiao:problem:client:out-of-scope"),
        (token(city, ttl=timedelta(seconds=-120)), "urn:qiao:problem:client:bad-credential"),
    ):
        for accept in ("application/json", "text/event-stream"):
            r = httpx.get(
                url, headers={**headers, "Accept": accept, "Authorization": f"Bearer {bad}"}
            )
            assert r.status_code in (401, 403) and r.json()["type"] == problem, r.text
