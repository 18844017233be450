"""The event routes of the app listener, through aiohttp's test client: the provider's backend
publishes, the consumer's app pulls and acknowledges; refusals are problem+json."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiao import problems
from qiao.db import make_engine, migrate
from qiao.events.node_api import EventsApi
from qiao.events.records import EventRecorder
from qiao.exchange.keys import ApiKeyService
from qiao.problems import PROBLEM_CONTENT_TYPE
from tests.agreements.test_policy import CONSUMER, PROVIDER
from tests.events.test_publisher import (
    INSTANCE,
    PURPOSE,
    STREAM,
    Exchange,
    accident,
    exchange,
)

LIMIT = 64 * 1024


@dataclass
class Nodes:
    x: Exchange
    provider: TestClient[web.Request, web.Application]
    consumer: TestClient[web.Request, web.Application]
    backend_key: str  # the provider's backend
    inspector_key: str  # the consumer's app under the agreement
    clerk_key: str  # another app of the consumer, not named by the agreement


def _bearer(key: str, purpose: str = PURPOSE) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if purpose:
        headers["X-Qiao-Purpose"] = purpose
    return headers


@contextlib.asynccontextmanager
async def nodes(tmp: Path) -> AsyncIterator[Nodes]:
    async with exchange(tmp) as x, contextlib.AsyncExitStack() as stack:
        clients = {}
        keys = {}
        for name in ("provider-node", "consumer-a"):
            url = f"sqlite:///{tmp / name / 'node.db'}"
            migrate("node", url)
            engine = make_engine(url)
            stack.callback(engine.dispose)
            keys[name] = ApiKeyService(engine)
            api = EventsApi(
                conf_cache=x.confs[name],
                identity=x.identities[name],
                keys=keys[name],
                publisher=x.publisher,
                delivery=x.delivery[name],
                recorder=EventRecorder(),
                max_body_bytes=LIMIT,
            )
            app = web.Application()
            app.add_routes(api.routes())
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients[name] = client
        yield Nodes(
            x,
            clients["provider-node"],
            clients["consumer-a"],
            keys["provider-node"].create(f"{INSTANCE}/{PROVIDER}/backend").secret,
            keys["consumer-a"].create(f"{INSTANCE}/{CONSUMER}/inspector").secret,
            keys["consumer-a"].create(f"{INSTANCE}/{CONSUMER}/clerk").secret,
        )


async def _problem(resp: Any, kind: problems.ProblemType) -> dict[str, Any]:
    assert resp.status == kind.status, await resp.text()
    assert resp.content_type == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["type"] == kind.uri, body
    return body


async def test_publish_pull_and_ack_through_the_nodes(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        resp = await n.provider.post(
            f"/e1/{STREAM}",
            json={"events": [accident("A-1", 1), accident("A-2", 2), accident("A-1", 3)]},
            headers=_bearer(n.backend_key),
        )
        assert resp.status == 202, await resp.text()
        published = (await resp.json())["events"]
        assert [e["offsets"] for e in published] == [
            {"consumer-a": i, "consumer-b": i} for i in (1, 2, 3)
        ]
        resp = await n.provider.post(
            f"/e1/{STREAM}", json=accident("A-3", 4), headers=_bearer(n.backend_key)
        )
        assert resp.status == 202
        assert (await resp.json())["events"][0]["offsets"]["consumer-a"] == 4

        path = f"/e1/{PROVIDER}/{STREAM}"
        resp = await n.consumer.get(path, params={"limit": "3"}, headers=_bearer(n.inspector_key))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["next"] == 3
        assert [(e["partition_key"], e["event"]["severity"]) for e in body["events"]] == [
            ("A-1", 1),
            ("A-2", 2),
            ("A-1", 3),
        ]
        assert [e["event_id"] for e in body["events"]] == [e["event_id"] for e in published]
        assert all(e["event"]["plate"] == "闽A****5" for e in body["events"])
        assert all("driver_mobile" not in e["event"] for e in body["events"])

        # Acknowledged: a pull without "after" starts after the node's position.
        resp = await n.consumer.post(
            f"{path}/ack", json={"offset": 3}, headers=_bearer(n.inspector_key)
        )
        assert resp.status == 200 and (await resp.json()) == {"acked": 3}
        resp = await n.consumer.get(path, headers=_bearer(n.inspector_key))
        body = await resp.json()
        assert [e["offset"] for e in body["events"]] == [4] and body["next"] == 4
        resp = await n.consumer.get(path, params={"after": "4"}, headers=_bearer(n.inspector_key))
        assert (await resp.json()) == {"events": [], "next": 4}


async def test_an_invalid_event_is_refused_with_422_and_nothing_is_published(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path) as n:
        resp = await n.provider.post(
            f"/e1/{STREAM}",
            json={"events": [accident("A-1"), accident("A-2", driver_mobile="12")]},
            headers=_bearer(n.backend_key),
        )
        body = await _problem(resp, problems.INVALID_REQUEST)
        assert {"pointer": "/1/driver_mobile", "keyword": "pattern"} in body["violations"]
        assert '"12"' not in await resp.text()
        assert n.x.log_rows() == []
        for bad in (b"[1, 2]", b"not json", b'{"events": []}', b'{"events": 3}'):
            resp = await n.provider.post(f"/e1/{STREAM}", data=bad, headers=_bearer(n.backend_key))
            await _problem(resp, problems.INVALID_REQUEST)
        resp = await n.provider.post(
            f"/e1/{STREAM}", data=b" " * (LIMIT + 1), headers=_bearer(n.backend_key)
        )
        await _problem(resp, problems.BODY_TOO_LARGE)
        assert n.x.log_rows() == []


async def test_credentials_are_checked_on_every_route(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        event = accident("A-1")
        resp = await n.provider.post(f"/e1/{STREAM}", json=event)
        await _problem(resp, problems.MISSING_CREDENTIAL)
        resp = await n.provider.post(f"/e1/{STREAM}", json=event, headers=_bearer("qk_x_y"))
        await _problem(resp, problems.BAD_CREDENTIAL)
        # A key of another node's database is unknown here.
        resp = await n.provider.post(f"/e1/{STREAM}", json=event, headers=_bearer(n.inspector_key))
        await _problem(resp, problems.BAD_CREDENTIAL)
        resp = await n.consumer.get(f"/e1/{PROVIDER}/{STREAM}")
        await _problem(resp, problems.MISSING_CREDENTIAL)
        resp = await n.consumer.post(f"/e1/{PROVIDER}/{STREAM}/ack", json={"offset": 1})
        await _problem(resp, problems.MISSING_CREDENTIAL)
        assert n.x.log_rows() == []


async def test_pulls_need_an_agreement_for_the_app_and_its_purpose(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        resp = await n.provider.post(
            f"/e1/{STREAM}", json=accident("A-1"), headers=_bearer(n.backend_key)
        )
        assert resp.status == 202
        path = f"/e1/{PROVIDER}/{STREAM}"
        resp = await n.consumer.get(path, headers=_bearer(n.clerk_key))
        await _problem(resp, problems.NO_AGREEMENT)
        resp = await n.consumer.get(path, headers=_bearer(n.inspector_key, purpose=""))
        await _problem(resp, problems.PURPOSE_NOT_ALLOWED)
        resp = await n.consumer.get(path, headers=_bearer(n.inspector_key, purpose="audit"))
        await _problem(resp, problems.PURPOSE_NOT_ALLOWED)
        resp = await n.consumer.get(path, params={"limit": "0"}, headers=_bearer(n.inspector_key))
        await _problem(resp, problems.INVALID_REQUEST)
        resp = await n.consumer.post(
            f"{path}/ack", json={"offset": -1}, headers=_bearer(n.inspector_key)
        )
        await _problem(resp, problems.INVALID_REQUEST)
        # Nothing was acknowledged by the refused calls.
        assert await n.x.delivery["consumer-a"].acked(PROVIDER, STREAM) == 0
        resp = await n.consumer.get(path, headers=_bearer(n.inspector_key))
        assert [e["offset"] for e in (await resp.json())["events"]] == [1]
