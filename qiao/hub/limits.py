"""What a client may send the hub, and how slowly: the listener's limits and timeouts.

uvicorn (0.54) bounds neither the request head nor the time it takes: it has a keep-alive
timeout between requests, but nothing closes a connection that never finishes its request
line and headers (slowloris), and its httptools parser (llhttp) keeps every header byte it
is sent. Nor does anything in Starlette bound a request body before a form or JSON is
parsed. So the hub's listener adds, each at the cheapest place:

* :class:`HeadLimitsProtocol` (uvicorn's httptools protocol, four small overrides): the
  request line and headers must arrive within ``header_timeout_seconds`` of the connection
  (or of the first byte of a later request on it), in at most ``max_header_bytes`` bytes,
  ``max_url_bytes`` of URL and ``max_headers`` fields. Refused with 408, 431 or 414
  problem+json and ``Connection: close`` (RFC 9110 §15.5.9, §15.5.15; RFC 6585 §5).
* :class:`BodyLimits` (pure ASGI middleware, outside the app): a Content-Length over
  ``max_body_bytes`` is refused with 413 before a byte of the body is read (nor is
  ``100 Continue`` sent); a body without one (chunked) is counted as it streams and cut off
  at the limit; a body must arrive within ``body_timeout_seconds``, extended by one second
  per ``body_min_bytes_per_second`` received (Apache mod_reqtimeout's MinRate), or 408.
* :func:`event_loop_factory`: TLS handshakes not finished within
  ``tls_handshake_timeout_seconds`` are dropped (asyncio's default is 60 s, and uvicorn
  offers no setting for it).

docs/operations.md ("Limits and timeouts") lists the settings and their defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from qiao import problems
from qiao.config import HubSettings
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem


@dataclass(frozen=True)
class Limits:
    """The hub listener's limits (see :class:`qiao.config.HubSettings`)."""

    max_body_bytes: int
    header_timeout: float
    max_header_bytes: int
    max_url_bytes: int
    max_headers: int
    body_timeout: float
    body_min_rate: int
    tls_handshake_timeout: float

    @classmethod
    def of(cls, s: HubSettings) -> Limits:
        return cls(
            max_body_bytes=s.max_body_bytes,
            header_timeout=s.header_timeout_seconds,
            max_header_bytes=s.max_header_bytes,
            max_url_bytes=s.max_url_bytes,
            max_headers=s.max_headers,
            body_timeout=s.body_timeout_seconds,
            body_min_rate=s.body_min_bytes_per_second,
            tls_handshake_timeout=s.tls_handshake_timeout_seconds,
        )


def _problem_bytes(p: Problem) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = p.to_json()
    return body, [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        # The rest of the request is never read: the connection cannot carry another one.
        (b"connection", b"close"),
    ]


# --- the request head --------------------------------------------------------------------
class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing; httptools re-raises it as the context of
    an HttpParserCallbackError, which uvicorn answers through send_400_response."""


class HeadLimitsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and size limits on the request head."""

    limits: ClassVar[Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # waiting for (the rest of) a request line and headers
        self._head_started = False  # some of this head has arrived
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: Problem | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the connection on: a client that connects and sends nothing is closed too
        # (uvicorn arms its keep-alive timer only after a first response).
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted per read, before the parser has kept more than one read (at most 256 KiB)
        # beyond the limit: llhttp itself keeps whatever it is sent.
        if (
            self._in_head
            and self._head_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(
                Problem(
                    problems.HEADERS_TOO_LARGE,
                    f"the request line and headers are over {self.limits.max_header_bytes} bytes",
                )
            )

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the last request parsed: the one answered, unless pipelined
        if (
            cycle is not None
            and cycle.response_complete
            and cycle.more_body
            and not self.transport.is_closing()
        ):
            # Answered before the whole body came (a refusal, mostly): uvicorn would go on
            # parsing the rest, and every trickled byte would push its keep-alive timer back.
            # The rest is never read, so the connection ends (RFC 9112 §9.6).
            self.transport.close()

    # Parser callbacks.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_started = True
        self._header_count = 0
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._refusal = Problem(
                problems.URI_TOO_LONG, f"the URL is over {self.limits.max_url_bytes} bytes"
            )
            raise _HeadRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = Problem(
                problems.HEADERS_TOO_LARGE,
                f"more than {self.limits.max_headers} header fields",
            )
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._in_head = False
        self._head_started = False
        self._head_bytes = 0
        super().on_headers_complete()

    # ---
    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started or self._head_bytes:
            self._refuse(
                Problem(
                    problems.REQUEST_TIMEOUT,
                    f"the request line and headers did not arrive within "
                    f"{self.limits.header_timeout:g} seconds",
                )
            )
        else:  # connected and never said a word: nobody to answer
            self.transport.close()

    def _refuse(self, p: Problem) -> None:
        """Answer ``p`` and close: nothing after a refused head can be parsed."""
        self._stop_head_timer()
        body, headers = _problem_bytes(p)
        out = [STATUS_LINE[p.status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            out += [name, b": ", value, b"\r\n"]
        out += [b"\r\n", body]
        self.transport.write(b"".join(out))
        self.transport.close()


def protocol_class(limits: Limits) -> type[HeadLimitsProtocol]:
    """The protocol class uvicorn is given (``http=``), bound to ``limits``."""
    return type("HubHttpProtocol", (HeadLimitsProtocol,), {"limits": limits})


# --- the request body --------------------------------------------------------------------
class BodyLimits:
    """ASGI middleware bounding request bodies in size and in time (outermost, so no route,
    form parser or JSON decoder ever sees more than ``max_body_bytes``)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                has_body = True
                try:
                    length = int(value)
                except ValueError:  # llhttp refuses these already; if not, count as it comes
                    length = None
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body or length == 0:  # most requests: nothing more to do
            await self.app(scope, receive, send)
            return
        if length is not None and length > self.limits.max_body_bytes:
            await _answer(send, _too_large(self.limits, length))
            return
        guard = _GuardedBody(self.limits, receive, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            # Once refused, the app only saw a disconnect: whatever it made of that is moot.
            if guard.refused is None:
                raise


def _too_large(limits: Limits, length: int | None = None) -> Problem:
    said = f"{length} bytes is" if length is not None else "the body is"
    return Problem(
        problems.BODY_TOO_LARGE,
        f"{said} over the hub's {limits.max_body_bytes}-byte limit (max_body_bytes)",
    )


async def _answer(send: Send, p: Problem) -> None:
    body, headers = _problem_bytes(p)
    await send({"type": "http.response.start", "status": p.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _GuardedBody:
    """One request's receive and send, counting the body and timing it."""

    def __init__(self, limits: Limits, receive: Receive, send: Send) -> None:
        self._limits = limits
        self._receive = receive
        self._send = send
        self._started: float | None = None
        self._received = 0
        self._response_started = False
        self.refused: Problem | None = None

    async def receive(self) -> Message:
        if self.refused is not None:
            return {"type": "http.disconnect"}
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        lim = self._limits
        deadline = self._started + lim.body_timeout + self._received / lim.body_min_rate
        try:
            async with asyncio.timeout_at(deadline):
                message: Message = await self._receive()
        except TimeoutError:
            await self._refuse(
                Problem(
                    problems.REQUEST_TIMEOUT,
                    f"the body arrived too slowly: {self._received} bytes in "
                    f"{loop.time() - self._started:.0f} seconds",
                )
            )
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > lim.max_body_bytes:
                await self._refuse(_too_large(lim))
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused is not None:
            return  # the app's answer to a request it never fully got goes nowhere
        if message["type"] == "http.response.start":
            self._response_started = True
        await self._send(message)

    async def _refuse(self, p: Problem) -> None:
        self.refused = p
        if not self._response_started:
            await _answer(self._send, p)
        # Otherwise the app's answer is cut short, and uvicorn closes the connection.


# --- TLS handshakes ----------------------------------------------------------------------
class _HandshakeDeadline:
    """Event loop mixin: servers with TLS drop handshakes not finished in time (asyncio's
    ``ssl_handshake_timeout``, which uvicorn does not expose)."""

    tls_handshake_timeout: ClassVar[float]

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.tls_handshake_timeout)
        return await super().create_server(*args, **kwargs)  # type: ignore[misc]


def event_loop_factory(tls_handshake_timeout: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop (asyncio's without it) with the TLS handshake deadline."""
    base: type[asyncio.AbstractEventLoop]
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        base = asyncio.SelectorEventLoop
    loop_class: type[asyncio.AbstractEventLoop] = type(
        "HubEventLoop",
        (_HandshakeDeadline, base),
        {"tls_handshake_timeout": tls_handshake_timeout},
    )
    return loop_class
