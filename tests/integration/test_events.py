"""Event streams through the running city: public security's backend publishes traffic
accidents to its own node; the transport bureau's app pulls them from its node, decrypted
there; the hub's broker holds only sealed envelopes (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select

from qiao.db import make_engine
from qiao.demo.people import generate_accidents
from qiao.events.models import EventLogEntry
from tests.integration.conftest import City


def _publish(city: City, events: list[dict[str, Any]]) -> httpx.Response:
    node = city.dep.nodes["police"]
    return httpx.post(
        f"{node.url}/e1/traffic-accidents",
        json={"events": events},
        headers={
            "Authorization": f"Bearer {node.api_keys['police-app']}",
            "X-Qiao-Client": city.dep.client("police", "police-app"),
        },
        timeout=30,
    )


def _pull(city: City, after: int = 0, **params: Any) -> httpx.Response:
    node = city.dep.nodes["transport"]
    return httpx.get(
        f"{node.url}/e1/{city.dep.codes['police']}/traffic-accidents",
        params={"after": after, "limit": 100, **params},
        headers={
            "Authorization": f"Bearer {node.api_keys['traffic-enforcement']}",
            "X-Qiao-Client": city.dep.client("transport", "traffic-enforcement"),
            "X-Qiao-Purpose": "traffic-management",
        },
        timeout=30,
    )


def test_accidents_flow_from_public_security_to_transport_sealed_in_between(city: City) -> None:
    accidents = generate_accidents(6)
    events = [{**a, "event_id": f"acc-{a['accident_id']}-{city.db}"} for a in accidents]
    r = _publish(city, events)
    assert r.status_code == 202, r.text
    published = r.json()
    assert len(published["events"]) == len(events)

    got = _pull(city, wait=5)
    assert got.status_code == 200, got.text
    delivered = [e for e in got.json()["events"] if e["event_id"].endswith(city.db)]
    assert [e["event"]["accident_id"] for e in delivered] == [a["accident_id"] for a in accidents]
    # The broker (the hub's database) holds sealed envelopes only: no accident's plaintext.
    hub_db = city.dep.hub_database_url or f"sqlite:///{city.dep.data_dir / 'hub' / 'hub.db'}"
    engine = make_engine(hub_db)
    try:
        with engine.connect() as c:
            stored = [row[0] for row in c.execute(select(EventLogEntry.envelope))]
    finally:
        engine.dispose()
    assert stored
    for a in accidents:
        for value in (str(a["accident_id"]), str(a["location"])):
            assert all(value.encode() not in blob for blob in stored), value

    # Acknowledged events are not handed out again by default; a replay from 0 still can.
    last = delivered[-1]["offset"]
    node = city.dep.nodes["transport"]
    ack = httpx.post(
        f"{node.url}/e1/{city.dep.codes['police']}/traffic-accidents/ack",
        json={"offset": last},
        headers={
            "Authorization": f"Bearer {node.api_keys['traffic-enforcement']}",
            "X-Qiao-Client": city.dep.client("transport", "traffic-enforcement"),
            "X-Qiao-Purpose": "traffic-management",
        },
        timeout=30,
    )
    assert ack.status_code in (200, 204), ack.text
    after_ack = httpx.get(
        f"{node.url}/e1/{city.dep.codes['police']}/traffic-accidents",
        headers={
            "Authorization": f"Bearer {node.api_keys['traffic-enforcement']}",
            "X-Qiao-Client": city.dep.client("transport", "traffic-enforcement"),
            "X-Qiao-Purpose": "traffic-management",
        },
        timeout=30,
    )
    assert after_ack.status_code == 200 and after_ack.json()["events"] == []
    assert len(_pull(city, after=0).json()["events"]) >= len(accidents)


def test_an_app_without_an_agreement_pulls_and_acks_nothing(city: City) -> None:
    node = city.dep.nodes["bank"]
    url = f"{node.url}/e1/{city.dep.codes['police']}/traffic-accidents"
    headers = {
        "Authorization": f"Bearer {node.api_keys['credit-check']}",
        "X-Qiao-Client": city.dep.client("bank", "credit-check"),
        "X-Qiao-Purpose": "loan-review",
    }
    for r in (
        httpx.get(url, headers=headers, timeout=30),
        httpx.post(f"{url}/ack", json={"offset": 1}, headers=headers, timeout=30),
    ):
        assert r.status_code == 403 and r.json()["type"] == "urn:qiao:problem:client:no-agreement"


def test_invalid_events_are_refused_whole(city: City) -> None:
    good = generate_accidents(2)
    bad = {**good[1], "severity": "9", "event_id": f"bad-{city.db}"}
    r = _publish(city, [{**good[0], "event_id": f"ok-{city.db}"}, bad])
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "9" not in str(r.json().get("violations"))  # pointers and rules, never values


def test_events_tail_shows_what_the_app_may_see(city: City) -> None:
    from typer.testing import CliRunner

    from qiao.cli import app

    accidents = generate_accidents(3)
    r = _publish(city, [{**a, "event_id": f"tail-{a['accident_id']}-{city.db}"} for a in accidents])
    assert r.status_code == 202, r.text
    node = city.dep.nodes["transport"]
    args = [
        "events",
        "tail",
        city.dep.codes["police"],
        "traffic-accidents",
        "--node",
        node.url,
        "--client",
        city.dep.client("transport", "traffic-enforcement"),
        "--purpose",
        "traffic-management",
        "--from-start",
        "--count",
        "3",
        "--wait",
        "1",
    ]
    env = {"QIAO_API_KEY": node.api_keys["traffic-enforcement"]}
    out = CliRunner().invoke(app, args, env=env)
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all("event" in e and "offset" in e for e in lines)
    # Refused without the right: the bank's app has no agreement on the stream.
    bank = city.dep.nodes["bank"]
    args[args.index(node.url)] = bank.url
    args[args.index(city.dep.client("transport", "traffic-enforcement"))] = city.dep.client(
        "bank", "credit-check"
    )
    out = CliRunner().invoke(app, args, env={"QIAO_API_KEY": bank.api_keys["credit-check"]})
    assert out.exit_code == 1 and "no-agreement" in out.output
