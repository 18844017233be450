"""Moving bodies between hops: bounded, hashed, streamed when large.

Small bodies (the common case: a JSON record) are read whole, which keeps the hot path to one
write per hop. Large or unsized bodies stream in 64 KiB chunks and never sit in memory whole;
a request body is cut off as soon as it passes the configured limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import aiohttp
import orjson
from aiohttp import ClientResponse, web

from qiao.db import utcnow
from qiao.exchange.protocol import (
    FORWARD_REQUEST_HEADERS,
    FORWARD_RESPONSE_HEADERS,
    H_CLIENT,
    H_ID,
    H_PURPOSE,
    H_USER,
    Client,
    Target,
    exchange_id,
    optional_text,
    parse_client,
    parse_target,
)
from qiao.exchange.records import Record, RecordWriter
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem, ProblemType

log = logging.getLogger("qiao.exchange")
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


def forward_headers(request: web.Request, rec: Any, omit: Collection[str] = ()) -> dict[str, str]:
    """The headers the next hop gets: a fixed few of the caller's (less those in ``omit``),
    and the Qiao ones."""
    fwd = {h: v for h in FORWARD_REQUEST_HEADERS if h not in omit and (v := request.headers.get(h))}
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


class Exchange:
    """One exchange as a node handles it, consumer or provider side: the record it writes,
    the request body it moves, what came back, and how it ends. Either way the record is
    committed before the caller sees the end of the answer."""

    def __init__(
        self,
        request: web.Request,
        role: str,
        writer: RecordWriter,
        *,
        limit: int,
        too_large: ProblemType,
        broken_off: ProblemType,
    ) -> None:
        self._t0 = time.perf_counter()
        self._broken_off = broken_off  # how to record an answer the next hop broke off
        self._writer = writer
        h = request.headers
        self.record = Record(
            exchange_id=(h.get(H_ID) or "")[:128],
            role=role,
            client=(h.get(H_CLIENT) or "")[:200],
            provider_org="",
            resource="",
            method=request.method,
            path=request.path_qs[:2000],
            started_at=utcnow(),
        )
        self.body = RequestBody(request, limit, too_large)
        self.outcome = ResponseOutcome()
        self.headers: dict[str, str] = {}  # Qiao headers of our answer

    def read(self, request: web.Request) -> tuple[Target, Client]:
        """Check the Qiao headers and the target, filling in the record as far as they go."""
        rec, h = self.record, request.headers
        rec.exchange_id = exchange_id(h.get(H_ID))
        self.headers[H_ID] = rec.exchange_id
        target = parse_target(request.path)
        rec.provider_org, rec.resource = target.provider_org, target.resource
        client = parse_client(h.get(H_CLIENT))
        rec.client = str(client)
        rec.purpose = optional_text(H_PURPOSE, h.get(H_PURPOSE))
        rec.end_user = optional_text(H_USER, h.get(H_USER))
        return target, client

    async def finish(self) -> None:
        rec = self.record
        rec.duration_ms = (time.perf_counter() - self._t0) * 1000
        rec.request_bytes, rec.response_bytes = self.body.size, self.outcome.size
        rec.response_hash = self.outcome.sha256
        rec.problem_type = rec.problem_type or self.outcome.problem_type
        await self._writer.write(rec)

    async def refuse(self, refused: Problem) -> web.Response:
        """Answer with a problem (the body limit's, if the body ran over) and record it."""
        problem = self.body.problem() if self.body.over_limit else refused
        self.record.status, self.record.problem_type = problem.status, problem.kind.uri
        wait = problem.extra.get("retry_after")
        if isinstance(wait, int):
            # RFC 9110 §10.2.3 (and RFC 6585 §4 for 429): delay-seconds, also in the body.
            self.headers["Retry-After"] = str(wait)
        resp = problem_response(problem, self.headers)
        body = resp.body if isinstance(resp.body, bytes) else b""
        # The record hashes what the caller receives, as the caller's node does.
        self.outcome.size, self.outcome.sha256 = len(body), hashlib.sha256(body).hexdigest()
        await self.finish()
        return resp

    async def relay(self, request: web.Request, upstream: ClientResponse) -> web.StreamResponse:
        """Pass the next hop's answer back; record a response that broke off midway as 502."""
        self.record.status = upstream.status
        try:
            return await relay_response(request, upstream, self.headers, self.outcome, self.finish)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.record.status, self.record.problem_type = 502, self._broken_off.uri
            log.warning("exchange %s: the answer broke off: %s", self.record.exchange_id, exc)
            await self.finish()
            raise

    async def relay_checked(
        self,
        request: web.Request,
        upstream: ClientResponse,
        limit: int,
        check: Callable[[bytes | None], Problem | None],
        rewrite: Callable[[bytes], bytes | Problem] | None = None,
        forward: Collection[str] = FORWARD_RESPONSE_HEADERS,
    ) -> web.StreamResponse:
        """Like ``relay``, but the answer is read whole (at most ``limit`` bytes; ``check``
        gets None past it) and ``check``ed before any of it is sent: an answer that fails is
        replaced by the problem ``check`` returns, and recorded so. A passing answer goes on
        byte for byte, unless ``rewrite`` replaces it (masking: the new body is sent without
        a Content-Encoding, and the record hashes what is sent) or refuses it. Of the next
        hop's headers, only those in ``forward`` go on."""
        self.record.status = upstream.status
        try:
            body = await read_limited(upstream, limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("exchange %s: the answer broke off: %s", self.record.exchange_id, exc)
            problem = Problem(self._broken_off, "the answer broke off before it could be checked")
            return await self.refuse(problem)

        def process(body: bytes | None) -> bytes | Problem:
            failed = check(body)
            if failed is not None:
                return failed
            assert body is not None
            return rewrite(body) if rewrite is not None else body

        if body is not None and len(body) > SMALL:
            # Checking megabytes takes milliseconds: keep the event loop serving others.
            outcome = await asyncio.get_running_loop().run_in_executor(None, process, body)
        else:
            outcome = process(body)
        if isinstance(outcome, Problem):
            return await self.refuse(outcome)
        copy_response_headers(upstream, self.headers, forward)
        if outcome is not body:
            # The rewritten body is plain JSON: what it was encoded with no longer applies
            # (web.Response sets Content-Length from the new body).
            self.headers.pop("Content-Encoding", None)
            body = outcome
        assert body is not None
        self.outcome.size = len(body)
        self.outcome.sha256 = hashlib.sha256(body).hexdigest()
        await self.finish()
        return web.Response(body=body, status=upstream.status, headers=self.headers)

    async def relay_replaced(
        self,
        upstream: ClientResponse,
        limit: int,
        replace: Callable[[bytes | None], tuple[bytes, str]],
        forward: Collection[str],
    ) -> web.Response:
        """The next hop's status with a body of our own: its answer is read (at most
        ``limit`` bytes; ``replace`` gets None past it) and ``replace`` makes the body and its
        Content-Type from it (an empty body goes without one). Of the next hop's headers,
        only those in ``forward`` go on, less Content-Encoding (the new body is plain)."""
        self.record.status = upstream.status
        try:
            body = await read_limited(upstream, limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("exchange %s: the answer broke off: %s", self.record.exchange_id, exc)
            problem = Problem(self._broken_off, "the answer broke off before it could be read")
            return await self.refuse(problem)
        new, content_type = replace(body)
        copy_response_headers(upstream, self.headers, forward)
        self.headers.pop("Content-Encoding", None)
        if new:
            self.headers["Content-Type"] = content_type
        else:
            self.headers.pop("Content-Type", None)
        self.outcome.size = len(new)
        self.outcome.sha256 = hashlib.sha256(new).hexdigest()
        self.outcome.problem_type = problem_type_of(content_type, new)
        await self.finish()
        return web.Response(body=new, status=upstream.status, headers=self.headers)


async def read_limited(upstream: ClientResponse, limit: int) -> bytes | None:
    """The whole answer, or None as soon as it is over ``limit`` bytes."""
    length = upstream.content_length
    if length is not None and length > limit:
        return None
    if length is not None and length <= SMALL:
        return await upstream.read()
    parts: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def copy_response_headers(
    upstream: ClientResponse,
    headers: dict[str, str],
    names: Collection[str] = FORWARD_RESPONSE_HEADERS,
) -> None:
    for name in names:
        value = upstream.headers.get(name)
        if value is not None:
            headers[name] = value


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
    copy_response_headers(upstream, headers)
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
