"""Brokers for the conformance suite: embedded on SQLite and PostgreSQL, NATS JetStream, and
the hub's embedded broker over HTTP (``HubBroker`` against a hub served by uvicorn on SQLite).

The NATS broker gets a prefix of its own per test (its streams and position bucket), deleted
afterwards. Without ``CI=true`` the NATS cases skip with a one-line reason when the server on
127.0.0.1:4222 is not running; under CI they fail instead, as PostgreSQL's do.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nats
import nats.js.errors
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from qiao.config import HubSettings
from qiao.db import make_engine, migrate
from qiao.events import hub_api
from qiao.events.broker import Broker, Outgoing, StoredEvent
from qiao.events.embedded import EmbeddedBroker
from qiao.events.nats import NatsBroker
from qiao.events.remote import HubBroker
from qiao.hub.app import create_app, open_registry
from qiao.node.confcache import NodeCredentials
from qiao.registry.models import Organization
from qiao.registry.services import RegistryService
from tests.conftest import IN_CI, PgDatabases
from tests.hub.test_global_configuration import enrolled_node

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


# --- the hub's broker over HTTP ------------------------------------------------------------
# The suite's stream "gov-ps/…" names its organization "gov-ps"; registry codes are unified
# social credit codes, so the test hub gets that organization straight into its table.
PROVIDER_ORG = "GOV-PS"
SUBSCRIBER_ORG = "12350100MB00010016"
SUBSCRIBERS = ("transport-node", "district-node")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServedHub:
    url: str
    settings: HubSettings
    registry: RegistryService
    publisher: NodeCredentials  # police-node, of the streams' provider organization
    subscribers: dict[str, NodeCredentials]  # by node name


@contextlib.contextmanager
def served_hub(tmp_path: Path, db_url: str | None = None) -> Iterator[ServedHub]:
    """A hub with the events API, served by uvicorn on 127.0.0.1 in a thread."""
    port = free_port()
    settings = HubSettings.load(
        None,
        data_dir=tmp_path / "hub",
        database_url=db_url or f"sqlite:///{tmp_path / 'hub.db'}",
        instance="CN-T",
        port=port,
        ledger_interval_seconds=3600,
    )
    registry = open_registry(settings)
    with Session(registry.engine) as s, s.begin():
        s.add(Organization(code=PROVIDER_ORG, name="市公安局"))
    registry.add_organization(SUBSCRIBER_ORG, "市交通运输局")
    publisher = enrolled_node(registry, PROVIDER_ORG, "police-node")
    subscribers = {name: enrolled_node(registry, SUBSCRIBER_ORG, name) for name in SUBSCRIBERS}
    app = create_app(settings, registry)
    if not hasattr(app.state, "events_broker"):  # until hub/app.py installs it itself
        hub_api.install(app, registry, settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "hub did not start"
        time.sleep(0.02)
    try:
        yield ServedHub(f"http://127.0.0.1:{port}", settings, registry, publisher, subscribers)
    finally:
        server.should_exit = True
        thread.join(10)
        registry.engine.dispose()


class HubFacade:
    """One Broker over two kinds of node: the provider's node publishes, each subscriber node
    reads its own log (as on the hub, where nobody does both). Retention runs at the hub, so
    ``trim`` goes to the hub's embedded broker directly, as qiao.events.retention does."""

    def __init__(self, hub: ServedHub) -> None:
        self._publisher = HubBroker(hub.url, hub.publisher)
        self._readers = {n: HubBroker(hub.url, c) for n, c in hub.subscribers.items()}
        self._retention = EmbeddedBroker(hub.registry.engine)

    def _reader(self, subscriber: str) -> HubBroker:
        # An unknown subscriber is refused by the name checks before anything is sent.
        return self._readers.get(subscriber, self._readers[SUBSCRIBERS[0]])

    async def publish(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        return await self._publisher.publish(stream, subscriber, events)

    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        reader = self._reader(subscriber)
        return await reader.fetch(stream, subscriber, after=after, limit=limit, wait=wait)

    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        await self._reader(subscriber).ack(stream, subscriber, offset)

    async def acked(self, stream: str, subscriber: str) -> int:
        return await self._reader(subscriber).acked(stream, subscriber)

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        return await self._reader(subscriber).offset_at(stream, subscriber, when)

    async def trim(self, stream: str, *, before: datetime) -> int:
        return await self._retention.trim(stream, before=before)

    async def close(self) -> None:
        for broker in (self._publisher, *self._readers.values()):
            await broker.close()
        await self._retention.close()


@pytest.fixture(params=["sqlite", "postgres", "nats", "hub"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: list[Broker] = []
    if request.param == "hub":
        with served_hub(tmp_path) as hub:

            async def open_hub() -> Broker:
                broker = HubFacade(hub)
                opened.append(broker)
                return broker

            try:
                yield Backend("hub", open_hub, hub.registry.engine)
            finally:
                for broker in opened:
                    await broker.close()
        return

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
