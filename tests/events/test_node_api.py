"""The event routes of the app listener, through aiohttp's test client: the provider's backend
publishes, the consumer's app pulls and acknowledges; refusals are problem+json."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiao import problems, signing
from qiao.db import make_engine, migrate
from qiao.events.delivery import Delivery
from qiao.events.node_api import EventsApi, parse_since
from qiao.events.records import DeliveredRecord, EventRecorder, PublishedRecord
from qiao.exchange.keys import ApiKeyService, HubKeysUnavailable
from qiao.globalconf import KIND
from qiao.identity.access_tokens import AccessToken, TokenRefused
from qiao.node.confcache import ConfigurationCache
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem
from tests.agreements.test_policy import CONSUMER, OTHER, PROVIDER
from tests.agreements.test_policy import published as signed
from tests.events.test_publisher import (
    INSTANCE,
    PURPOSE,
    STREAM,
    Exchange,
    accident,
    accident_agreement,
    conf_document,
    exchange,
)

LIMIT = 64 * 1024
INSPECTOR = f"{INSTANCE}/{CONSUMER}/inspector"


@dataclass
class Recorder(EventRecorder):
    """Keeps what the routes record, in memory."""

    published_calls: list[tuple[str, str, list[PublishedRecord]]] = field(default_factory=list)
    delivered_calls: list[tuple[str, str, list[DeliveredRecord]]] = field(default_factory=list)

    async def published(
        self,
        *,
        client: str,
        stream: str,
        events: Sequence[PublishedRecord],
        started_at: datetime,
    ) -> None:
        self.published_calls.append((client, stream, list(events)))

    async def delivered(
        self,
        *,
        client: str,
        provider_org: str,
        stream: str,
        events: Sequence[DeliveredRecord],
        via: str,
        started_at: datetime,
    ) -> None:
        self.delivered_calls.append((client, via, list(events)))


class FakeTokens:
    """The hub's access tokens as the node's verifier would judge them."""

    def __init__(self) -> None:
        self.answers: dict[str, AccessToken | Exception] = {}

    def issue(self, app: str, *, scope: str = "openid qiao", subject: str = "user:chen") -> str:
        token = f"eyJhbGciOiJSUzI1NiJ9.{len(self.answers)}.sig"
        self.answers[token] = AccessToken(subject, "qc_app", app, scope, 0, {})
        return token

    def refuse(self, error: Exception) -> str:
        token = f"eyJhbGciOiJSUzI1NiJ9.{len(self.answers)}.sig"
        self.answers[token] = error
        return token

    async def verify(self, token: str) -> AccessToken:
        answer = self.answers[token]
        if isinstance(answer, Exception):
            raise answer
        return answer


class ConsumerConfiguration:
    """The consumer node's own configuration, signed here, so a test can change what it
    says about the agreement (revoke, suspend) while the provider's stays as it was."""

    def __init__(self, x: Exchange) -> None:
        self._x = x
        self._signer = signing.generate_signing_key()
        public = signing.public_key_to_text(self._signer.public_key())
        self.cache = ConfigurationCache(
            x.tmp / "consumer-a-conf", public_key=public, instance=INSTANCE, grace_seconds=3600
        )
        self.serial = 0
        self.publish("active")

    def publish(self, state: str) -> None:
        self.serial += 1
        doc = conf_document(
            self._x.identities, [signed(accident_agreement(), state=state, reason="审计")]
        )
        doc["serial"] = self.serial
        self.cache.accept(signing.sign_document(self._signer, doc, kind=KIND))


@dataclass
class Nodes:
    x: Exchange
    provider: TestClient[web.Request, web.Application]
    consumer: TestClient[web.Request, web.Application]
    backend_key: str  # the provider's backend
    inspector_key: str  # the consumer's app under the agreement
    clerk_key: str  # another app of the consumer, not named by the agreement
    recorder: Recorder
    tokens: FakeTokens
    consumer_conf: ConsumerConfiguration


def _bearer(key: str, purpose: str = PURPOSE) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if purpose:
        headers["X-Qiao-Purpose"] = purpose
    return headers


@contextlib.asynccontextmanager
async def nodes(tmp: Path, **sse: float) -> AsyncIterator[Nodes]:
    """The provider's node and consumer-a's app listeners; ``sse``: EventsApi's settings of
    event streams (sse_max_seconds, sse_keepalive_seconds)."""
    async with exchange(tmp) as x, contextlib.AsyncExitStack() as stack:
        clients = {}
        keys = {}
        recorder, tokens = Recorder(), FakeTokens()
        (tmp / "consumer-a-conf").mkdir()
        consumer_conf = ConsumerConfiguration(x)
        for name in ("provider-node", "consumer-a"):
            url = f"sqlite:///{tmp / name / 'node.db'}"
            migrate("node", url)
            engine = make_engine(url)
            stack.callback(engine.dispose)
            keys[name] = ApiKeyService(engine)
            conf = x.confs[name] if name == "provider-node" else consumer_conf.cache
            api = EventsApi(
                conf_cache=conf,
                identity=x.identities[name],
                keys=keys[name],
                publisher=x.publisher,
                delivery=Delivery(conf, x.identities[name], x.broker),
                recorder=recorder,
                max_body_bytes=LIMIT,
                tokens=tokens,
                **sse,
            )
            app = web.Application()
            app.add_routes(api.routes())
            app.on_shutdown.append(api.shutdown)
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients[name] = client
        yield Nodes(
            x,
            clients["provider-node"],
            clients["consumer-a"],
            keys["provider-node"].create(f"{INSTANCE}/{PROVIDER}/backend").secret,
            keys["consumer-a"].create(INSPECTOR).secret,
            keys["consumer-a"].create(f"{INSTANCE}/{CONSUMER}/clerk").secret,
            recorder,
            tokens,
            consumer_conf,
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


# --- replay from a time ----------------------------------------------------------------------
async def test_since_replays_from_a_time_on_pull(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        before = datetime.now(UTC)
        for batch in (["A-1", "A-2"], ["A-3"]):
            resp = await n.provider.post(
                f"/e1/{STREAM}",
                json={"events": [accident(a) for a in batch]},
                headers=_bearer(n.backend_key),
            )
            assert resp.status == 202
            if batch[0] == "A-1":
                between = datetime.now(UTC)
        path = f"/e1/{PROVIDER}/{STREAM}"

        async def since(when: str) -> list[str]:
            resp = await n.consumer.get(
                path, params={"since": when}, headers=_bearer(n.inspector_key)
            )
            assert resp.status == 200, await resp.text()
            return [e["partition_key"] for e in (await resp.json())["events"]]

        assert await since(before.isoformat()) == ["A-1", "A-2", "A-3"]
        assert await since(between.isoformat()) == ["A-3"]
        # The same instant in another offset, and RFC 3339's "Z" in lower case (§5.6 NOTE).
        cst = between.astimezone(timezone(timedelta(hours=8)))
        assert await since(cst.isoformat()) == ["A-3"]
        assert await since(before.strftime("%Y-%m-%dt%H:%M:%S.%fz")) == ["A-1", "A-2", "A-3"]
        assert await since(datetime.now(UTC).isoformat()) == []
        # Replaying never moves the node's position.
        assert await n.x.delivery["consumer-a"].acked(PROVIDER, STREAM) == 0


async def test_bad_since_and_after_are_refused(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        path = f"/e1/{PROVIDER}/{STREAM}"
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        for params in (
            {"since": "2026-11-29T08:00:00"},  # no offset: naive
            {"since": "2026-11-29"},  # a date, not a date-time
            {"since": "20261129T080000Z"},  # ISO 8601 basic format, not RFC 3339
            {"since": "2026-11-29T08:00:00-00:00"},  # unknown local offset (RFC 3339 §4.3)
            {"since": "2026-02-30T08:00:00Z"},  # no such day
            {"since": "yesterday"},
            {"since": future},
            {"since": "2026-11-29T08:00:00Z", "after": "3"},
            {"after": "-1"},
            {"after": "１２"},  # full-width digits are digits to str.isdigit, not offsets
            {"since": "0001-01-01T00:00:00+14:00"},  # before the first instant there is
        ):
            resp = await n.consumer.get(path, params=params, headers=_bearer(n.inspector_key))
            body = await _problem(resp, problems.INVALID_REQUEST)
            assert "since" in body["detail"] or "after" in body["detail"], body
        for params in ({"limit": "²"}, {"wait": "²"}, {"limit": "１０"}):
            resp = await n.consumer.get(path, params=params, headers=_bearer(n.inspector_key))
            await _problem(resp, problems.INVALID_REQUEST)
        # An ack past the end of the log is the app's mistake, not a broken broker.
        resp = await n.consumer.post(
            f"{path}/ack", json={"offset": 99}, headers=_bearer(n.inspector_key)
        )
        await _problem(resp, problems.INVALID_REQUEST)


def test_parse_since_keeps_the_instant_and_fraction() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert parse_since("2026-11-29T16:00:00.123456789+08:00", now) == datetime(
        2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_since("2026-11-29T12:00:00Z", now) == now
    try:
        parse_since("2026-11-29T12:00:01Z", now)
    except Problem as refused:
        assert refused.kind is problems.INVALID_REQUEST
    else:
        raise AssertionError("a time after now was accepted")


# --- access tokens from the hub ------------------------------------------------------------
async def test_access_tokens_from_the_hub_pull_ack_and_publish(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        backend = n.tokens.issue(f"{INSTANCE}/{PROVIDER}/backend")
        resp = await n.provider.post(
            f"/e1/{STREAM}", json=accident("A-1"), headers=_bearer(backend)
        )
        assert resp.status == 202, await resp.text()
        assert n.recorder.published_calls[-1][0] == f"{INSTANCE}/{PROVIDER}/backend"

        path = f"/e1/{PROVIDER}/{STREAM}"
        token = n.tokens.issue(INSPECTOR, subject="user:officer.chen")
        # The token names the app: X-Qiao-Client may be left out, or must agree.
        resp = await n.consumer.get(
            path, params={"after": "0"}, headers={**_bearer(token), "X-Qiao-User": "someone"}
        )
        assert resp.status == 200, await resp.text()
        assert [e["partition_key"] for e in (await resp.json())["events"]] == ["A-1"]
        client, via, records = n.recorder.delivered_calls[-1]
        assert (client, via, [r.offset for r in records]) == (INSPECTOR, "pull", [1])
        resp = await n.consumer.post(f"{path}/ack", json={"offset": 1}, headers=_bearer(token))
        assert resp.status == 200 and (await resp.json()) == {"acked": 1}
        resp = await n.consumer.get(
            path, headers={**_bearer(token), "X-Qiao-Client": f"{INSTANCE}/{CONSUMER}/clerk"}
        )
        await _problem(resp, problems.BAD_CREDENTIAL)


async def test_access_tokens_the_node_must_refuse(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        path = f"/e1/{PROVIDER}/{STREAM}"
        cases = [
            (n.tokens.refuse(TokenRefused("the token expired")), problems.BAD_CREDENTIAL),
            (n.tokens.issue(INSPECTOR, scope="openid profile"), problems.OUT_OF_SCOPE),
            (n.tokens.issue(""), problems.BAD_CREDENTIAL),  # a client bound to no app
            (n.tokens.issue(f"{INSTANCE}/{OTHER}/inspector"), problems.UNKNOWN_CLIENT),
            # The agreement names the inspector, not the clerk.
            (n.tokens.issue(f"{INSTANCE}/{CONSUMER}/clerk"), problems.NO_AGREEMENT),
            (n.tokens.refuse(HubKeysUnavailable("hub down")), problems.HUB_KEYS_UNAVAILABLE),
        ]
        for token, kind in cases:
            for resp in (
                await n.consumer.get(path, headers=_bearer(token)),
                await n.consumer.post(f"{path}/ack", json={"offset": 1}, headers=_bearer(token)),
                await n.consumer.get(
                    path, headers={**_bearer(token), "Accept": "text/event-stream"}
                ),
            ):
                await _problem(resp, kind)
        assert await n.x.delivery["consumer-a"].acked(PROVIDER, STREAM) == 0
        wrong_scope = n.tokens.issue(f"{INSTANCE}/{PROVIDER}/backend", scope="openid")
        resp = await n.provider.post(
            f"/e1/{STREAM}", json=accident("A-1"), headers=_bearer(wrong_scope)
        )
        await _problem(resp, problems.OUT_OF_SCOPE)
        assert n.x.log_rows() == []
