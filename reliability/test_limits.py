"""Slow clients, huge headers and huge bodies against every listener (issue 9, part 5b).

Real processes on loopback: the hub over plain HTTP and over TLS (uvicorn with
qiao.hub.limits), a consumer node's app listener and a provider node's peer listener (aiohttp,
mutual TLS, with qiao.node.limits). They run with short timeouts (``SHORT``, given through
``QIAO_*`` variables) so the short profile fits in its budget; a separate test checks that
the defaults are the ones docs/operations.md states.

Each attack runs against all four listeners at once, while a normal client asks each of them
for its health (the peer listener: an mTLS request answered with a problem) every 0.2 s:

* slowloris: connections sending a request head one byte a second, never finishing; idle
  connections sending nothing; (TLS listeners) TLS handshakes never finished;
* slow bodies: a complete head with a Content-Length, the body trickled a byte a second;
* huge heads: one 1 MiB header, 10,000 small headers, a 1 MiB URL; the server's memory
  (RSS) after rounds of them;
* huge bodies: a Content-Length over the limit (answered before any body byte is sent) and
  a chunked body without one (cut off at the limit), on the hub's JSON and form routes and
  the node's /r1 and /e1 routes.

Figures (section "limits"): per listener and attack, connections tried and closed by the
server, the longest time until closed, the slowest health answer during the attack, and
the answers seen (status and problem type).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiohttp import web

from qiao import pki
from qiao.config import HubSettings, NodeSettings
from qiao.demo.city import Deployment
from qiao.demo.processes import Process, free_port, write_toml
from qiao.demo.sharing import seed_agreements
from qiao.node.identity import NodeIdentity
from reliability.figures import PROFILE, record
from tests.integration.conftest import LoopThread

N = PROFILE.pick(50, 200)  # connections per listener and attack
# The header and body timeouts of the servers under test (seconds), and their TLS handshake
# timeout: longer, as one attacking process per listener does hundreds of handshakes (and,
# in the full profile, opens 600 connections at once: their first bytes must still come
# before the header timeout for the answers to be told apart).
SHORT = PROFILE.pick(2.0, 6.0)
HANDSHAKE = PROFILE.pick(4.0, 12.0)
MIB = 1024 * 1024
MAX_BODY = MIB  # their max_body_bytes
# A chunked body is sent until the server answers or stops reading, or this much went out:
# the limit plus more than the socket buffers of a loopback connection can hold.
CHUNKED_CAP = 16 * MAX_BODY
# A connection counts as closed "in time" within the timeout plus this much (a shared CPU,
# and a one-second write interval on the attacker's side).
SLACK = 3.0
HEAD_ROUNDS = PROFILE.pick(4, 50)  # rounds of the three huge heads, for the memory figure
GROWTH_MIB = 64  # the most a listener may grow in the second half of those rounds
NODE_GROWTH_MIB = 512  # ... an aiohttp listener (see the memory test)
HEALTH_TARGET_MS = 1000.0
DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


@dataclass
class Listener:
    name: str
    port: int
    pid: int
    # TLS: the CA to verify the server with, and (for a peer listener) the client
    # certificate and key; files, so that a Listener can go to an attacking process.
    tls_files: tuple[str, str, str] | None = None
    health_path: str = "/healthz"
    health_status: int = 200
    body_path: str = ""  # a route that reads the request body, and its headers
    body_headers: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> ssl.SSLContext | None:
        """A client context that completes the handshake (None: plain HTTP)."""
        return _client_context(*self.tls_files) if self.tls_files else None


@functools.cache
def _client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    if cert:
        return pki.client_context(Path(cert), Path(key), Path(ca))
    return ssl.create_default_context(cafile=ca)


@dataclass
class Outcome:
    closed: bool
    seconds: float
    answer: str  # "408 client:request-timeout", "400", or "closed" (no answer)


# --- the city under attack ------------------------------------------------------------------
def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1, for the hub's TLS listener."""
    ca_key, ca = pki.create_ca("limits test CA")
    key = pki.generate_private_key()
    csr = pki.create_csr(key, "hub", "91350100M000100Y43")
    cert = pki.issue_node_certificate(
        ca_key, ca, csr, node_name="hub", org_code="91350100M000100Y43", hosts=["127.0.0.1"], days=2
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(pki.cert_to_pem(ca))
    paths[1].write_bytes(pki.cert_to_pem(cert))
    pki.write_private(paths[2], pki.key_to_pem(key))
    return paths


@dataclass
class Targets:
    listeners: dict[str, Listener]
    events: Listener  # police's app listener, where police-app publishes its events (/e1)


@pytest.fixture(scope="module")
def listeners(targets: Targets) -> dict[str, Listener]:
    return targets.listeners


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    base = tmp_path_factory.mktemp("limits")
    short = {
        "QIAO_HEADER_TIMEOUT_SECONDS": str(SHORT),
        "QIAO_BODY_TIMEOUT_SECONDS": str(SHORT),
        "QIAO_TLS_HANDSHAKE_TIMEOUT_SECONDS": str(HANDSHAKE),
        "QIAO_MAX_BODY_BYTES": str(MAX_BODY),
    }
    # police's backend reads whatever body it is sent and answers 200: what the provider's
    # node lets through reaches it.
    backends = LoopThread()
    city = Deployment(base / "city", backend_urls={"police": backends.serve(_backend())})
    tls_hub: Process | None = None
    with pytest.MonkeyPatch.context() as mp:
        for k, v in short.items():
            mp.setenv(k, v)
        try:
            # The hub over TLS first: it starts while the city is seeded.
            ca, cert, key = _tls_files(base / "tls")
            port = free_port()
            hub_dir = base / "tls-hub"
            values = {"data_dir": str(hub_dir), "port": port, "tls_cert": str(cert)}
            config = write_toml(hub_dir / "hub.toml", {**values, "tls_key": str(key)})
            tls_hub = Process(
                "tls-hub", ["hub", "--config", str(config)], hub_dir / "hub.log", ""
            ).start()
            city.prepare()
            reg = _start_hub(city)
            # market's node calls police's identity verification (POST, an approved
            # agreement): its app listener reads bodies; police's peer listener serves it.
            city.start_nodes(reg, only={"market", "police"})
            hub_tls = (str(ca), "", "")
            _wait_https(f"https://127.0.0.1:{port}/healthz", _client_context(*hub_tls), tls_hub)
            police = city.nodes["police"]
            assert police.process.popen is not None
            events = Listener(
                "node app /e1",
                police.port,
                police.process.popen.pid,
                body_path="/e1/traffic-accidents",
                body_headers={
                    "X-Qiao-Client": city.client("police", "police-app"),
                    "Authorization": f"Bearer {police.api_keys['police-app']}",
                    "Content-Type": "application/json",
                },
            )
            yield Targets(_listeners(city, tls_hub, port, hub_tls), events)
        finally:
            if tls_hub is not None:
                tls_hub.stop()
            city.stop()
            backends.close()


def _backend() -> web.Application:
    async def drain(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
        return web.json_response({"received": size})

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_route("*", "/{tail:.*}", drain)
    return app


def _start_hub(city: Deployment) -> Any:
    """Deployment.start_hub without the demo's people, whom nothing here signs in as."""
    settings = city.hub_settings()
    reg = city.seed_registry(settings)
    city.sharing = seed_agreements(reg, city.codes)
    city.hub_url = settings.public_url
    city.hub = Process(
        "hub",
        ["hub", "--config", str(settings.data_dir / "hub.toml")],
        settings.data_dir / "hub.log",
        f"{city.hub_url}/healthz",
    ).start()
    city.hub.wait_healthy()
    return reg


def _wait_https(url: str, ctx: ssl.SSLContext, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"the TLS hub exited:\n{process.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=ctx, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the TLS hub is not healthy after {timeout} s:\n{process.tail()}")


def _listeners(
    city: Deployment, tls_hub: Process, tls_port: int, hub_tls: tuple[str, str, str]
) -> dict[str, Listener]:
    assert city.hub is not None and city.hub.popen is not None and tls_hub.popen is not None
    market, police = city.nodes["market"], city.nodes["police"]
    assert market.process.popen is not None and police.process.popen is not None
    hub_port = int(city.hub_url.rsplit(":", 1)[1])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # The market node's own certificate, to reach police's peer listener as a node would.
    me = NodeIdentity.load(market.data_dir)
    peer_tls = (str(me.ca_file), str(me.cert_file), str(me.key_file))
    exchange = {
        "X-Qiao-Client": city.client("market", "registration"),
        "X-Qiao-Purpose": "license-review",
        "Authorization": f"Bearer {market.api_keys['registration']}",
        "Content-Type": "application/json",
    }
    police_org = city.codes["police"]
    return {
        "hub http": Listener(
            "hub http",
            hub_port,
            city.hub.popen.pid,
            body_path="/console/sign-in",
            body_headers=form,
        ),
        "hub https": Listener(
            "hub https",
            tls_port,
            tls_hub.popen.pid,
            tls_files=hub_tls,
            body_path="/console/sign-in",
            body_headers=form,
        ),
        "node app": Listener(
            "node app",
            market.port,
            market.process.popen.pid,
            body_path=f"/r1/{police_org}/identity-verification/verify",
            body_headers=exchange,
        ),
        "node peer": Listener(
            "node peer",
            police.peer_port,
            police.process.popen.pid,
            tls_files=peer_tls,
            # No /healthz here: any /r1 call answered as a problem shows it is serving.
            health_path=f"/r1/{police_org}/no-such-resource",
            health_status=0,
            body_path=f"/r1/{police_org}/identity-verification/verify",
            body_headers={"X-Qiao-Client": city.client("market", "registration"), **exchange},
        ),
    }


# --- attackers ------------------------------------------------------------------------------
async def _open(
    target: Listener, *, handshake: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        target.port,
        ssl=target.tls if (target.tls is not None and handshake) else None,
        server_hostname="127.0.0.1" if (target.tls is not None and handshake) else None,
        ssl_handshake_timeout=30 if (target.tls is not None and handshake) else None,
    )


def _answer(data: bytes) -> str:
    """``"408 client:request-timeout"`` for a problem answer, ``"400"`` for another, or
    ``"closed"`` when the server closed without a word."""
    if not data:
        return "closed"
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if m is None:
        return "garbled"
    status = m.group(1).decode()
    t = re.search(rb'"type"\s*:\s*"urn:qiao:problem:([a-z:-]+)"', data)
    return f"{status} {t.group(1).decode()}" if t else status


async def _read_until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bool, bytes]:
    data = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while True:
                try:
                    chunk = await reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    return True, data
                if not chunk:
                    return True, data
                data += chunk
    return False, data


async def _trickle(
    target: Listener, prefix: bytes, drip: bytes, *, handshake: bool = True, limit: float
) -> Outcome:
    """Send ``prefix``, then ``drip`` one byte a second, until the server closes (or
    ``limit`` seconds pass: not closed)."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await _open(target, handshake=handshake)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(True, 0.0, f"refused: {type(exc).__name__}")
    started = loop.time()
    data = b""
    try:
        if prefix:
            writer.write(prefix)
        for byte in drip:
            if loop.time() - started > limit:
                break
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                # A failed write is a closed connection; its answer may still be there.
                writer.write(bytes([byte]))
                await writer.drain()
            closed, more = await _read_until_closed(reader, 1.0)
            data += more
            if closed:
                return Outcome(True, loop.time() - started, _answer(data))
        return Outcome(False, loop.time() - started, _answer(data))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _idle(target: Listener, *, handshake: bool, limit: float) -> Outcome:
    """Connect (with or without the TLS handshake) and say nothing."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await _open(target, handshake=handshake)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(True, 0.0, f"refused: {type(exc).__name__}")
    started = loop.time()
    try:
        closed, data = await _read_until_closed(reader, limit)
        return Outcome(closed, loop.time() - started, _answer(data))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Health:
    """A normal client asking a listener for its health every 0.2 s, each time on a new
    connection (what a newcomer gets during an attack), from a thread of its own so that the
    attackers' event loop does not delay its answers."""

    listener: Listener
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def ask(self) -> None:
        t = self.listener
        url = f"{'https' if t.tls else 'http'}://127.0.0.1:{t.port}{t.health_path}"
        started = time.perf_counter()
        try:
            with httpx.Client(verify=t.tls or False, timeout=5) as client:
                r = client.get(url)
            if t.health_status and r.status_code != t.health_status:
                self.failures.append(f"{r.status_code}")
        except httpx.HTTPError as exc:
            self.failures.append(type(exc).__name__)
        self.latencies_ms.append((time.perf_counter() - started) * 1000)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.ask()
            stop.wait(0.2)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_ms, default=float("inf"))


@contextlib.contextmanager
def _probing(listeners: dict[str, Listener]) -> Iterator[dict[str, Health]]:
    stop = threading.Event()
    probes = {name: Health(t) for name, t in listeners.items()}
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in probes.values()]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # an answer or two before the attack, too
        yield probes
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def _timeout(attack: str) -> float:
    return HANDSHAKE if "handshake" in attack else SHORT


def _record(what: str, outcomes: list[Outcome], timeout: float = SHORT) -> None:
    closed = [o for o in outcomes if o.closed]
    worst = max((o.seconds for o in closed), default=0.0)
    answers = Counter(o.answer for o in outcomes)
    record("limits", f"{what}: connections tried", len(outcomes))
    record(
        "limits",
        f"{what}: closed by the server",
        len(closed),
        target=f"{len(outcomes)}",
        ok=len(closed) == len(outcomes),
    )
    record(
        "limits",
        f"{what}: seconds until closed (max)",
        round(worst, 2),
        "s",
        target=f"<= {timeout + SLACK:g}",
        ok=worst <= timeout + SLACK,
    )
    record("limits", f"{what}: answers", ", ".join(f"{k} ×{v}" for k, v in sorted(answers.items())))


def _record_health(listener: str, during: str, health: Health) -> None:
    record(
        "limits",
        f"{listener}: health latency during {during} (max)",
        round(health.worst_ms, 1),
        "ms",
        target=f"< {HEALTH_TARGET_MS:g}, no failure",
        ok=health.worst_ms < HEALTH_TARGET_MS and not health.failures,
        note=f"{len(health.latencies_ms)} requests; failures: {dict(Counter(health.failures))}",
    )


# --- the tests ------------------------------------------------------------------------------
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Slow: "
LIMIT = HANDSHAKE + SLACK + 2  # how long an attacker waits for the close before giving up


def _body_head(
    target: Listener, length: int | None, path: str = "", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"POST {path or target.body_path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (target.body_headers if headers is None else headers).items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SLOW_CLIENTS: dict[str, Callable[[Listener], Awaitable[Outcome] | None]] = {
    # A request head, a byte a second, never finished.
    "slowloris head": lambda t: _trickle(t, b"", SLOW_HEAD + b"a" * 64, limit=LIMIT),
    # A connection (after the TLS handshake, on TLS listeners) that says nothing.
    "idle connection": lambda t: _idle(t, handshake=True, limit=LIMIT),
    # A TCP connection to a TLS listener that never starts (or finishes) the handshake.
    "TLS handshake never finished": lambda t: (
        _idle(t, handshake=False, limit=LIMIT) if t.tls is not None else None
    ),
    # A whole head promising 100,000 bytes of body, which come a byte a second.
    "slow body": lambda t: _trickle(
        t, _body_head(t, 100_000), b"username=" + b"a" * 64, limit=LIMIT
    ),
}


def _slow_clients(target: Listener) -> dict[str, list[Outcome]]:
    """Every slow-client attack on ``target`` at once, N connections each (in a process)."""

    async def everything() -> dict[str, list[Outcome]]:
        runs = {}
        for attack, make in SLOW_CLIENTS.items():
            first = make(target)
            if first is not None:
                runs[attack] = asyncio.gather(first, *(make(target) for _ in range(N - 1)))
        return {attack: list(await run) for attack, run in runs.items()}

    return asyncio.run(everything())


def test_slow_clients_are_closed_while_others_are_served(listeners: dict[str, Listener]) -> None:
    """Every slow-client attack on every listener at once: each connection is closed by the
    server within its timeout, and a normal client's health request is answered meanwhile."""

    # One attacking process per listener: one process doing hundreds of TLS handshakes
    # would itself be too slow to send its first bytes in time.
    with _probing(listeners) as probes:
        pool = ProcessPoolExecutor(len(listeners), mp_context=multiprocessing.get_context("fork"))
        with pool:
            running = {name: pool.submit(_slow_clients, t) for name, t in listeners.items()}
            outcomes = {
                (name, attack): got
                for name, future in running.items()
                for attack, got in future.result(timeout=120).items()
            }
    for (name, attack), got in outcomes.items():
        _record(f"{name}, {attack}", got, _timeout(attack))
    for name, probe in probes.items():
        _record_health(name, "all slow-client attacks at once", probe)

    for (name, attack), got in outcomes.items():
        late = [o for o in got if not o.closed or o.seconds > _timeout(attack) + SLACK]
        assert not late, (
            f"{name}, {attack}: {len(late)} of {len(got)} not closed in time: {late[:3]}"
        )
    for name, probe in probes.items():
        assert probe.latencies_ms, f"{name}: no health answer during the attacks"
        assert not probe.failures, f"{name}: health requests failed: {Counter(probe.failures)}"
        # The figure's target is HEALTH_TARGET_MS; the assertion leaves room for a shared CPU.
        assert probe.worst_ms < 2 * HEALTH_TARGET_MS, f"{name}: health took {probe.worst_ms:.0f} ms"
    for name in ("hub http", "hub https"):
        # The hub says why before it closes (qiao.hub.limits); aiohttp closes without a word.
        # ("closed": the attacker's first bytes came later than the header timeout, the
        # attacking process being busy with its other connections: an idle connection.)
        for attack in ("slowloris head", "slow body"):
            answers = Counter(o.answer for o in outcomes[name, attack])
            assert answers.keys() <= {"408 client:request-timeout", "closed"}, answers
            assert answers["408 client:request-timeout"] >= N // 2, answers
    # police's peer listener was reading the body (a 100,000-byte Content-Length is within
    # its limit) when its body deadline closed the connection.
    assert {o.answer for o in outcomes["node peer", "slow body"]} == {"closed"}


# --- huge heads ----------------------------------------------------------------------------
HUGE_HEADS = {
    "one 1 MiB header": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: "
    + b"a" * MIB
    + b"\r\n\r\n",
    "10,000 small headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-H%d: a\r\n" % i for i in range(10_000))
    + b"\r\n",
    "1 MiB URL": b"GET /healthz?q=" + b"a" * MIB + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


async def _send(target: Listener, data: bytes, limit: float = 10.0) -> Outcome:
    """Send ``data`` (as much as the server takes) and read the answer until closed."""
    loop = asyncio.get_running_loop()
    reader, writer = await _open(target)
    started = loop.time()
    try:
        writer.write(data)
        closed, answer = await _read_until_closed(reader, limit)
        return Outcome(closed, loop.time() - started, _answer(answer))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MIB


def test_huge_heads_are_refused_and_memory_stays_flat(listeners: dict[str, Listener]) -> None:
    async def rounds(n: int, got: dict[tuple[str, str], list[Outcome]]) -> None:
        for _ in range(n):
            runs = {
                (name, what): asyncio.gather(*(_send(t, head) for _ in range(10)))
                for name, t in listeners.items()
                for what, head in HUGE_HEADS.items()
            }
            for key, run in runs.items():
                got.setdefault(key, []).extend(await run)

    # Memory after a first half of the rounds, then after the second: a leak keeps growing,
    # while the first half also fills the allocator's pools (and aiohttp's refused requests
    # leave reference cycles, exception to frame to the bytes read, that wait for Python's
    # cyclic garbage collector).
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    start = {name: _rss_mib(t.pid) for name, t in listeners.items()}
    asyncio.run(rounds(HEAD_ROUNDS // 2, outcomes))
    middle = {name: _rss_mib(t.pid) for name, t in listeners.items()}
    asyncio.run(rounds(HEAD_ROUNDS - HEAD_ROUNDS // 2, outcomes))
    end = {name: _rss_mib(t.pid) for name, t in listeners.items()}
    for (name, what), got in outcomes.items():
        _record(f"{name}, {what}", got)
    sent = HEAD_ROUNDS * 10 * len(HUGE_HEADS)
    for name in listeners:
        record(
            "limits",
            f"{name}: memory grown in the first half of {sent} huge heads",
            round(middle[name] - start[name], 1),
            "MiB",
        )
        grown = end[name] - middle[name]
        record(
            "limits",
            f"{name}: memory grown in the second half of {sent} huge heads",
            round(grown, 1),
            "MiB",
            target=f"< {GROWTH_MIB}",
            ok=grown < GROWTH_MIB,
        )

    problem = {"431 client:headers-too-large", "414 client:uri-too-long"}
    for (name, what), got in outcomes.items():
        assert all(o.closed for o in got), f"{name}, {what}: a connection stayed open"
        answers = {o.answer for o in got}
        if name.startswith("hub"):
            # Answered as problem+json by the hub's protocol (qiao.hub.limits); "closed" is
            # a reset that beat the answer to the client (the rest of the head was unread).
            assert answers <= problem | {"closed"} and answers & problem, (name, what, answers)
        else:
            # aiohttp's parser refuses these itself: a plain 400, then the connection closes.
            assert answers <= {"400", "closed"} and "400" in answers, (name, what, answers)
    for name in listeners:
        grown = end[name] - middle[name]
        # aiohttp (the nodes) keeps each refused head's bytes in reference cycles until
        # Python's full collection: its memory rises by hundreds of MiB under a sustained
        # flood before it levels off (the figure shows it against the hub's target); the
        # assertion for the nodes only catches growth past that.
        bound = GROWTH_MIB if name.startswith("hub") else NODE_GROWTH_MIB
        assert grown < bound, f"{name} grew {grown:.0f} MiB in the second half"
    for name, t in listeners.items():  # and the listener still serves others
        probe = Health(t)
        probe.ask()
        assert not probe.failures, (name, probe.failures)


# --- huge bodies ---------------------------------------------------------------------------
async def _chunked(target: Listener, head: bytes, limit: float = 10.0) -> tuple[Outcome, int]:
    """A chunked body without end, 64 KiB a chunk, until the server answers, closes or stops
    reading (or CHUNKED_CAP is sent); the outcome and the bytes of body the kernel took
    before that (what the server read, plus what the socket buffers on both sides hold, a
    few MiB on loopback)."""
    loop = asyncio.get_running_loop()
    reader, writer = await _open(target)
    started = loop.time()
    piece = 64 * 1024
    chunk = b"%x\r\n" % piece + b"a" * piece + b"\r\n"
    sent = 0
    # The answer as soon as it starts (b"" if closed): read at once, before a reset from the
    # server (closing with our unread body in its buffer) can discard it.
    first = asyncio.create_task(reader.read(65536))
    try:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(head)
            while not first.done() and sent < CHUNKED_CAP:
                writer.write(chunk)
                sent += piece
                drained = asyncio.ensure_future(writer.drain())
                await asyncio.wait(
                    {drained, first}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
                )
                if not drained.done():  # the server stopped reading: wait for its answer
                    drained.cancel()
                    break
        try:
            begun = await asyncio.wait_for(first, limit)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            begun = b""
        closed, data = await _read_until_closed(reader, limit) if begun else (True, b"")
        return Outcome(closed, loop.time() - started, _answer(begun + data)), sent
    finally:
        first.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def test_huge_bodies_are_refused(targets: Targets) -> None:
    ls = targets.listeners
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    routes = [
        (
            "hub http, JSON route",
            ls["hub http"],
            "/api/v1/organizations",
            {"Content-Type": "application/json"},
        ),
        ("hub http, sign-in form", ls["hub http"], "/console/sign-in", form),
        ("hub https, sign-in form", ls["hub https"], "/console/sign-in", form),
        ("node app, /r1", ls["node app"], "", None),
        ("node app, /e1", targets.events, "", None),
        ("node peer, /r1", ls["node peer"], "", None),
    ]

    async def both(
        what: str, t: Listener, path: str, headers: dict[str, str] | None
    ) -> tuple[str, Outcome, Outcome, int]:
        # Only the head: the answer must come before any of the body is sent.
        declared = await _send(t, _body_head(t, MAX_BODY + 1, path, headers), limit=10)
        chunked, sent = await _chunked(t, _body_head(t, None, path, headers))
        return what, declared, chunked, sent

    async def every_route() -> list[tuple[str, Outcome, Outcome, int]]:
        return list(await asyncio.gather(*(both(*route) for route in routes)))

    results = asyncio.run(every_route())
    for what, declared, chunked, sent in results:
        record("limits", f"{what}, Content-Length over the limit: answer", declared.answer)
        record(
            "limits",
            f"{what}, chunked body without end: answer after",
            f"{chunked.answer}, {sent // 1024} KiB sent",
            target=f"413 (or reset), under {CHUNKED_CAP // 1024} KiB sent",
            ok=chunked.answer.split(" ")[0] in ("413", "closed") and sent < CHUNKED_CAP,
        )
    for what, declared, chunked, sent in results:
        side = "provider" if what.startswith("node peer") else "client"
        want = f"413 {side}:body-too-large"
        assert declared.answer == want and declared.closed, (what, declared)
        if what.startswith("hub"):
            # uvicorn closes at once after the 413, without lingering (RFC 9112 §9.6): with
            # our unread body in its buffer that is a reset, which may beat the answer (or its
            # body) to us. The cut-off itself is what the bytes sent show.
            assert chunked.answer in (want, "413", "closed"), (what, chunked, sent)
        else:
            assert chunked.answer == want, (what, chunked, sent)
        # Cut off at the limit: what was sent beyond it sat in socket buffers.
        assert sent < CHUNKED_CAP, (what, sent)


# --- the defaults are the documented ones ---------------------------------------------------
def _documented() -> dict[str, tuple[str, str]]:
    """setting -> (hub default, node default) from the table in docs/operations.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Limits and timeouts", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if m:
            cells = [re.search(r"`([^`]+)`", c) for c in m.group(2, 3)]
            rows[m.group(1)] = tuple(c.group(1) if c else "" for c in cells)
    return rows  # type: ignore[return-value]


def test_the_defaults_are_the_documented_ones() -> None:
    documented = _documented()
    assert documented, "no table of limits in docs/operations.md"
    hub, node = HubSettings.model_fields, NodeSettings.model_fields
    for name, (hub_value, node_value) in documented.items():
        for fields, value, who in ((hub, hub_value, "hub"), (node, node_value, "node")):
            if not value:
                assert name not in fields, f"{name}: the {who} has it, the docs give no default"
                continue
            assert name in fields, f"docs list {name} for the {who}; it has no such setting"
            assert float(value) == float(fields[name].default), (who, name, value)
    limits = {
        "max_body_bytes",
        "header_timeout_seconds",
        "max_header_bytes",
        "max_headers",
        "body_timeout_seconds",
        "body_min_bytes_per_second",
        "tls_handshake_timeout_seconds",
    }
    assert limits <= documented.keys(), limits - documented.keys()
