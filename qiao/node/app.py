"""A department's node: the app-facing listener and the mutual-TLS peer listener.

Composes the exchange gateways with the node's stores and its copy of the global
configuration. Two listeners, because they face two networks: apps reach the node on the
department's own network, other nodes reach it over mutual TLS.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from qiao import __version__, pki, problems
from qiao.config import NodeSettings
from qiao.db import make_engine, migrate
from qiao.events import retention
from qiao.events.broker import Broker
from qiao.events.delivery import Delivery
from qiao.events.nats import NatsBroker
from qiao.events.node_api import EventsApi
from qiao.events.publisher import Publisher
from qiao.events.records import EventRecorder
from qiao.events.remote import HubBroker, HubError, register_events_key
from qiao.events.webhooks import WebhookDispatcher, dispatchers
from qiao.exchange.consumer import ConsumerGateway
from qiao.exchange.keys import ApiKeyService
from qiao.exchange.provider import ProviderGateway, load_pseudonym_secret
from qiao.exchange.records import RecordWriter
from qiao.exchange.relay import problem_response
from qiao.globalconf import GlobalConf
from qiao.ledger import note
from qiao.ledger.submit import LedgerSubmitter
from qiao.ledger.witness import Witness, witness_routes
from qiao.node import limits
from qiao.node.confcache import ConfigurationCache, NodeCredentials, fetch_loop, fetch_once
from qiao.node.identity import WITNESS_KEY_FILE, NodeIdentity, load_witness
from qiao.node.openapi import document
from qiao.problems import Problem

log = logging.getLogger("qiao.node")


@dataclass
class Node:
    settings: NodeSettings
    identity: NodeIdentity
    conf: ConfigurationCache
    keys: ApiKeyService
    writer: RecordWriter
    consumer: ConsumerGateway
    provider: ProviderGateway
    runners: list[web.AppRunner] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    hub_session: aiohttp.ClientSession | None = None
    submitter: LedgerSubmitter | None = None
    witness: Witness | None = None
    events: EventsApi | None = None  # publishing and pulling event streams (docs/events.md)
    broker: Broker | None = None
    pseudonym_secret: bytes = b""
    # One per [[webhooks]] entry, each its own task (docs/events.md#webhooks).
    webhooks: list[WebhookDispatcher] = field(default_factory=list)
    webhook_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: NodeSettings) -> Node:
        identity = NodeIdentity.load(settings.data_dir)
        migrate("node", settings.database_url)
        engine = make_engine(settings.database_url)
        conf = ConfigurationCache(
            settings.data_dir,
            public_key=identity.configuration_key,
            instance=identity.instance,
            grace_seconds=settings.config_grace_seconds,
        )
        keys = ApiKeyService(engine)
        writer = RecordWriter(engine)
        ssl_client = pki.client_context(identity.cert_file, identity.key_file, identity.ca_file)
        consumer = ConsumerGateway(settings, identity, conf, keys, writer, ssl_client)
        # Created on the first start (qiao.exchange.provider.load_pseudonym_secret); events
        # use the same one, so a pseudonym is the same in an answer and in an event.
        secret = load_pseudonym_secret(settings.data_dir)
        provider = ProviderGateway(settings, identity, conf, writer, secret)
        node = cls(settings, identity, conf, keys, writer, consumer, provider)
        node.pseudonym_secret = secret
        node.submitter = LedgerSubmitter(engine, identity, settings.hub_url)
        if (settings.data_dir / WITNESS_KEY_FILE).exists():
            # The witness trusts the log key the signed configuration names (the hub's key
            # to sign configurations vouches for it), and follows it if the config changes.
            logs: dict[str, note.Verifier] = {}

            def follow(c: GlobalConf) -> None:
                if c.ledger_origin and c.ledger_key:
                    logs[c.ledger_origin] = note.Verifier.from_text(c.ledger_key)

            conf.listeners.append(follow)
            if conf.current is not None:
                follow(conf.current)
            node.witness = Witness(engine, load_witness(identity), logs)
        return node

    def health(self) -> tuple[int, dict[str, Any]]:
        status = self.conf.status()
        ok = bool(status["valid"])
        body = {
            "status": "ok" if ok else "unavailable",
            "version": __version__,
            "node": self.identity.name,
            "org": self.identity.org,
            "instance": self.identity.instance,
            "configuration": status,
            "records_written": self.writer.written,
            "record_commits": self.writer.commits,
        }
        if self.conf.current is not None:
            # An agreement that does not verify refuses every call under it: say so here,
            # where the node's operator looks first.
            policy = self.conf.current.policy
            body["agreements"] = {
                "verified": len(policy.agreements),
                "invalid": [{"id": i.id, "reason": i.reason} for i in policy.invalid],
            }
        if self.submitter is not None:
            body["ledger"] = {
                "pending": self.submitter.pending(),
                "submitted": self.submitter.submitted,
                "last_error": self.submitter.last_error,
            }
        if self.webhooks:
            body["webhooks"] = {d.settings.name: d.status() for d in self.webhooks}
        if self.witness is not None:
            body["witness"] = {
                "alerts": [
                    {
                        "origin": a.origin,
                        "kind": a.kind,
                        "detail": a.detail,
                        "at": a.created_at.isoformat(),
                    }
                    for a in self.witness.alerts()
                ]
            }
        if not ok:
            body["reason"] = (
                "no global configuration received yet"
                if status["serial"] is None
                else "the global configuration expired: "
                + (status["last_error"] or "hub unreachable")
            )
        return (200 if ok else 503), body

    def app_listener(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes + 1, middlewares=self._middlewares()
        )

        async def health(_r: web.Request) -> web.Response:
            code, body = self.health()
            return web.Response(
                body=orjson.dumps(body), status=code, content_type="application/json"
            )

        openapi = orjson.dumps(document(__version__))

        async def openapi_document(_r: web.Request) -> web.Response:
            return web.Response(body=openapi, content_type="application/json")

        app.router.add_get("/healthz", health)
        app.router.add_get("/openapi.json", openapi_document)
        app.router.add_route("*", "/r1/{tail:.*}", self.consumer.handle)
        if self.events is not None:
            app.add_routes(self.events.routes())
            app.on_shutdown.append(self.events.shutdown)  # open event streams end first
        if self.witness is not None:
            app.add_routes(witness_routes(self.witness))
        return app

    def peer_listener(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes + 1, middlewares=self._middlewares()
        )
        app.router.add_route("*", "/r1/{tail:.*}", self.provider.handle)
        return app

    def _middlewares(self) -> list[Middleware]:
        s = self.settings
        return [
            _problem_middleware,
            limits.body_deadline(s.body_timeout_seconds, s.body_min_bytes_per_second),
        ]

    async def start(self) -> None:
        s = self.settings
        self.hub_session = aiohttp.ClientSession()
        # Every fetch is signed with the node key: the hub sends agreements and emergencies
        # only to enrolled nodes (docs/operations.md).
        credentials = NodeCredentials.of(self.identity)
        # One fetch before serving, so a fresh node does not refuse its first calls.
        await fetch_once(
            self.conf,
            f"{s.hub_url}/api/v1/global-configuration",
            self.hub_session,
            credentials=credentials,
        )
        await self.consumer.start()
        await self.provider.start()
        await self._start_events(credentials)
        ssl_server = pki.server_context(
            self.identity.cert_file, self.identity.key_file, self.identity.ca_file
        )
        for app, host, port, ssl in (
            (self.app_listener(), s.host, s.port, None),
            (self.peer_listener(), s.peer_host, s.peer_port, ssl_server),
        ):
            # Limits and timeouts on what clients send (qiao.node.limits).
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, **limits.runner_options(s)
            )
            await runner.setup()
            await limits.HandshakeDeadlineSite(
                runner,
                host,
                port,
                ssl_context=ssl,
                backlog=1024,
                ssl_handshake_timeout=s.tls_handshake_timeout_seconds,
            ).start()
            self.runners.append(runner)
        self.tasks.append(
            asyncio.create_task(
                fetch_loop(
                    self.conf,
                    s.hub_url,
                    s.config_refresh_seconds,
                    self.hub_session,
                    wait=s.config_wait_seconds,
                    credentials=credentials,
                )
            )
        )
        if self.submitter is not None:
            self.tasks.append(asyncio.create_task(self.submitter.run(s.ledger_submit_seconds)))
        log.info(
            "node %s (%s) serving apps on %s:%d and peers on %s:%d",
            self.identity.name,
            self.identity.org,
            s.host,
            s.port,
            s.peer_host,
            s.peer_port,
        )

    async def _start_events(self, credentials: NodeCredentials) -> None:
        """The event broker this node publishes to and pulls from (``events_broker``): the
        hub's embedded broker over its API, or a NATS JetStream server. A node enrolled
        before it had an event key registers the key it made on first start."""
        s = self.settings
        if s.events_broker == "hub":
            self.broker = HubBroker(s.hub_url, credentials, session=self.hub_session)
        else:
            self.broker = await NatsBroker.connect(s.events_broker)
        conf = self.conf.current
        mine = next(
            (
                n
                for n in (conf.nodes_by_org.get(self.identity.org, ()) if conf else ())
                if n.name == self.identity.name
            ),
            None,
        )
        if mine is not None and mine.events_key != self.identity.event_key_text:
            try:
                await register_events_key(
                    s.hub_url, credentials, self.identity.event_key_text, session=self.hub_session
                )
            except (aiohttp.ClientError, HubError) as exc:
                log.warning("could not register this node's event key at the hub: %s", exc)
        # One recorder for pulls, streams and webhooks: its rows share the node's group commit.
        recorder = EventRecorder(self.writer, self.identity.org)
        self.events = EventsApi(
            conf_cache=self.conf,
            identity=self.identity,
            keys=self.keys,
            publisher=Publisher(self.conf, self.identity, self.broker, self.pseudonym_secret),
            delivery=Delivery(self.conf, self.identity, self.broker),
            recorder=recorder,
            max_body_bytes=s.max_body_bytes,
            tokens=self.consumer.tokens,
        )
        if s.events_broker != "hub":
            # The hub trims its embedded broker; a NATS server it does not reach is trimmed
            # by the providers' nodes, each for its own streams (qiao.events.retention).
            self.tasks.append(
                asyncio.create_task(
                    retention.run_at_node(lambda: self.conf.current, self.identity.org, self.broker)
                )
            )
        # Webhooks: one dispatcher task each, independent of the others and of the pulls.
        self.webhooks = dispatchers(
            s.webhooks,
            data_dir=s.data_dir,
            engine=self.writer.engine,
            conf_cache=self.conf,
            identity=self.identity,
            broker=self.broker,
            recorder=recorder,
        )
        self.webhook_tasks = [
            asyncio.create_task(d.run(), name=f"webhook-{d.settings.name}") for d in self.webhooks
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.webhook_tasks:
            task.cancel()
        # Awaited, so each dispatcher closes its connections; a batch cut short here is
        # delivered again at the next start (its position had not moved).
        await asyncio.gather(*self.webhook_tasks, return_exceptions=True)
        for runner in self.runners:
            await runner.cleanup()
        await self.consumer.close()
        await self.provider.close()
        if self.broker is not None:
            await self.broker.close()
        if self.hub_session:
            await self.hub_session.close()
        self.writer.close()


@web.middleware
async def _problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Whatever goes wrong outside the gateways still answers as problem+json."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except Problem as p:
        return problem_response(p)
    except web.HTTPRequestEntityTooLarge:
        return problem_response(Problem(problems.BODY_TOO_LARGE))
    except web.HTTPNotFound:
        return problem_response(
            Problem(problems.BAD_PATH, f"{request.path!r}: exchanges go to /r1/...")
        )
    except web.HTTPException as exc:
        return problem_response(Problem(problems.BAD_HEADER, exc.reason))


async def serve(settings: NodeSettings) -> None:
    """Run the node until SIGINT or SIGTERM."""
    node = Node.open(settings)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node %s stopping", node.identity.name)
    await node.stop()


def run(settings: NodeSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:
        asyncio.run(serve(settings))
