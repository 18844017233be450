"""Moving bodies between hops: bounded, hashed, streamed when large.

Small bodies (the common case: a JSON record) are read whole, which keeps the hot path to one
write per hop. Large or unsized bodies stream in 64 KiB chunks and never sit in memory whole;
a request body is cut off as soon as it passes the configured limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import ClientResponse, web

from qiao.exchange.protocol import (
    FORWARD_REQUEST_HEADERS,
    FORWARD_RESPONSE_HEADERS,
    H_CLIENT,
    H_ID,
    H_PURPOSE,
    H_USER,
)
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem, ProblemType

CHUNK = 64 * 1024
SMALL = 256 * 1024
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class RequestBody:
    """The incoming request body, counted and hashed, refused past ``limit`` bytes."""

    def __init__(self, request: web.Request, limit: int, too_large: ProblemType) -> None:
        self._request = request
        self._limit = limit
        self._too_large = too_large
        self._hash = hashlib.sha256()
        self.size = 0
        self.over_limit = False
        self.complete = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self.size else _EMPTY_SHA256

    def problem(self) -> Problem:
        return Problem(self._too_large, f"the request body is over the {self._limit}-byte limit")

    async def open(self) -> bytes | AsyncIterator[bytes] | None:
        """What to send on: None, the whole small body, or a stream of chunks."""
        req = self._request
        length = req.content_length
        if length is not None and length > self._limit:
            self.over_limit = True
            raise self.problem()
        if not req.body_exists:
            self.complete = True
            return None
        if length is not None and length <= SMALL:
            data = await req.content.readexactly(length)
            self._hash.update(data)
            self.size = len(data)
            self.complete = True
            return data
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        async for chunk in self._request.content.iter_chunked(CHUNK):
            self.size += len(chunk)
            if self.size > self._limit:
                self.over_limit = True
                raise self.problem()
            self._hash.update(chunk)
            yield chunk
        self.complete = True

    async def drain(self) -> None:
        """Read (and hash) what the next hop did not, so the request hash covers all of it."""
        if self.complete:
            return
        async for chunk in self._stream():
            del chunk


def client_session(connector: aiohttp.BaseConnector, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session for relaying: no cookies, no decompression, no automatic headers."""
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        **kwargs,
    )


def forward_headers(request: web.Request, rec: Any) -> dict[str, str]:
    """The headers the next hop gets: a fixed few of the caller's, and the Qiao ones."""
    fwd = {h: v for h in FORWARD_REQUEST_HEADERS if (v := request.headers.get(h))}
    fwd[H_CLIENT] = rec.client
    fwd[H_ID] = rec.exchange_id
    if rec.purpose:
        fwd[H_PURPOSE] = rec.purpose
    if rec.end_user:
        fwd[H_USER] = rec.end_user
    return fwd


def raw_rest(request: web.Request) -> str:
    """The still-encoded part of the request target after ``/r1/{org}/{resource}``, query
    included, so it travels on byte for byte instead of being decoded and re-encoded."""
    path, sep, query = request.raw_path.partition("?")
    parts = path.split("/", 4)
    rest = "/" + parts[4] if len(parts) == 5 and parts[4] else ""
    return rest + sep + query


def problem_response(p: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=p.to_json(), status=p.status, content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


def problem_type_of(content_type: str, body: bytes) -> str:
    if not content_type.startswith(PROBLEM_CONTENT_TYPE) or len(body) > 65536:
        return ""
    try:
        value = orjson.loads(body).get("type", "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return value[:120] if isinstance(value, str) else ""


class ResponseOutcome:
    def __init__(self) -> None:
        self.size = 0
        self.sha256 = _EMPTY_SHA256
        self.problem_type = ""


async def relay_response(
    request: web.Request,
    upstream: ClientResponse,
    headers: dict[str, str],
    outcome: ResponseOutcome,
    before_end: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    """Send ``upstream``'s answer to our caller; ``before_end`` runs before the last byte, so
    the exchange record is durable by the time the caller sees the response complete."""
    for name in FORWARD_RESPONSE_HEADERS:
        value = upstream.headers.get(name)
        if value is not None:
            headers[name] = value
    length = upstream.content_length
    if length is not None and length <= SMALL:
        body = await upstream.read()
        outcome.size = len(body)
        outcome.sha256 = hashlib.sha256(body).hexdigest()
        outcome.problem_type = problem_type_of(upstream.headers.get("Content-Type", ""), body)
        await before_end()
        return web.Response(body=body, status=upstream.status, headers=headers)
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    digest = hashlib.sha256()
    async for chunk in upstream.content.iter_chunked(CHUNK):
        digest.update(chunk)
        outcome.size += len(chunk)
        await resp.write(chunk)
    outcome.sha256 = digest.hexdigest()
    await before_end()
    await resp.write_eof()
    return resp


def upstream_failure(
    exc: BaseException, unreachable: ProblemType, timeout: ProblemType, what: str
) -> Problem:
    if isinstance(exc, TimeoutError):
        return Problem(timeout, f"{what} did not answer in time")
    return Problem(unreachable, f"{what} could not be reached: {exc.__class__.__name__}: {exc}")
