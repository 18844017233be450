"""The node listeners' limits and timeouts (qiao.node.limits) on a real aiohttp server on
loopback, with short timeouts."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from qiao import pki
from qiao.config import NodeSettings
from qiao.demo.processes import free_port
from qiao.node import limits
from tests.hub.test_limits import _tls_files, _until_closed, exchange
from tests.integration.conftest import LoopThread


def _settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings.load(
        None,
        data_dir=tmp_path,
        header_timeout_seconds=0.5,
        body_timeout_seconds=0.5,
        body_min_bytes_per_second=1000,
        max_header_bytes=4096,
        max_headers=16,
        tls_handshake_timeout_seconds=0.5,
    )


def _app(s: NodeSettings) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"received": len(body)})

    async def health(_r: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(
        middlewares=[limits.body_deadline(s.body_timeout_seconds, s.body_min_bytes_per_second)]
    )
    app.router.add_post("/echo", echo)
    app.router.add_get("/healthz", health)
    return app


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


def _serve(lt: LoopThread, s: NodeSettings, ssl_context: ssl.SSLContext | None = None) -> int:
    port = free_port()

    async def start() -> None:
        runner = web.AppRunner(_app(s), access_log=None, **limits.runner_options(s))
        await runner.setup()
        await limits.HandshakeDeadlineSite(
            runner,
            "127.0.0.1",
            port,
            ssl_context=ssl_context,
            ssl_handshake_timeout=s.tls_handshake_timeout_seconds,
        ).start()
        lt.runners.append(runner)

    lt.run(start())
    return port


def test_the_settings_reach_aiohttp(tmp_path: Path) -> None:
    options = limits.runner_options(_settings(tmp_path))
    assert options == {
        "keepalive_timeout": 0.5,
        "max_line_size": 4096,
        "max_field_size": 4096,
        "max_headers": 16,
        "lingering_time": 0.5,
    }
    # The defaults: aiohttp's own keep-alive (3630 s) would let a slow head stay an hour.
    default = limits.runner_options(NodeSettings.load(None, data_dir=tmp_path))
    assert default["keepalive_timeout"] == 20 and default["lingering_time"] == 10


def test_a_head_that_never_finishes_is_closed(tmp_path: Path, loop_thread: LoopThread) -> None:
    port = _serve(loop_thread, _settings(tmp_path))
    slow = [bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaa"]
    took, data = exchange(port, *slow, pause=0.05)
    assert data == b"" and took < 3
    took, data = exchange(port)  # nothing at all
    assert data == b"" and 0.4 < took < 3


def test_huge_heads_get_400(tmp_path: Path, loop_thread: LoopThread) -> None:
    port = _serve(loop_thread, _settings(tmp_path))
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /healthz?q=" + b"a" * 1024 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        data = exchange(port, head)[1]
        # aiohttp's parser refuses it: a plain 400 (as HTTP/1.0), then the connection closes.
        assert data.split(b" ", 2)[1] == b"400", data[:200]


def test_a_trickled_body_is_cut_off_and_a_steady_one_goes_through(
    tmp_path: Path, loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    port = _serve(loop_thread, _settings(tmp_path))
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n"
    with caplog.at_level(logging.INFO):
        took, data = exchange(port, head, *[b"a"] * 40, pause=0.05)
    assert b"200" not in data and took < 3
    assert "bytes of request body" in caplog.text  # said once, at INFO
    # The handler's failed read is not an error of the node's to log with a traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    head = head.replace(b"100", b"3000")
    data = exchange(port, head, *[b"a" * 100] * 30, pause=0.05)[1]
    assert data.startswith(b"HTTP/1.1 200") and b'"received": 3000' in data


def test_a_tls_handshake_never_finished_is_dropped(tmp_path: Path, loop_thread: LoopThread) -> None:
    ca, cert, key = _tls_files(tmp_path)
    server = pki.server_context(cert, key, ca)
    port = _serve(loop_thread, _settings(tmp_path), server)
    took, data = exchange(port)
    assert data == b"" and 0.4 < took < 3
    # A peer that finishes its handshake is served.
    client = pki.client_context(cert, key, ca)
    raw = socket.create_connection(("127.0.0.1", port))
    with client.wrap_socket(raw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _until_closed(s, time.monotonic(), 5)[1].startswith(b"HTTP/1.1 200")
