"""Webhook delivery at the consumer's node: the provider publishes through the embedded broker
(SQLite), a dispatcher of node "consumer-a" POSTs each event to a real aiohttp receiver on
loopback, which checks the Standard Webhooks signature with ``verify`` below — written from
the spec (standardwebhooks.com, "Verifying webhooks"), and the example docs/events.md shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import Engine

from qiao.config import WebhookSettings
from qiao.db import make_engine, migrate
from qiao.events.publisher import stream_name
from qiao.events.records import DeliveredRecord
from qiao.events.webhooks import WebhookDispatcher, WebhookStore, backoff, load_secret
from qiao.globalconf import GlobalConf
from tests.agreements.test_policy import CONSUMER, PROVIDER
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

NODE = "consumer-a"
TOLERANCE = 5 * 60  # seconds a receiver accepts a timestamp off by (Standard Webhooks)


# --- a receiver's verifier, from the spec ----------------------------------------------------
def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> dict[str, Any]:
    """Check a Standard Webhooks request; return the payload or raise ``ValueError``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(ts)) > TOLERANCE:
        raise ValueError("timestamp outside the tolerance")
    signed_content = f"{msg_id}.{ts}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed_content, hashlib.sha256).digest())
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return json.loads(body)  # type: ignore[no-any-return]
    raise ValueError("no matching signature")


# --- a receiver ----------------------------------------------------------------------------
Behaviour = Callable[[str, int], Awaitable[int]]  # (webhook-id, attempt) -> status


async def _ok(_id: str, _n: int) -> int:
    return 200


@dataclass
class Receiver:
    url: str = ""
    behaviour: Behaviour = _ok
    attempts: dict[str, int] = field(default_factory=dict)
    delivered: list[tuple[Any, bytes]] = field(default_factory=list)  # 2xx answered
    in_flight: dict[str, int] = field(default_factory=dict)  # by partition key
    max_in_flight: int = 0
    max_per_key: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        key = json.loads(body)["partition_key"]
        self.attempts[msg_id] = self.attempts.get(msg_id, 0) + 1
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.max_per_key = max(self.max_per_key, self.in_flight[key])
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        try:
            status = await self.behaviour(msg_id, self.attempts[msg_id])
        finally:
            self.in_flight[key] -= 1
        if 200 <= status < 300:
            self.delivered.append((request.headers, body))
        return web.Response(status=status, text="receiver's own words")

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _h, body in self.delivered]

    def ids(self) -> list[str]:
        return [p["event_id"] for p in self.payloads()]


@dataclass
class Recorder:
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def delivered(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)

    async def published(self, **kwargs: Any) -> None:
        pass

    def records(self) -> list[DeliveredRecord]:
        return [r for c in self.calls for r in c["events"]]


@dataclass
class Setup:
    x: Exchange
    engine: Engine
    recorder: Recorder
    receivers: list[Receiver]
    sleeps: list[float]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    dispatchers: list[WebhookDispatcher] = field(default_factory=list)

    def dispatcher(self, receiver: Receiver | None = None, **settings: Any) -> WebhookDispatcher:
        receiver = receiver or self.receivers[0]
        values: dict[str, Any] = {
            "name": "accidents",
            "provider": PROVIDER,
            "stream": STREAM,
            "app": "inspector",
            "url": receiver.url,
            "purpose": PURPOSE,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "timeout_seconds": 5,
            **settings,
        }
        hook = WebhookSettings(**values)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.sleep(0)

        d = WebhookDispatcher(
            hook,
            engine=self.engine,
            conf_cache=self.x.confs[NODE],
            identity=self.x.identities[NODE],
            broker=self.x.broker,
            recorder=self.recorder,  # type: ignore[arg-type]
            secret=load_secret(self.x.tmp / NODE / hook.secret_file),
            poll_wait=0.2,
            check_interval=0.05,
            sleep=sleep,
        )
        self.dispatchers.append(d)
        return d

    def start(self, d: WebhookDispatcher) -> asyncio.Task[None]:
        task = asyncio.create_task(d.run())
        self.tasks.append(task)
        return task

    async def publish(self, *events: dict[str, Any]) -> list[str]:
        published = await self.x.publisher.publish(STREAM, list(events))
        return [e.event_id for e in published]

    def set_agreement(self, state: str) -> None:
        """The consumer node's configuration now holds the agreement in ``state`` (the
        provider's node keeps publishing: only the consumer's decision changes)."""
        doc = conf_document(self.x.identities, [signed(accident_agreement(), state=state)])
        self.x.confs[NODE].current = GlobalConf.compile(doc)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)
    return value


@contextlib.asynccontextmanager
async def setup(tmp: Path, receivers: int = 1) -> AsyncIterator[Setup]:
    async with exchange(tmp) as x, contextlib.AsyncExitStack() as stack:
        url = f"sqlite:///{tmp / NODE / 'node.db'}"
        migrate("node", url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        made = []
        for _ in range(receivers):
            r = Receiver()
            app = web.Application()
            app.router.add_post("/hook", r.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            stack.push_async_callback(runner.cleanup)
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            r.url = f"http://127.0.0.1:{port}/hook"
            made.append(r)
        s = Setup(x, engine, Recorder(), made, [])
        try:
            yield s
        finally:
            for task in s.tasks:
                task.cancel()
            await asyncio.gather(*s.tasks, return_exceptions=True)
            for d in s.dispatchers:
                await d.close()


def _by_key(payloads: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in payloads:
        out.setdefault(p["partition_key"], []).append(p["offset"])
    return out


# --- tests ---------------------------------------------------------------------------------
async def test_events_arrive_signed_masked_and_recorded(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        d = s.dispatcher()
        secret_file = tmp_path / NODE / "webhook-accidents.secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
        ids = await s.publish(accident("A-1", 1), accident("A-2", 2))
        s.start(d)
        await until(lambda: len(s.receivers[0].delivered) == 2)
        for headers, body in s.receivers[0].delivered:
            payload = verify(secret, headers, body)
            assert set(payload) == {
                "event_id", "offset", "provider", "stream", "partition_key", "published_at",
                "event",
            }  # fmt: skip
            assert (payload["provider"], payload["stream"]) == (PROVIDER, STREAM)
            assert payload["event"]["plate"] == "闽A****5"  # masked under the agreement
            assert "driver_mobile" not in payload["event"]  # not in its projection
            assert headers["webhook-id"] == payload["event_id"]
            assert headers["Content-Type"] == "application/json"
            # Another secret, a changed body, or an old timestamp do not verify.
            other = "whsec_" + base64.b64encode(b"x" * 32).decode()
            with pytest.raises(ValueError, match="signature"):
                verify(other, headers, body)
            with pytest.raises(ValueError, match="signature"):
                verify(secret, headers, body.replace(b"A-", b"B-"))
            with pytest.raises(ValueError, match="timestamp"):
                verify(secret, headers, body, now=time.time() + TOLERANCE + 5)
        assert sorted(s.receivers[0].ids()) == sorted(ids)
        await until(lambda: len(s.recorder.records()) == 2)
        call = s.recorder.calls[0]
        assert call["via"] == "webhook:accidents"
        assert call["client"] == f"{INSTANCE}/{CONSUMER}/inspector"
        assert (call["provider_org"], call["stream"]) == (PROVIDER, STREAM)
        assert {r.agreement for r in s.recorder.records()} == {"agr-accidents"}
        await until(lambda: WebhookStore(s.engine).states()[0].position == 2)
        # The same secret file on the next start: the receiver's copy stays valid.
        assert load_secret(secret_file) == base64.b64decode(secret[6:])


async def test_one_key_at_a_time_in_order_and_keys_in_parallel(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]

        async def uneven(msg_id: str, _n: int) -> int:
            # Later events of a key answer sooner: only the dispatcher keeps them in order.
            await asyncio.sleep(0.005 * (5 - int(msg_id[2:]) % 5))
            return 200

        r.behaviour = uneven
        # Runs of one key (0, 0, 1, 1, 2, 2, 0, …): neighbours in the log share a key.
        events = [accident(f"A-{i // 2 % 3}", 1 + i % 4, event_id=f"e-{i}") for i in range(40)]
        await s.publish(*events)
        s.start(s.dispatcher(concurrency=3))
        await until(lambda: len(r.delivered) == 40)
        assert r.max_per_key == 1  # one key: one at a time
        assert 1 < r.max_in_flight <= 3  # keys in parallel, up to concurrency
        for offsets in _by_key(r.payloads()).values():
            assert offsets == sorted(offsets)
        assert sorted(r.ids()) == sorted(f"e-{i}" for i in range(40))


async def test_failures_are_retried_with_growing_backoff_then_succeed(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]

        async def flaky(_id: str, n: int) -> int:
            return 503 if n <= 3 else 204

        r.behaviour = flaky
        ids = await s.publish(accident("A-1"))
        # Jitter at its top, so each wait is the exponential bound itself.
        d = s.dispatcher(backoff_base_seconds=0.01, backoff_max_seconds=0.03)
        d._uniform = lambda low, high: high
        s.start(d)
        await until(lambda: r.ids() == ids)
        assert r.attempts[ids[0]] == 4
        assert s.sleeps == [0.01, 0.02, 0.03]  # base, 2 base, then capped
        assert d.last_error == "HTTP 503"


def test_full_jitter_stays_within_the_exponential_bound() -> None:
    import random

    rng = random.Random(7)
    for attempt in range(1, 12):
        bound = min(300.0, 1.0 * 2 ** (attempt - 1))
        waits = [backoff(attempt, 1.0, 300.0, rng.uniform) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound * 0.8 and min(waits) < bound * 0.2  # spread, not fixed


async def test_dead_letter_after_max_attempts_then_replay(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]
        healthy = False

        async def refuses_a1(msg_id: str, _n: int) -> int:
            return 200 if healthy or msg_id != "a1" else 500

        r.behaviour = refuses_a1
        await s.publish(accident("A-1", event_id="a1"), accident("A-1", event_id="a1-next"))
        d = s.dispatcher(max_attempts=3)
        s.start(d)
        store = WebhookStore(s.engine)
        # Given up after 3 attempts; the next event of the same key goes on.
        await until(lambda: r.ids() == ["a1-next"])
        assert r.attempts["a1"] == 3
        [dead] = store.dead_letters()
        assert (dead.event_id, dead.offset, dead.attempts) == ("a1", 1, 3)
        assert dead.last_error == "HTTP 500" and dead.state == "dead"
        assert "receiver's own words" not in dead.last_error
        # Kept sealed as the broker held it: no plaintext at rest.
        from sqlalchemy import select

        from qiao.events.webhook_models import WebhookDeadLetter

        with s.engine.connect() as c:
            envelope = c.execute(select(WebhookDeadLetter.envelope)).scalar_one()
        [stored] = await s.x.broker.fetch(stream_name(PROVIDER, STREAM), NODE, after=0, limit=1)
        assert envelope == stored.envelope
        assert b"A-1" not in envelope and "闽A".encode() not in envelope
        await until(lambda: store.states()[0].position == 2)
        assert store.states()[0].dead_letters == 1

        healthy = True
        assert store.request_replay("accidents") == 1
        await until(lambda: r.ids() == ["a1-next", "a1"])
        await until(lambda: store.dead_letters() == [])
        verify_all = [verify(_secret(tmp_path), h, b) for h, b in r.delivered]
        assert verify_all[1]["event"]["accident_id"] == "A-1"
        assert [rec.event_id for rec in s.recorder.records()] == ["a1-next", "a1"]


def _secret(tmp: Path) -> str:
    return (tmp / NODE / "webhook-accidents.secret").read_text().strip()


async def test_dead_letters_can_be_discarded(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        s.receivers[0].behaviour = lambda _i, _n: _status(500)
        await s.publish(accident("A-1", event_id="x1"))
        s.start(s.dispatcher(max_attempts=1))
        store = WebhookStore(s.engine)
        [dead] = await until(store.dead_letters)
        assert store.discard(dead.id) and not store.discard(dead.id)
        assert store.dead_letters() == [] and store.request_replay("accidents") == 0


async def _status(code: int) -> int:
    return code


async def test_rewind_delivers_again_from_an_offset(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]
        await s.publish(*(accident(f"A-{i}", event_id=f"r{i}") for i in range(1, 4)))
        s.start(s.dispatcher())
        store = WebhookStore(s.engine)
        await until(lambda: store.states() and store.states()[0].position == 3)
        assert store.rewind("accidents", 1) == 3
        await until(lambda: len(r.delivered) == 5)
        assert sorted(r.ids()[3:]) == ["r2", "r3"]  # again, with the same webhook-id
        await until(lambda: store.states()[0].position == 3)
        with pytest.raises(KeyError):
            store.rewind("no-such-webhook", 0)


@pytest.mark.parametrize("state", ["suspended", "revoked"])
async def test_delivery_pauses_while_the_agreement_refuses_and_resumes(
    tmp_path: Path, state: str
) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]
        await s.publish(accident("A-1", event_id="p1"))
        d = s.dispatcher()
        s.start(d)
        await until(lambda: r.ids() == ["p1"])
        s.set_agreement(state)
        store = WebhookStore(s.engine)
        await until(lambda: store.states()[0].paused)
        assert d.paused.startswith(f"urn:qiao:problem:client:agreement-{state}"), d.paused
        assert store.states()[0].paused == d.paused  # what `qiao events webhooks` shows
        await s.publish(accident("A-2", event_id="p2"))
        # Paused: the event stays in the log and the position does not move past it.
        await asyncio.sleep(0.5)
        assert r.ids() == ["p1"] and store.states()[0].position == 1
        s.set_agreement("active")
        await until(lambda: r.ids() == ["p1", "p2"], timeout=5)
        await until(lambda: not store.states()[0].paused)


async def test_a_revocation_stops_retries_of_an_event_in_flight(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]
        r.behaviour = lambda _i, _n: _status(503)
        await s.publish(accident("A-1", event_id="f1"))
        d = s.dispatcher(max_attempts=100, backoff_base_seconds=0.01, backoff_max_seconds=0.01)
        s.start(d)
        await until(lambda: r.attempts.get("f1", 0) >= 2)
        s.set_agreement("revoked")
        await until(lambda: d.paused)
        tried = r.attempts["f1"]
        await asyncio.sleep(0.3)
        assert r.attempts["f1"] <= tried + 1  # at most the attempt already under way
        assert WebhookStore(s.engine).dead_letters() == []


async def test_a_hanging_receiver_does_not_delay_another_webhook(tmp_path: Path) -> None:
    async with setup(tmp_path, receivers=2) as s:
        hanging, fine = s.receivers

        async def hang(_id: str, _n: int) -> int:
            await asyncio.sleep(30)
            return 200

        hanging.behaviour = hang
        s.start(s.dispatcher(hanging, name="stuck", timeout_seconds=20))
        s.start(s.dispatcher(fine, name="fine"))
        started = time.monotonic()
        ids = await s.publish(*(accident(f"A-{i}") for i in range(10)))
        await until(lambda: sorted(fine.ids()) == sorted(ids), timeout=5)
        assert time.monotonic() - started < 5
        # The stuck one did try (its first POST may start after the other finished, on a
        # busy machine) and is still waiting on its receiver.
        await until(lambda: hanging.attempts, timeout=5)
        assert hanging.delivered == []


async def test_a_crash_mid_batch_redelivers_from_the_stored_position(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        r = s.receivers[0]
        gate = asyncio.Event()

        async def stalls_on_c5(msg_id: str, _n: int) -> int:
            if msg_id == "c5":
                await gate.wait()
            return 200

        r.behaviour = stalls_on_c5
        ids = await s.publish(*(accident(f"A-{i % 3}", event_id=f"c{i}") for i in range(8)))
        task = s.start(s.dispatcher())
        await until(lambda: r.attempts.get("c5"))
        await until(lambda: len(r.delivered) == 7)  # all but c5, which hangs
        task.cancel()  # the node dies with a batch out
        await asyncio.gather(task, return_exceptions=True)
        assert WebhookStore(s.engine).states()[0].position == 0
        gate.set()
        s.start(s.dispatcher())
        # The batch is done once the restarted dispatcher delivered all of it again.
        await until(lambda: WebhookStore(s.engine).states()[0].position == 8)
        # At least once: every event arrived; some twice, which webhook-id de-duplicates.
        assert set(r.ids()) == set(ids)
        assert len(r.ids()) >= len(ids) + 7  # the 7 of the first run came again


def test_operator_commands_list_rewind_replay_and_discard(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from qiao.cli import app
    from qiao.events.broker import StoredEvent

    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n\n[[webhooks]]\nname = "dispatch"\nprovider = "{PROVIDER}"\n'
        f'stream = "{STREAM}"\napp = "inspector"\nurl = "http://127.0.0.1:9/hook"\n'
    )
    run = CliRunner().invoke
    out = run(app, ["events", "webhooks", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "dispatch" in out.output and "not started" in out.output

    out = run(app, ["events", "webhooks", "--config", str(config), "rewind", "dispatch"])
    assert out.exit_code == 2 and "--offset" in out.output
    out = run(app, ["events", "webhooks", "-c", str(config), "rewind", "nope", "--offset", "1"])
    assert out.exit_code == 2
    out = run(app, ["events", "webhooks", "-c", str(config), "rewind", "dispatch", "--offset", "7"])
    assert out.exit_code == 0, out.output
    store = WebhookStore(make_engine(f"sqlite:///{(tmp_path / 'node.db').resolve()}"))
    assert store.states()[0].position == 7
    out = run(app, ["events", "webhooks", "-c", str(config), "rewind", "dispatch", "--offset", "3"])
    assert out.exit_code == 0 and "7 -> 3" in out.output
    assert store.states()[0].position == 3

    now = datetime.now(UTC)
    stored = StoredEvent(stream_name(PROVIDER, STREAM), NODE, 5, "ev-5", "k", now, b"\x01sealed")
    store.add_dead_letter("dispatch", PROVIDER, STREAM, stored, 12, "HTTP 502", now)
    out = run(app, ["events", "dead-letters", "-c", str(config), "--webhook", "dispatch"])
    assert out.exit_code == 0 and "ev-5" in out.output and "HTTP 502" in out.output
    [dead] = store.dead_letters()
    out = run(app, ["events", "dead-letters", "-c", str(config), "replay"])
    assert out.exit_code == 2
    out = run(app, ["events", "dead-letters", "-c", str(config), "replay", str(dead.id)])
    assert out.exit_code == 0, out.output
    assert store.dead_letters()[0].state == "replay"
    out = run(app, ["events", "dead-letters", "-c", str(config), "replay", "--all"])
    assert out.exit_code == 2  # --all needs --webhook
    out = run(app, ["events", "dead-letters", "-c", str(config), "discard", str(dead.id)])
    assert out.exit_code == 0 and store.dead_letters() == []
    out = run(app, ["events", "dead-letters", "-c", str(config), "discard", str(dead.id)])
    assert out.exit_code == 1


async def test_a_failing_key_chain_cancels_the_others_before_the_batch_is_retried() -> None:
    """If storing one key's dead letter fails, the batch fails as a whole: the other keys'
    chains must not go on posting beside the retry (duplicates, order per key broken)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from qiao.events.delivery import DeliveredEvent
    from qiao.events.webhooks import Outcome, Result

    def ev(offset: int, key: str) -> DeliveredEvent:
        return DeliveredEvent(offset, f"e{offset}", key, datetime.now(UTC), {}, "agr")

    d = WebhookDispatcher.__new__(WebhookDispatcher)
    d.settings = SimpleNamespace(concurrency=8)  # type: ignore[assignment]
    posted: list[int] = []

    async def deliver(e: DeliveredEvent) -> Result:
        if e.partition_key == "bad":
            return Result(Outcome.DEAD, 12, "HTTP 500", datetime.now(UTC))
        await asyncio.sleep(0.05)  # a slow receiver
        posted.append(e.offset)
        return Result(Outcome.DELIVERED, 1, "", datetime.now(UTC))

    async def on_dead(_e: DeliveredEvent, _r: Result) -> None:
        raise RuntimeError("database is locked")

    d._deliver = deliver  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup):
        await d._deliver_all([ev(1, "bad"), ev(2, "k"), ev(3, "k"), ev(4, "k")], on_dead)
    await asyncio.sleep(0.3)  # time enough for an orphaned chain to post the rest
    assert posted == []


def test_a_secret_others_can_read_or_an_empty_one_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "webhook.secret"
    key = load_secret(secret)  # made, 0600
    secret.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_secret(secret)
    secret.chmod(0o600)
    assert load_secret(secret) == key
    secret.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_secret(secret)
