"""What a client may send the node's listeners, and how slowly.

aiohttp's server (3.14) bounds the request head itself: at most ``max_line_size`` bytes of
request line, ``max_field_size`` per header field and ``max_headers`` fields, each refused
by its parser with a plain-text 400 and a closed connection (before any middleware of ours
runs). It has no separate timeout for reading the head, but its keep-alive timer does that
job: it is armed when the connection opens and after each answer, is not pushed back by
incoming bytes, and closes the connection if no complete request head has arrived by then.
So ``header_timeout_seconds`` is given as aiohttp's ``keepalive_timeout`` (whose default,
3630 s, let a slowloris client hold a connection for an hour).

What aiohttp does not do, this module adds:

* :func:`body_deadline`: a request body must arrive within ``body_timeout_seconds``, plus
  one second per ``body_min_bytes_per_second`` received (Apache mod_reqtimeout's MinRate);
  otherwise the connection is closed (the handler is reading it, so there is no answering).
  ``client_max_size`` and the gateways' own counting (qiao.exchange.relay) bound its size.
* :class:`HandshakeDeadlineSite`: the peer listener drops TLS handshakes not finished within
  ``tls_handshake_timeout_seconds`` (asyncio's ``ssl_handshake_timeout``, default 60 s,
  which aiohttp's TCPSite does not expose).

docs/operations.md ("Limits and timeouts") lists the settings and their defaults.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from qiao import problems
from qiao.config import NodeSettings
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("qiao.node")


def runner_options(s: NodeSettings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: they reach each connection's handler."""
    return {
        "keepalive_timeout": s.header_timeout_seconds,
        "max_line_size": s.max_header_bytes,
        "max_field_size": s.max_header_bytes,
        "max_headers": s.max_headers,
        # After an answer given before the whole body came, aiohttp reads and discards the
        # rest for this long (10 s by default) so that the client reads the answer: no
        # longer than a body may take.
        "lingering_time": min(10.0, s.body_timeout_seconds),
    }


def body_deadline(timeout: float, min_bytes_per_second: int) -> Middleware:
    """Middleware closing the connection of a request whose body arrives too slowly."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():  # most requests: all here already
            return await handler(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        transport = request.transport

        def check() -> None:
            if content.is_eof() or transport is None or transport.is_closing():
                return
            due = started + timeout + content.total_bytes / min_bytes_per_second
            if loop.time() < due:
                timer[0] = loop.call_at(due, check)
                return
            log.info(
                "closing %s: %d bytes of request body in %.0f s (body_timeout_seconds)",
                request.remote,
                content.total_bytes,
                loop.time() - started,
            )
            cut_off.append(True)
            transport.close()

        cut_off: list[bool] = []
        timer = [loop.call_at(started + timeout, check)]
        try:
            return await handler(request)
        except Exception:
            if not cut_off:
                raise
            # The handler's read failed because the connection was closed here: no error of
            # the node's to log, and an answer that goes nowhere.
            return web.Response(
                body=Problem(problems.REQUEST_TIMEOUT).to_json(),
                status=problems.REQUEST_TIMEOUT.status,
                content_type=PROBLEM_CONTENT_TYPE,
            )
        finally:
            timer[0].cancel()

    return deadline


class HandshakeDeadlineSite(web.TCPSite):
    """A TCPSite whose TLS handshakes must finish within ``ssl_handshake_timeout``."""

    def __init__(self, *args: Any, ssl_handshake_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_handshake_timeout = ssl_handshake_timeout

    async def start(self) -> None:
        # TCPSite.start with the one argument it lacks.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._ssl_handshake_timeout if self._ssl_context else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
