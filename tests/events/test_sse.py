"""Server-sent events on the consumer node's app listener (WHATWG HTML §9.2): events as they
arrive, resumption after ``Last-Event-ID``, the end of a stream when the agreement stops
admitting the app, keep-alive comments and the bound on a stream's length."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientResponse

from qiao import problems
from qiao.db import make_engine
from qiao.events.broker import Outgoing
from qiao.events.node_api import SSE_RETRY_MS, sse_message
from qiao.events.publisher import stream_name
from qiao.exchange.keys import ApiKeyService
from tests.agreements.test_policy import PROVIDER
from tests.events.test_node_api import INSPECTOR, Nodes, _bearer, _problem, nodes
from tests.events.test_publisher import STREAM, accident

PATH = f"/e1/{PROVIDER}/{STREAM}"
SSE = {"Accept": "text/event-stream"}


@dataclass
class Message:
    """One dispatched message, or one that only set the last event ID (``event`` "")."""

    id: str | None = None
    event: str = ""
    data: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads("\n".join(self.data))


@dataclass
class Stream:
    """What a client read of an event stream (parsed as §9.2.6 says, for what we send)."""

    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    ended: bool = False

    def events(self) -> list[Message]:
        return [m for m in self.messages if m.event == "event"]


async def read(
    resp: ClientResponse, stream: Stream, *, until: Any = None, timeout: float = 10.0
) -> Stream:
    """Read lines until ``until(stream)`` holds or the server ends the stream; fails the test
    when neither happens within ``timeout`` seconds."""
    pending = Message()
    deadline = time.monotonic() + timeout
    while until is None or not until(stream):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"stream not done within {timeout} s: {stream}")
        raw = await asyncio.wait_for(resp.content.readline(), left)
        if not raw:
            stream.ended = True
            return stream
        line = raw.decode().rstrip("\n")
        if line == "":
            if pending.data or pending.id is not None:
                stream.messages.append(pending)
            pending = Message()
        elif line.startswith(":"):
            stream.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                pending.id = value
            elif name == "event":
                pending.event = value
            elif name == "data":
                pending.data.append(value)
            elif name == "retry":
                stream.retry.append(int(value))
    return stream


async def publish(n: Nodes, *ids: str) -> None:
    resp = await n.provider.post(
        f"/e1/{STREAM}",
        json={"events": [accident(i) for i in ids]},
        headers=_bearer(n.backend_key),
    )
    assert resp.status == 202, await resp.text()


async def test_events_stream_as_they_arrive_and_resume_after_the_last_event_id(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path) as n:
        await publish(n, "A-1", "A-2")
        resp = await n.consumer.get(
            PATH, params={"after": "0"}, headers={**_bearer(n.inspector_key), **SSE}
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-store"
        s = await read(resp, Stream(), until=lambda s: len(s.events()) == 2)
        assert s.retry == [SSE_RETRY_MS]
        # Published while the stream is open: pushed without asking.
        await publish(n, "A-3")
        s = await read(resp, s, until=lambda s: len(s.events()) == 3)
        resp.close()
        assert [m.id for m in s.events()] == ["1", "2", "3"]
        # The data is what a pull returns for the same events.
        pulled = await n.consumer.get(PATH, params={"after": "0"}, headers=_bearer(n.inspector_key))
        assert [m.json() for m in s.events()] == (await pulled.json())["events"]
        sse = [c for c in n.recorder.delivered_calls if c[1] == "sse"]
        assert [r.offset for c in sse for r in c[2]] == [1, 2, 3]
        assert {c[0] for c in sse} == {INSPECTOR}

        # A reconnecting EventSource sends the last id it saw; the URL's "after" is older.
        await publish(n, "A-4")
        resp = await n.consumer.get(
            PATH,
            params={"after": "0"},
            headers={**_bearer(n.inspector_key), **SSE, "Last-Event-ID": "3"},
        )
        s = await read(resp, Stream(), until=lambda s: len(s.events()) == 1)
        resp.close()
        assert s.events()[0].id == "4" and s.events()[0].json()["partition_key"] == "A-4"
        # Streaming never acknowledges.
        assert await n.x.delivery["consumer-a"].acked(PROVIDER, STREAM) == 0


async def test_a_revoked_agreement_ends_the_open_stream_with_its_problem(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path) as n:
        await publish(n, "A-1")
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        s = await read(resp, Stream(), until=lambda s: len(s.events()) == 1)
        t0 = time.monotonic()
        n.consumer_conf.publish("revoked")
        s = await read(resp, s, timeout=5.0)
        took = time.monotonic() - t0
        assert s.ended and took < 2.5, took  # re-decided at least every second
        last = s.messages[-1]
        assert last.event == "error"
        assert last.json()["type"] == problems.AGREEMENT_REVOKED.uri
        # And a new stream is refused before it opens.
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        await _problem(resp, problems.AGREEMENT_REVOKED)


async def test_a_revoked_api_key_ends_the_open_stream(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        engine = make_engine(f"sqlite:///{tmp_path / 'consumer-a' / 'node.db'}")
        try:
            keys = ApiKeyService(engine)
            issued = keys.create(INSPECTOR)
            resp = await n.consumer.get(PATH, headers={**_bearer(issued.secret), **SSE})
            await publish(n, "A-1")
            s = await read(resp, Stream(), until=lambda s: len(s.events()) == 1)
            assert keys.revoke(issued.key_id)
            # Checked again every round, as a pull checks it (the node caches keys 5 s).
            s = await read(resp, s, timeout=10.0)
            assert s.ended
            assert s.messages[-1].event == "error"
            assert s.messages[-1].json()["type"] == problems.BAD_CREDENTIAL.uri
        finally:
            engine.dispose()


async def test_a_suspended_agreement_ends_the_stream_and_resuming_lets_it_reconnect(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path) as n:
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        assert resp.status == 200
        n.consumer_conf.publish("suspended")
        s = await read(resp, Stream(), timeout=5.0)
        assert s.ended and s.messages[-1].json()["type"] == problems.AGREEMENT_SUSPENDED.uri
        assert s.events() == []
        n.consumer_conf.publish("active")
        await publish(n, "A-1")
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        s = await read(resp, Stream(), until=lambda s: len(s.events()) == 1)
        resp.close()
        assert s.events()[0].json()["partition_key"] == "A-1"


async def test_quiet_streams_get_keep_alive_comments_and_every_stream_ends(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path, sse_max_seconds=2.0, sse_keepalive_seconds=0.5) as n:
        t0 = time.monotonic()
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        s = await read(resp, Stream(), timeout=6.0)
        took = time.monotonic() - t0
        assert s.ended and 1.9 < took < 4.0, took
        assert "keep-alive" in s.comments
        # An end by the bound is not an error: the client just reconnects.
        assert [m.event for m in s.messages] == []


async def test_offsets_with_nothing_for_the_app_still_move_its_last_event_id(
    tmp_path: Path,
) -> None:
    async with nodes(tmp_path) as n:
        # An envelope that does not open is skipped (never delivered); the stream still
        # moves the client's last event ID past it with an "id" line alone (§9.2.6: it sets
        # the ID and dispatches nothing), so a reconnection does not fetch it again.
        broken = Outgoing("broken-1", "k", b"\x01" + b"\0" * 60, datetime.now(UTC))
        await n.x.broker.publish(stream_name(PROVIDER, STREAM), "consumer-a", [broken])
        resp = await n.consumer.get(PATH, headers={**_bearer(n.inspector_key), **SSE})
        s = await read(resp, Stream(), until=lambda s: len(s.messages) == 1)
        assert (s.messages[0].id, s.messages[0].event, s.messages[0].data) == ("1", "", [])
        await publish(n, "A-1")
        s = await read(resp, s, until=lambda s: len(s.events()) == 1)
        resp.close()
        assert s.events()[0].id == "2"
        assert sse_message(b'{"a":1}', event="event", id=7) == (
            b'id: 7\nevent: event\ndata: {"a":1}\n\n'
        )


async def test_streams_refuse_bad_input_before_they_open(tmp_path: Path) -> None:
    async with nodes(tmp_path) as n:
        resp = await n.consumer.get(PATH, headers=SSE)
        await _problem(resp, problems.MISSING_CREDENTIAL)
        resp = await n.consumer.get(PATH, headers={**SSE, "Authorization": "Bearer qk_x_y"})
        await _problem(resp, problems.BAD_CREDENTIAL)
        for last_id in ("abc", "-1", "1.5", "9" * 19):
            resp = await n.consumer.get(
                PATH, headers={**_bearer(n.inspector_key), **SSE, "Last-Event-ID": last_id}
            )
            body = await _problem(resp, problems.INVALID_REQUEST)
            assert "Last-Event-ID" in body["detail"]
        for since in ("2026-11-29T08:00:00", "tomorrow"):
            resp = await n.consumer.get(
                PATH, params={"since": since}, headers={**_bearer(n.inspector_key), **SSE}
            )
            await _problem(resp, problems.INVALID_REQUEST)
        resp = await n.consumer.get(PATH, headers={**_bearer(n.clerk_key), **SSE})
        await _problem(resp, problems.NO_AGREEMENT)
        # Nothing was recorded as delivered by the refused streams.
        assert n.recorder.delivered_calls == []
