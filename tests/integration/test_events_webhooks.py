"""Webhook delivery through the running city (on SQLite and on PostgreSQL): the transport
bureau's node, restarted with two ``[[webhooks]]``, delivers public security's accidents to
two backends of its own — one down for a while, one that hangs and fails — and the operator
commands work on the running node's database.

The test adds the webhooks to the transport node's TOML itself and restores it afterwards
(the ``city`` fixture is shared), so neither the fixture nor the demo changes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from typer.testing import CliRunner

from qiao.cli import app as cli
from qiao.db import make_engine
from qiao.demo.people import generate_accidents
from qiao.demo.processes import free_port
from qiao.events.webhooks import WebhookStore
from tests.integration.conftest import City, wait_for

TOLERANCE = 300


def verify(secret: str, headers: Any, body: bytes) -> dict[str, Any]:
    """Standard Webhooks verification, as docs/events.md shows it to receivers."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > TOLERANCE:
        raise ValueError("timestamp outside the tolerance")
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    )
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return json.loads(body)  # type: ignore[no-any-return]
    raise ValueError("no matching signature")


@dataclass
class Backend:
    """A subscriber's backend: verifies each call and keeps the first of each webhook-id."""

    secret_file: Any
    mode: str = "ok"  # "ok", or "hang-then-fail"
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> payload
    order: list[str] = field(default_factory=list)  # ids in first-arrival order
    calls: int = 0
    bad_signatures: int = 0

    def app(self) -> web.Application:
        import asyncio

        async def handle(request: web.Request) -> web.Response:
            self.calls += 1
            if self.mode == "hang-then-fail":
                await asyncio.sleep(3)
                return web.Response(status=500)
            body = await request.read()
            try:
                payload = verify(self.secret_file.read_text().strip(), request.headers, body)
            except ValueError:
                self.bad_signatures += 1
                return web.Response(status=401)
            msg_id = request.headers["webhook-id"]
            if msg_id not in self.seen:  # de-duplicated by webhook-id
                self.seen[msg_id] = payload
                self.order.append(msg_id)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", handle)
        return app


def _serve(city: City, backend: Backend, port: int) -> web.AppRunner:
    async def start() -> web.AppRunner:
        runner = web.AppRunner(backend.app(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    return city.backends.run(start())  # type: ignore[no-any-return]


def _restart(city: City) -> None:
    node = city.dep.nodes["transport"]
    node.process.stop()
    node.process.start()
    node.process.wait_healthy()


@pytest.fixture
def hooked(city: City) -> Iterator[tuple[City, int, int]]:
    """The transport node, restarted with webhook "dispatch" (to a port nobody serves yet)
    and "archive" (to a backend that hangs and fails); as before afterwards."""
    node = city.dep.nodes["transport"]
    original = node.config.read_text()
    down_port, stuck_port = free_port(), free_port()
    common = (
        f'provider = "{city.dep.codes["police"]}"\nstream = "traffic-accidents"\n'
        'app = "traffic-enforcement"\npurpose = "traffic-management"\n'
    )
    node.config.write_text(
        original
        + f'\n[[webhooks]]\nname = "dispatch"\n{common}url = "http://127.0.0.1:{down_port}/hook"\n'
        "backoff_base_seconds = 0.2\nbackoff_max_seconds = 1.0\nmax_attempts = 100\n"
        f'\n[[webhooks]]\nname = "archive"\n{common}url = "http://127.0.0.1:{stuck_port}/hook"\n'
        "timeout_seconds = 1\nmax_attempts = 2\nbackoff_base_seconds = 0.1\n"
        "backoff_max_seconds = 0.2\nconcurrency = 2\n"
    )
    _restart(city)
    try:
        yield city, down_port, stuck_port
    finally:
        node.config.write_text(original)
        _restart(city)


def _publish(city: City, events: list[dict[str, Any]]) -> None:
    node = city.dep.nodes["police"]
    r = httpx.post(
        f"{node.url}/e1/traffic-accidents",
        json={"events": events},
        headers={
            "Authorization": f"Bearer {node.api_keys['police-app']}",
            "X-Qiao-Client": city.dep.client("police", "police-app"),
        },
        timeout=30,
    )
    assert r.status_code == 202, r.text


def _health(city: City) -> dict[str, Any]:
    r = httpx.get(f"{city.dep.nodes['transport'].url}/healthz", timeout=5)
    return r.json()  # type: ignore[no-any-return]


def test_a_backend_down_for_a_while_gets_everything_in_order_once(
    hooked: tuple[City, int, int],
) -> None:
    city, down_port, stuck_port = hooked
    node = city.dep.nodes["transport"]
    tag = f"wh-{city.db}-{int(time.time())}"
    dispatch = Backend(node.data_dir / "webhook-dispatch.secret")
    stuck = Backend(node.data_dir / "webhook-archive.secret", mode="hang-then-fail")
    runners = [_serve(city, stuck, stuck_port)]
    try:
        # Five accidents, four updates each, interleaved: one key's updates are spread over
        # the log, and each must reach the backend in the order published.
        accidents = generate_accidents(5, seed=int(time.time()) % 1000)
        events = [
            {**a, "injuries": n, "event_id": f"{tag}-{a['accident_id']}-{n}"}
            for n in range(4)
            for a in accidents
        ]
        before = datetime.now(UTC) - timedelta(seconds=1)
        _publish(city, events[:10])
        # The backend is down: the node keeps trying (and says so in its health).
        wait_for(lambda: _health(city)["webhooks"]["dispatch"]["failing"], timeout=20)
        _publish(city, events[10:])
        time.sleep(1)  # more failed attempts, with backoff, before the backend comes back
        runners.append(_serve(city, dispatch, down_port))
        came_back = time.monotonic()
        ours = {e["event_id"] for e in events}
        wait_for(lambda: ours <= set(dispatch.seen), timeout=30)
        # The hanging, failing backend of the other webhook did not hold this one up.
        assert time.monotonic() - came_back < 15
        assert stuck.calls > 0 and not stuck.seen
        assert dispatch.bad_signatures == 0
        mine = [i for i in dispatch.order if i in ours]
        assert len(mine) == len(events)  # each once, after de-duplication by webhook-id
        for a in accidents:
            updates = [
                dispatch.seen[i]["event"]["injuries"]
                for i in mine
                if dispatch.seen[i]["event"]["accident_id"] == a["accident_id"]
            ]
            assert updates == [0, 1, 2, 3], (a["accident_id"], updates)

        # The operator's view, from the node's own database while it runs.
        cfg = str(node.config)
        out = CliRunner().invoke(cli, ["events", "webhooks", "--config", cfg])
        assert out.exit_code == 0, out.output
        wait_for(lambda: _health(city)["webhooks"]["archive"]["dead_lettered"] > 0, timeout=30)
        out = CliRunner().invoke(
            cli, ["events", "dead-letters", "--config", cfg, "--webhook", "archive"]
        )
        assert out.exit_code == 0, out.output
        dead = WebhookStore(make_engine(city.dep.node_db_url("transport"))).dead_letters("archive")
        # Its backend hangs past the timeout (or, for events the node tried before this
        # test served it, refuses the connection): the error is a status or the exception's
        # class, never a body.
        assert dead and all(re.fullmatch(r"HTTP \d{3}|[A-Z]\w+", d.last_error) for d in dead), dead

        # Rewound to a time before the test published: everything comes again (same ids).
        calls = len(dispatch.order)
        # Straight to the hub: the fixture's hub proxy re-encodes query strings (":" for
        # "%3A"), which breaks the node's signature over the request target.
        out = CliRunner().invoke(
            cli,
            ["events", "webhooks", "--config", cfg, "rewind", "dispatch", "--since",
             before.isoformat()],
            env={"QIAO_HUB_URL": city.dep.hub_url},
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        health = _health(city)["webhooks"]["dispatch"]
        delivered = health["delivered"]
        wait_for(
            lambda: _health(city)["webhooks"]["dispatch"]["delivered"] >= delivered + len(events),
            timeout=30,
        )
        assert len(dispatch.order) == calls  # nothing new: only repeats of known ids
    finally:
        for runner in runners:
            city.backends.run(runner.cleanup())
