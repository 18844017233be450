"""The hub listener's limits and timeouts (qiao.hub.limits), on a real uvicorn server on
loopback with short timeouts."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qiao import pki
from qiao.config import HubSettings
from qiao.demo.processes import free_port
from qiao.hub import limits
from qiao.hub.server import uvicorn_config

LIMITS = limits.Limits(
    max_body_bytes=10_000,
    header_timeout=0.5,
    max_header_bytes=8192,
    max_url_bytes=1024,
    max_headers=16,
    body_timeout=0.5,
    body_min_rate=1000,
    tls_handshake_timeout=0.5,
)


class Calls:
    def __init__(self) -> None:
        self.count = 0


def _app(calls: Calls) -> Starlette:
    async def echo(request: Request) -> Response:
        calls.count += 1
        body = await request.body()
        return JSONResponse({"received": len(body)})

    async def early(_r: Request) -> Response:  # answers without reading the body
        return Response("no", status_code=403)

    async def health(_r: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/early", early, methods=["POST"]),
            Route("/healthz", health),
        ]
    )


@contextmanager
def serving(config: uvicorn.Config, handshake_timeout: float = 0.5) -> Iterator[int]:
    server = uvicorn.Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=limits.event_loop_factory(handshake_timeout)) as r:
            r.run(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(10)


def _config(app: Any, port: int, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        limits.BodyLimits(app, LIMITS),
        host="127.0.0.1",
        port=port,
        http=limits.protocol_class(LIMITS),
        lifespan="off",
        log_level="warning",
        **kwargs,
    )


@pytest.fixture
def hub() -> Iterator[tuple[int, Calls]]:
    calls = Calls()
    with serving(_config(_app(calls), free_port())) as port:
        yield port, calls


def exchange(
    port: int, *parts: bytes, pause: float = 0.0, wait: float = 5.0
) -> tuple[float, bytes]:
    """Send ``parts`` (``pause`` seconds apart), then read until the server closes; the
    seconds from connecting to the close, and what it said."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            try:
                s.sendall(part)
            except OSError:
                break
        return _until_closed(s, started, wait)


def _until_closed(s: socket.socket, started: float, wait: float) -> tuple[float, bytes]:
    s.settimeout(wait)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"not closed within {wait} s; got {data[:200]!r}") from None
    return time.monotonic() - started, data


def problem(data: bytes, status: int, name: str) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"content-type: application/problem+json" in head.lower(), head
    assert b"connection: close" in head.lower(), head
    doc: dict[str, Any] = orjson.loads(body)
    assert doc["type"] == f"urn:qiao:problem:client:{name}" and doc["status"] == status
    return doc


def test_a_request_head_that_never_finishes_gets_408_and_is_closed(
    hub: tuple[int, Calls],
) -> None:
    port, calls = hub
    took, data = exchange(port, b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", pause=0.2)
    problem(data, 408, "request-timeout")
    assert 0.4 < took < 3
    # One byte at a time does not push the deadline back (slowloris).
    slow = [bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaa"]
    took, data = exchange(port, *slow, pause=0.05)
    problem(data, 408, "request-timeout")
    assert took < 3
    assert calls.count == 0


def test_a_connection_that_says_nothing_is_closed(hub: tuple[int, Calls]) -> None:
    port, _ = hub
    took, data = exchange(port)
    assert data == b"" and 0.4 < took < 3


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(
    hub: tuple[int, Calls],
) -> None:
    port, _ = hub
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        took, data = _until_closed(s, started, 5)
    problem(data, 408, "request-timeout")
    assert took < 3


def test_huge_heads_are_refused(hub: tuple[int, Calls]) -> None:
    port, calls = hub
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n"
    problem(exchange(port, big)[1], 431, "headers-too-large")
    many = b"".join(b"X-H%d: a\r\n" % i for i in range(17))
    doc = problem(
        exchange(port, b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n")[1], 431, "headers-too-large"
    )
    assert "16 header fields" in doc["detail"]
    url = b"GET /healthz?q=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    problem(exchange(port, url)[1], 414, "uri-too-long")
    # Within the limits, all is well.
    ok = b"GET /healthz?q=" + b"a" * 900 + b" HTTP/1.1\r\nHost: x\r\n" + many[:100] + b"\r\n"
    assert exchange(port, ok.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))[
        1
    ].startswith(b"HTTP/1.1 200")
    assert calls.count == 0


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    hub: tuple[int, Calls],
) -> None:
    port, calls = hub
    # Only the head is sent: the answer comes without waiting for the body (nor a 100).
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10001\r\n\r\n"
    )
    took, data = exchange(port, head)
    doc = problem(data, 413, "body-too-large")
    assert "10001 bytes" in doc["detail"] and took < 2
    assert b"100 Continue" not in data
    assert calls.count == 0


def test_a_chunked_body_is_cut_off_at_the_limit(hub: tuple[int, Calls]) -> None:
    port, _ = hub
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"1000\r\n" + b"a" * 4096 + b"\r\n"] * 3  # 12,288 bytes > 10,000
    problem(exchange(port, head, *chunks, pause=0.05)[1], 413, "body-too-large")
    # Up to the limit it goes through.
    ok = [b"1000\r\n" + b"a" * 4096 + b"\r\n"] * 2 + [b"0\r\n\r\n"]
    data = exchange(port, head.replace(b"Host: x", b"Host: x\r\nConnection: close"), *ok)[1]
    assert data.startswith(b"HTTP/1.1 200") and b'"received":8192' in data


def test_a_trickled_body_gets_408_while_a_steady_one_goes_through(
    hub: tuple[int, Calls],
) -> None:
    port, _ = hub
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n"
    took, data = exchange(port, head, *[b"a"] * 40, pause=0.05)
    doc = problem(data, 408, "request-timeout")
    assert "too slowly" in doc["detail"] and took < 3
    # 3,000 bytes over about 1.5 s: longer than body_timeout (0.5 s), but 2,000 bytes a second
    # keeps ahead of body_min_rate (1,000), which extends the deadline.
    head = head.replace(b"100", b"3000")
    data = exchange(port, head, *[b"a" * 100] * 30, pause=0.05)[1]
    assert data.startswith(b"HTTP/1.1 200") and b'"received":3000' in data


def test_an_answer_given_before_the_body_came_closes_the_connection(
    hub: tuple[int, Calls],
) -> None:
    port, _ = hub
    # Without this the rest of the body would be parsed forever, each byte pushing uvicorn's
    # keep-alive timer back.
    head = b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    took, data = exchange(port, head, b"a" * 10, *[b"a"] * 5, pause=0.3)
    assert data.startswith(b"HTTP/1.1 403") and took < 3


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_key, ca = pki.create_ca("test CA")
    key = pki.generate_private_key()
    csr = pki.create_csr(key, "hub", "91350100M000100Y43")
    cert = pki.issue_node_certificate(
        ca_key, ca, csr, node_name="hub", org_code="91350100M000100Y43", hosts=["127.0.0.1"], days=1
    )
    files = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    files[0].write_bytes(pki.cert_to_pem(ca))
    files[1].write_bytes(pki.cert_to_pem(cert))
    pki.write_private(files[2], pki.key_to_pem(key))
    return files


def test_a_tls_handshake_never_finished_is_dropped(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    config = _config(_app(Calls()), free_port(), ssl_certfile=str(cert), ssl_keyfile=str(key))
    with serving(config) as port:
        took, data = exchange(port)  # TCP only: no ClientHello
        assert data == b"" and 0.4 < took < 3
        # A client that finishes its handshake is served, and its head is timed as usual.
        ctx = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection(("127.0.0.1", port))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            problem(_until_closed(s, time.monotonic(), 5)[1], 408, "request-timeout")


def test_the_sign_in_form_is_refused_before_any_parsing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HubSettings.load(
        None,
        data_dir=tmp_path,
        port=free_port(),
        max_body_bytes=10_000,
        body_timeout_seconds=0.5,
        header_timeout_seconds=2,
    )
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    with serving(uvicorn_config(settings)) as port:
        head = b"POST /console/sign-in HTTP/1.1\r\nHost: x\r\n" + form
        problem(exchange(port, head + b"Content-Length: 10001\r\n\r\n")[1], 413, "body-too-large")
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
        piece = b"1000\r\nusername=" + b"a" * (4096 - 9) + b"\r\n"
        problem(exchange(port, chunked, *[piece] * 3)[1], 413, "body-too-large")
        # A body cut off by its deadline: the app saw a disconnect, which is no error of the
        # hub's (it used to be logged as "unhandled error" with a traceback).
        with caplog.at_level(logging.ERROR):
            data = exchange(port, head + b"Content-Length: 100\r\n\r\nusername=a", wait=5)[1]
        problem(data, 408, "request-timeout")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
