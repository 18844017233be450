"""The event routes of a node's app listener (docs/events.md).

- ``POST /e1/{stream}``: the provider's backend publishes records of its organization's
  stream: one JSON object, or ``{"events": [...]}`` with at most 1000. 202 with each event's
  id and its offset in each subscribing node's log, once every log holds it.
- ``GET /e1/{provider-org}/{stream}?after=&limit=&wait=``: an app pulls what this node
  received. ``after`` defaults to the node's acknowledged offset; ``wait`` (seconds, at most
  30) makes it a long poll. Answers ``{"events": [...], "next": offset}``.
- The same ``GET`` with ``Accept: text/event-stream``: server-sent events (WHATWG HTML
  §9.2), one ``event: event`` per event with its offset as ``id``, until the agreement stops
  admitting the app (a final ``event: error`` with the problem) or ``sse_max_seconds`` pass.
  Resumes after ``Last-Event-ID``; never acknowledges.
- ``since=<RFC 3339 date-time>`` (pull and server-sent events): replay from a time.
- ``POST /e1/{provider-org}/{stream}/ack`` with ``{"offset": N}``: the node has handled
  everything up to N (positions are per node, shared by its apps).

Apps authenticate as for the exchange: ``Authorization: Bearer <API key>`` of an app of this
node's organization, scoped to the stream's resource, or an access token the hub issued to an
app of this organization with the exchange scope (RFC 9068), whose subject is then the end
user. A pull is decided under the policy as a ``GET`` of the resource itself (path "") with
the app's ``X-Qiao-Purpose`` and ``X-Qiao-User``: an app receives only the events the provider
masked under the agreement that admits it (or one it renews, or that renews it), so it sees
only what its own agreement lets it see.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import nats.errors
import orjson
from aiohttp import web

from qiao import problems
from qiao.agreements.policy import Decision
from qiao.db import utcnow
from qiao.events.delivery import MAX_LIMIT, MAX_WAIT, DeliveredEvent, Delivery
from qiao.events.publisher import MAX_EVENTS, Publisher
from qiao.events.records import DeliveredRecord, EventRecorder, PublishedRecord
from qiao.events.remote import HubError
from qiao.exchange import protocol as p
from qiao.exchange.consumer import TokenVerifier, accept_access_token
from qiao.exchange.keys import ApiKeyService
from qiao.identity.access_tokens import looks_like_jwt
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("qiao.events.node_api")

_ORG = r"[A-Za-z0-9_-]{1,64}"
_CODE = r"[a-z0-9][a-z0-9-]{0,63}"
_READ_CHUNK = 64 * 1024

# Server-sent events (WHATWG HTML §9.2). The policy is decided again before every fetch, and a
# fetch waits at most SSE_POLL seconds, so a revoked or suspended agreement, or a
# configuration the node may no longer use, ends a stream within about a second of the node
# learning of it.
SSE_POLL = 1.0
SSE_CHUNK = 100  # events per fetch (and per record of delivery)
SSE_KEEPALIVE = 15.0  # seconds of silence before a comment line, so proxies keep the line
SSE_MAX_SECONDS = 30 * 60.0  # a stream ends after this; the client reconnects and resumes
SSE_WRITE_TIMEOUT = 30.0  # seconds one write may wait for a slow client
SSE_RETRY_MS = 3000  # the reconnection time the client is told (the "retry" field)
SSE_CONTENT_TYPE = "text/event-stream"
# RFC 3339 §5.6 date-time, with the "T" and "Z" of any case (§5.6, NOTE).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


@dataclass(frozen=True)
class Caller:
    """Who calls an event route: an app of this node's organization, and the end user it
    acts for (the access token's subject, or the app's ``X-Qiao-User``)."""

    client: str
    end_user: str


class EventsApi:
    """Handlers for the event routes; ``routes()`` gives them to the node's app listener."""

    def __init__(
        self,
        *,
        conf_cache: ConfigurationCache,
        identity: NodeIdentity,
        keys: ApiKeyService,
        publisher: Publisher,
        delivery: Delivery,
        recorder: EventRecorder,
        max_body_bytes: int,
        tokens: TokenVerifier | None = None,
        sse_max_seconds: float = SSE_MAX_SECONDS,
        sse_keepalive_seconds: float = SSE_KEEPALIVE,
    ) -> None:
        self._conf = conf_cache
        self._identity = identity
        self._keys = keys
        self._publisher = publisher
        self._delivery = delivery
        self._recorder = recorder
        self._max_body = max_body_bytes
        # The hub's access tokens are accepted only with a verifier (the consumer gateway's).
        self._tokens = tokens
        self._sse_max = sse_max_seconds
        self._sse_keepalive = sse_keepalive_seconds
        self._closing = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"/e1/{{stream:{_CODE}}}", self.publish),
            web.get(f"/e1/{{provider:{_ORG}}}/{{stream:{_CODE}}}", self.pull),
            web.post(f"/e1/{{provider:{_ORG}}}/{{stream:{_CODE}}}/ack", self.ack),
        ]

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """End the open event streams (an ``on_shutdown`` hook: the server then waits for
        their handlers, which return within ``SSE_POLL``); their clients reconnect."""
        self._closing.set()

    # --- handlers --------------------------------------------------------------------------
    async def publish(self, request: web.Request) -> web.Response:
        try:
            started = utcnow()
            code = request.match_info["stream"]
            caller = await self._caller(request, self._identity.org, code)
            events = _events(await self._body(request))
            published = await self._publisher.publish(code, events)
            await self._recorder.published(
                client=caller.client,
                stream=code,
                events=[PublishedRecord(e.event_id, e.event, e.offsets) for e in published],
                started_at=started,
            )
            return _json(
                {"events": [{"event_id": e.event_id, "offsets": e.offsets} for e in published]},
                202,
            )
        except Problem as refused:
            return _problem(refused, request)
        except BROKER_FAILURES as exc:
            return _broker_down(problems.PROVIDER_BROKER_UNAVAILABLE, exc, request)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        if _wants_event_stream(request):
            return await self.stream(request)
        try:
            started = utcnow()
            provider, code = request.match_info["provider"], request.match_info["stream"]
            caller = await self._caller(request, provider, code)
            decision = self._decide(request, caller, provider, code)
            q = request.query
            after = await self._start(request, provider, code, last_event_id=False)
            pulled = await self._delivery.pull(
                provider,
                code,
                after=after,
                limit=_int(q, "limit", 1, MAX_LIMIT) if "limit" in q else 100,
                wait=float(_int(q, "wait", 0, int(MAX_WAIT))) if "wait" in q else 0.0,
                agreement=decision.agreement.id,
            )
            await self._delivered(caller, provider, code, pulled.events, "pull", started)
            return _json({"events": [e.to_json() for e in pulled.events], "next": pulled.next})
        except Problem as refused:
            return _problem(refused, request)
        except BROKER_FAILURES as exc:
            return _broker_down(problems.CONSUMER_BROKER_UNAVAILABLE, exc, request)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: what a pull would return, pushed as it arrives (module doc).
        Refusals before the stream opens are problem+json answers; once it is open, a refusal
        is its last event (``event: error``, the problem as data)."""
        try:
            provider, code = request.match_info["provider"], request.match_info["stream"]
            caller = await self._caller(request, provider, code)
            self._decide(request, caller, provider, code)
            after = await self._start(request, provider, code, last_event_id=True)
        except Problem as refused:
            return _problem(refused, request)
        except BROKER_FAILURES as exc:
            return _broker_down(problems.CONSUMER_BROKER_UNAVAILABLE, exc, request)
        resp = web.StreamResponse(
            headers={
                "Content-Type": SSE_CONTENT_TYPE,
                # Never stored, never buffered by a proxy (nginx honours X-Accel-Buffering).
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        clock = time.monotonic
        deadline = clock() + self._sse_max
        try:
            await resp.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
            quiet_since = clock()
            while not self._closing.is_set() and clock() < deadline:
                if request.transport is None or request.transport.is_closing():
                    return resp  # the client went away
                started = utcnow()
                try:
                    # The credential too, not only the agreement: a revoked API key or an
                    # expired access token ends the stream as it refuses a pull.
                    caller = await self._caller(request, provider, code)
                    decision = self._decide(request, caller, provider, code)
                    pulled = await self._delivery.pull(
                        provider,
                        code,
                        after=after,
                        limit=SSE_CHUNK,
                        wait=max(0.0, min(SSE_POLL, deadline - clock())),
                        agreement=decision.agreement.id,
                    )
                except Problem as refused:
                    await resp.write(sse_message(refused.to_json(request.path), event="error"))
                    break
                except BROKER_FAILURES as exc:
                    # The stream's last event says why; the client reconnects (after "retry").
                    down = _broker_problem(problems.CONSUMER_BROKER_UNAVAILABLE, exc)
                    await resp.write(sse_message(down.to_json(request.path), event="error"))
                    break
                chunk = b"".join(
                    sse_message(orjson.dumps(e.to_json()), event="event", id=e.offset)
                    for e in pulled.events
                )
                if pulled.next > after and (
                    not pulled.events or pulled.events[-1].offset < pulled.next
                ):
                    # Events for other apps of this node were passed over: move the client's
                    # last event ID past them (an "id" alone sets it, §9.2.6, dispatching
                    # nothing), so a reconnection does not fetch them again.
                    chunk += f"id: {pulled.next}\n\n".encode()
                after = pulled.next
                if chunk:
                    # A client that stops reading fills its socket; give up on it rather than
                    # hold the stream (and its events) open past the bound.
                    await asyncio.wait_for(resp.write(chunk), SSE_WRITE_TIMEOUT)
                    quiet_since = clock()
                    await self._delivered(caller, provider, code, pulled.events, "sse", started)
                elif clock() - quiet_since >= self._sse_keepalive:
                    await resp.write(b": keep-alive\n\n")
                    quiet_since = clock()
            await resp.write_eof()
        except (ConnectionError, TimeoutError):
            # The client went away or stopped reading mid-write: what it missed, it gets on
            # reconnecting.
            pass
        return resp

    async def ack(self, request: web.Request) -> web.Response:
        try:
            provider, code = request.match_info["provider"], request.match_info["stream"]
            caller = await self._caller(request, provider, code)
            # Moving the node's position is reading the stream: only an app the agreements
            # let read it may (an app without one could otherwise skip events for the rest).
            self._decide(request, caller, provider, code)
            body = await self._body(request)
            offset = body.get("offset") if isinstance(body, dict) else None
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise Problem(
                    problems.INVALID_REQUEST, 'send {"offset": N} with N an integer, 0 or more'
                )
            try:
                await self._delivery.ack(provider, code, offset)
            except ValueError as exc:
                # The embedded and NATS brokers refuse an ack past the end of the log.
                raise Problem(problems.INVALID_REQUEST, str(exc)) from exc
            return _json({"acked": await self._delivery.acked(provider, code)})
        except Problem as refused:
            return _problem(refused, request)
        except BROKER_FAILURES as exc:
            return _broker_down(problems.CONSUMER_BROKER_UNAVAILABLE, exc, request)

    # --- checks ----------------------------------------------------------------------------
    async def _caller(self, request: web.Request, provider_org: str, code: str) -> Caller:
        """The calling app: an API key of an app of this node's organization scoped to the
        resource, or an access token from the hub for such an app."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise Problem(
                problems.MISSING_CREDENTIAL,
                "send Authorization: Bearer <API key or access token from the hub>",
            )
        credential = auth[7:].strip()
        claimed = request.headers.get(p.H_CLIENT)
        if self._tokens is not None and looks_like_jwt(credential):
            at = await accept_access_token(self._tokens, credential, claimed)
            self._ours(at.app)
            # RFC 9068 §2.2: "sub" is the resource owner; it decides as the end user, whatever
            # X-Qiao-User the app sent. The token's scope covers every stream (no key scope).
            return Caller(at.app, at.subject[:200])
        grant = self._keys.check(credential)
        if grant is None:
            raise Problem(problems.BAD_CREDENTIAL, "the API key is unknown, expired or revoked")
        self._ours(grant.client)
        if claimed is not None and claimed != grant.client:
            raise Problem(
                problems.BAD_CREDENTIAL, f"the API key belongs to another app than {claimed}"
            )
        if not grant.allows(provider_org, code):
            raise Problem(
                problems.OUT_OF_SCOPE,
                f"API key {grant.key_id} is not scoped to {provider_org}/{code}",
            )
        return Caller(grant.client, p.optional_text(p.H_USER, request.headers.get(p.H_USER)))

    def _ours(self, client: str) -> None:
        if not client.startswith(self._identity.client_id_prefix):
            raise Problem(
                problems.UNKNOWN_CLIENT,
                f"{client} is not an app of this node's organization {self._identity.org}",
            )

    def _decide(
        self, request: web.Request, caller: Caller, provider_org: str, code: str
    ) -> Decision:
        """The agreement that lets the app read the stream now: the stream is the resource
        read as a whole, a GET of the resource's own path."""
        purpose = p.optional_text(p.H_PURPOSE, request.headers.get(p.H_PURPOSE))
        return self._conf.usable().policy.decide(
            caller.client, provider_org, code, "GET", "", {}, purpose, caller.end_user,
            utcnow(), "consumer",
        )  # fmt: skip

    async def _start(
        self, request: web.Request, provider_org: str, code: str, *, last_event_id: bool
    ) -> int:
        """The offset to read after: ``Last-Event-ID`` (an event stream resuming), else
        ``after``, else the log's last offset before ``since``, else the node's position."""
        q = request.query
        if "after" in q and "since" in q:
            raise Problem(problems.INVALID_REQUEST, "give after or since, not both")
        resume = request.headers.get("Last-Event-ID", "") if last_event_id else ""
        if resume:
            return _offset("Last-Event-ID", resume)
        if "after" in q:
            return _offset("after", q["after"])
        if "since" in q:
            when = parse_since(q["since"], utcnow())
            return await self._delivery.offset_at(provider_org, code, when)
        return await self._delivery.acked(provider_org, code)

    async def _delivered(
        self,
        caller: Caller,
        provider_org: str,
        code: str,
        events: Sequence[DeliveredEvent],
        via: str,
        started: datetime,
    ) -> None:
        if events:
            await self._recorder.delivered(
                client=caller.client,
                provider_org=provider_org,
                stream=code,
                events=[
                    DeliveredRecord(e.offset, e.event_id, e.event, e.agreement) for e in events
                ],
                via=via,
                started_at=started,
            )

    async def _body(self, request: web.Request) -> Any:
        """The JSON body, read no further than the node's limit."""
        if request.content_length is not None and request.content_length > self._max_body:
            raise _too_large(self._max_body)
        body = bytearray()
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > self._max_body:
                raise _too_large(self._max_body)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem(problems.INVALID_REQUEST, "the body is not JSON") from exc


def _events(body: Any) -> list[Any]:
    if isinstance(body, dict) and set(body) == {"events"}:
        events = body["events"]
        if not isinstance(events, list):
            raise Problem(problems.INVALID_REQUEST, '"events" must be an array of events')
    elif isinstance(body, dict):
        events = [body]
    else:
        raise Problem(
            problems.INVALID_REQUEST, 'send one event (a JSON object) or {"events": [...]}'
        )
    if not events or len(events) > MAX_EVENTS:
        raise Problem(
            problems.INVALID_REQUEST,
            f"{len(events)} events; send 1 to {MAX_EVENTS} in one call",
        )
    return events


def sse_message(data: bytes, *, event: str, id: int | None = None) -> bytes:
    """One server-sent event (WHATWG HTML §9.2.5). ``data`` is one line of JSON: orjson
    escapes newlines inside strings, so no line break can end the field early."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + data + b"\n\n"


def parse_since(raw: str, now: datetime) -> datetime:
    """A replay's start: an RFC 3339 date-time (§5.6) with its offset, not after ``now``."""
    m = _RFC3339.fullmatch(raw)
    if m is None:
        raise Problem(
            problems.INVALID_REQUEST,
            f"since must be an RFC 3339 date-time with its offset, such as "
            f"2026-11-29T08:00:00Z or 2026-11-29T16:00:00+08:00, not {raw[:40]!r}",
        )
    day, clock, fraction, offset = m.groups()
    if offset == "-00:00":
        # RFC 3339 §4.3: "-00:00" says the local offset is unknown, so the instant is too.
        raise Problem(problems.INVALID_REQUEST, "since with offset -00:00 names no instant")
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        when = datetime.fromisoformat(f"{day}T{clock}{(fraction or '')[:7]}{zone}")
        when.astimezone(UTC)  # 0001-01-01T00:00:00+14:00 is before the first instant there is
    except (ValueError, OverflowError) as exc:
        raise Problem(problems.INVALID_REQUEST, f"since is not a real time: {exc}") from exc
    if when > now:
        raise Problem(problems.INVALID_REQUEST, "since is in the future: nothing to replay yet")
    return when


def _offset(name: str, raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Problem(problems.INVALID_REQUEST, f"{name} must be an offset: a whole number")
    return int(raw)


def _wants_event_stream(request: web.Request) -> bool:
    """Whether the client asks for server-sent events (an EventSource sends exactly this
    Accept header; a client that also takes JSON is given JSON)."""
    accept = [
        part.split(";", 1)[0].strip().lower()
        for header in request.headers.getall("Accept", [])
        for part in header.split(",")
    ]
    return SSE_CONTENT_TYPE in accept and "application/json" not in accept


def _int(query: Any, name: str, low: int, high: int | None) -> int:
    raw = query.get(name, "")
    # isascii: str.isdigit() also admits digits such as "²" that int() refuses.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Problem(problems.INVALID_REQUEST, f"{name} must be a whole number")
    value = int(raw)
    if value < low or (high is not None and value > high):
        upper = f" to {high}" if high is not None else " or more"
        raise Problem(problems.INVALID_REQUEST, f"{name} must be {low}{upper}")
    return value


def _too_large(limit: int) -> Problem:
    return Problem(problems.BODY_TOO_LARGE, f"the body is over this node's limit of {limit} bytes")


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _problem(
    refused: Problem, request: web.Request, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=refused.to_json(request.path),
        status=refused.status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


# What a broker call raises when the broker cannot be reached or failed: the hub's broker over
# HTTP (aiohttp's errors, the hub's own refusals), NATS (its client's errors), or a timeout.
BROKER_FAILURES = (aiohttp.ClientError, HubError, nats.errors.Error, TimeoutError, OSError)
BROKER_RETRY_AFTER = 5  # seconds (RFC 9110 §10.2.3)


def _broker_problem(kind: problems.ProblemType, exc: BaseException) -> Problem:
    if isinstance(exc, HubError) and exc.status in (400, 409, 413, 422):
        # The hub's broker refused what was asked (an ack past the end of the log, …): the
        # app's request is at fault, not the broker's availability.
        return Problem(problems.INVALID_REQUEST, f"the event broker refused it: {exc.detail}")
    # The exception's class and the hub's status/type only: a broker error can carry a URL
    # with a query, never worth leaking to an app.
    what = exc.__class__.__name__
    if isinstance(exc, HubError):
        what = f"the hub answered {exc.status} {exc.type}".rstrip()
    log.warning("event broker unavailable: %s: %s", what, exc)
    return Problem(kind, f"the event broker cannot be reached ({what}); retry later")


def _broker_down(
    kind: problems.ProblemType, exc: BaseException, request: web.Request
) -> web.Response:
    refused = _broker_problem(kind, exc)
    retry = {"Retry-After": str(BROKER_RETRY_AFTER)} if refused.kind is kind else None
    return _problem(refused, request, retry)
