"""A running exchange for the integration tests: a hub, a node per demo department and test
backends, as real processes on loopback, once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from qiao.demo.backends import market_regulation, public_security
from qiao.demo.city import DEPARTMENTS, Deployment
from qiao.demo.people import build_city
from qiao.demo.processes import free_port

MAX_BODY = 1024 * 1024


def wait_for(fn: Any, timeout: float = 30.0) -> Any:
    """Poll ``fn`` until it returns something truthy (an HTTP error counts as not yet)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.2)


class LoopThread:
    """An asyncio loop in a thread, serving test backends while the tests block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def serve(self, app: web.Application) -> str:
        port = free_port()

        async def start() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

        self.run(start())
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        async def stop() -> None:
            for r in self.runners:
                await r.cleanup()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def lab_backend() -> web.Application:
    """Backends that misbehave on purpose."""

    async def echo(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "query": dict(request.query),
                "path": request.path,
                "headers": {
                    k: v
                    for k, v in request.headers.items()
                    if k.lower().startswith("x-") or k.lower() in ("authorization", "cookie")
                },
            }
        )

    async def slow(_r: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for i in range(48):  # 3 MiB, unsized: streamed through both nodes
            await resp.write(bytes([i]) * 65536)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    return app


@dataclass
class HubProxy:
    """Stands between the nodes and the hub's configuration endpoint, so a test can take the
    hub away or make it serve a tampered configuration."""

    hub_url: str
    mode: str = "pass"  # "pass", "down" or "tamper"
    session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        from qiao.registry.services import NODE_FETCH_HEADERS

        node_headers = {h.lower() for h in NODE_FETCH_HEADERS}

        async def conf(request: web.Request) -> web.StreamResponse:
            if self.mode == "down":
                # Drop the connection as an unreachable hub would (aiohttp would log each one).
                logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError
            if self.session is None:
                self.session = aiohttp.ClientSession()
            tamper = self.mode == "tamper" and request.path == "/api/v1/global-configuration"
            # The node's signature on the fetch goes through even when tampering, so that
            # the tampered answer is the full configuration and fails on its signature.
            headers = {
                k: v
                for k, v in request.headers.items()
                if (k.lower() in ("content-type", "if-none-match") and not tamper)
                or k.lower() in node_headers
            }
            async with self.session.request(
                request.method,
                # raw_path: the node signed the target as it sent it (percent-encoding kept).
                URL(f"{self.hub_url}{request.raw_path}", encoded=True),
                headers=headers,
                data=await request.read(),
            ) as r:
                body = await r.read()
                if tamper and r.status == 200:
                    env = orjson.loads(body)
                    env["document"]["serial"] += 1000
                    env["document"]["organizations"][0]["name"] = "篡改"
                    body = orjson.dumps(env)
                return web.Response(
                    body=body,
                    status=r.status,
                    headers={
                        k: v for k, v in r.headers.items() if k.lower() in ("etag", "content-type")
                    },
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", conf)
        return app


@dataclass
class City:
    dep: Deployment
    proxy: HubProxy
    backends: LoopThread
    registry: Any
    db: str
    city: Any = field(default=None)

    def headers(self, dept: str, app: str, **extra: str) -> dict[str, str]:
        node = self.dep.nodes[dept]
        return {
            "X-Qiao-Client": self.dep.client(dept, app),
            "Authorization": f"Bearer {node.api_keys[app]}",
            # The purpose the agreements on the lab resources allow (see ``_agree``), unless
            # a test sends another; the demo's own resources expect their own purposes.
            "X-Qiao-Purpose": LAB_PURPOSE,
            **extra,
        }

    def url(self, consumer: str, provider: str, resource: str, rest: str = "") -> str:
        return f"{self.dep.nodes[consumer].url}/r1/{self.dep.codes[provider]}/{resource}{rest}"


LAB_PURPOSE = "integration-test"


def _agree(
    reg: Any, codes: dict[str, str], consumer: str, code: str, apps: tuple[str, ...] = ()
) -> None:
    """The consumer applies for a lab resource of public security, whose approver approves
    it: every method and path, the purposes the tests send."""
    from qiao.agreements.service import AgreementService, Application
    from qiao.demo.sharing import person
    from qiao.identity.roles import Role

    svc = AgreementService(reg)
    request = svc.apply(
        person(codes, consumer, Role.APP_DEVELOPER),
        codes["police"],
        code,
        Application(
            purposes=(LAB_PURPOSE, "enforcement", "audit-test"),
            purpose_text="集成测试",
            legal_basis="测试用途",
            methods=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
            apps=apps,
        ),
    )
    svc.approve(person(codes, "police", Role.APPROVER), request.id)


@pytest.fixture(scope="package", params=["sqlite", "postgres"])
def city(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[City]:
    db = request.param
    data_dir: Path = tmp_path_factory.mktemp(f"city-{db}")
    dep = Deployment(data_dir=data_dir)
    if db == "postgres":
        dbs = request.getfixturevalue("pg_databases")
        dep.hub_database_url = dbs.new()
        dep.node_database_urls = {d.key: dbs.new() for d in DEPARTMENTS}
    demo = build_city()
    loop = LoopThread()
    lab = loop.serve(lab_backend())
    dep.backend_urls = {
        "police": loop.serve(public_security(demo)),
        "market": loop.serve(market_regulation(demo)),
    }
    dep.extra_services = {
        "police": {
            "echo": {"url": f"{lab}/echo"},
            "slow": {"url": f"{lab}/slow", "timeout_seconds": 1.0},
            "big": {"url": f"{lab}/big"},
            "down": {"url": f"http://127.0.0.1:{free_port()}"},
        }
    }
    proxy = HubProxy("")
    try:
        reg = dep.start_hub()
        proxy.hub_url = dep.hub_url
        dep.node_settings = {
            "hub_url": loop.serve(proxy.app()),
            "max_body_bytes": MAX_BODY,
            "config_refresh_seconds": 0.5,
            "config_grace_seconds": 6.0,
            # Short long-polls, so that taking the hub proxy "down" is felt within a second.
            "config_wait_seconds": 1.0,
        }
        police = dep.codes["police"]
        for code in ("echo", "slow", "big", "down"):
            reg.add_resource(police, code)
            _agree(reg, dep.codes, "transport", code, apps=("traffic-enforcement",))
        _agree(reg, dep.codes, "health", "echo")
        dep.start_nodes(reg)
        yield City(dep, proxy, loop, reg, db, demo)
    finally:
        dep.stop()
        if proxy.session is not None:
            loop.run(proxy.session.close())
        loop.close()
