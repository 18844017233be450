"""Brokers for the conformance suite: embedded on SQLite and PostgreSQL, and NATS JetStream.

The NATS broker gets a prefix of its own per test (its streams and position bucket), deleted
afterwards. Without ``CI=true`` the NATS cases skip with a one-line reason when the server on
127.0.0.1:4222 is not running; under CI they fail instead, as PostgreSQL's do.
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.js.errors
import pytest
from sqlalchemy import Engine

from qiao.db import make_engine, migrate
from qiao.events.broker import Broker
from qiao.events.embedded import EmbeddedBroker
from qiao.events.nats import NatsBroker
from tests.conftest import IN_CI, PgDatabases

NATS_URL = "nats://127.0.0.1:4222"

# Opens a broker on the test's storage; called again, it opens a second broker on the same
# storage (to check what survives a close).
OpenBroker = Callable[[], Awaitable[Broker]]


def _nats_available() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=3):
            return None
    except OSError as exc:
        return f"NATS not reachable at {NATS_URL}: {exc.__class__.__name__}"


class Backend:
    """One backend under test: how to open brokers on it and how to look at what it stores."""

    def __init__(self, kind: str, open_broker: OpenBroker, engine: Engine | None = None) -> None:
        self.kind = kind
        self.open = open_broker
        self.engine = engine  # the embedded broker's database


async def _delete_prefix(prefix: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        reply = await nc.request(
            "$JS.API.STREAM.NAMES", json.dumps({"subject": f"{prefix}.>"}).encode(), timeout=5
        )
        names = list(json.loads(reply.data).get("streams") or [])
        names.append(f"KV_{prefix}_EVENT_POSITIONS")
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):  # already gone
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(params=["sqlite", "postgres", "nats"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: list[Broker] = []
    if request.param == "nats":
        reason = _nats_available()
        if reason:
            if IN_CI:
                pytest.fail(f"CI=true but {reason}")
            pytest.skip(reason)
        prefix = f"QT{uuid.uuid4().hex[:12]}"

        async def open_nats() -> Broker:
            broker = await NatsBroker.connect(NATS_URL, prefix)
            opened.append(broker)
            return broker

        try:
            yield Backend("nats", open_nats)
        finally:
            try:
                for broker in opened:
                    await broker.close()
            finally:
                await _delete_prefix(prefix)
        return

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        dbs: PgDatabases = request.getfixturevalue("pg_databases")
        url = dbs.new()
    migrate("hub", url)
    engine = make_engine(url)

    async def open_embedded() -> Broker:
        broker = EmbeddedBroker(engine, poll_interval=0.1)
        opened.append(broker)
        return broker

    try:
        yield Backend(request.param, open_embedded, engine)
    finally:
        for broker in opened:
            await broker.close()
        engine.dispose()


@pytest.fixture
async def broker(backend: Backend) -> Broker:
    return await backend.open()
