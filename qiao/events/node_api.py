"""The event routes of a node's app listener (docs/events.md).

- ``POST /e1/{stream}``: the provider's backend publishes records of its organization's
  stream: one JSON object, or ``{"events": [...]}`` with at most 1000. 202 with each event's
  id and its offset in each subscribing node's log, once every log holds it.
- ``GET /e1/{provider-org}/{stream}?after=&limit=&wait=``: an app pulls what this node
  received. ``after`` defaults to the node's acknowledged offset; ``wait`` (seconds, at most
  30) makes it a long poll. Answers ``{"events": [...], "next": offset}``.
- ``POST /e1/{provider-org}/{stream}/ack`` with ``{"offset": N}``: the node has handled
  everything up to N (positions are per node, shared by its apps).

Apps authenticate as for the exchange: ``Authorization: Bearer <API key>`` of an app of this
node's organization, scoped to the stream's resource. A pull is decided under the policy as a
``GET`` of the resource itself (path "") with the app's ``X-Qiao-Purpose`` and ``X-Qiao-User``:
the agreement that admits the app must be one the provider masked the events under, so an app
receives only what its own agreement lets it see.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from qiao import problems
from qiao.db import utcnow
from qiao.events.delivery import MAX_LIMIT, MAX_WAIT, Delivery
from qiao.events.publisher import MAX_EVENTS, Publisher
from qiao.events.records import DeliveredRecord, EventRecorder, PublishedRecord
from qiao.exchange import protocol as p
from qiao.exchange.keys import ApiKeyService, KeyGrant
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("qiao.events.node_api")

_ORG = r"[A-Za-z0-9_-]{1,64}"
_CODE = r"[a-z0-9][a-z0-9-]{0,63}"
_READ_CHUNK = 64 * 1024


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
    ) -> None:
        self._conf = conf_cache
        self._identity = identity
        self._keys = keys
        self._publisher = publisher
        self._delivery = delivery
        self._recorder = recorder
        self._max_body = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"/e1/{{stream:{_CODE}}}", self.publish),
            web.get(f"/e1/{{provider:{_ORG}}}/{{stream:{_CODE}}}", self.pull),
            web.post(f"/e1/{{provider:{_ORG}}}/{{stream:{_CODE}}}/ack", self.ack),
        ]

    # --- handlers --------------------------------------------------------------------------
    async def publish(self, request: web.Request) -> web.Response:
        try:
            started = utcnow()
            code = request.match_info["stream"]
            grant = self._app(request, self._identity.org, code)
            events = _events(await self._body(request))
            published = await self._publisher.publish(code, events)
            await self._recorder.published(
                client=grant.client,
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

    async def pull(self, request: web.Request) -> web.Response:
        try:
            started = utcnow()
            provider, code = request.match_info["provider"], request.match_info["stream"]
            grant = self._app(request, provider, code)
            purpose = p.optional_text(p.H_PURPOSE, request.headers.get(p.H_PURPOSE))
            end_user = p.optional_text(p.H_USER, request.headers.get(p.H_USER))
            conf = self._conf.usable()
            # The stream is the resource read as a whole: GET of the resource's own path.
            decision = conf.policy.decide(
                grant.client, provider, code, "GET", "", {}, purpose, end_user, utcnow(),
                "consumer",
            )  # fmt: skip
            q = request.query
            after = (
                _int(q, "after", 0, None)
                if "after" in q
                else await self._delivery.acked(provider, code)
            )
            pulled = await self._delivery.pull(
                provider,
                code,
                after=after,
                limit=_int(q, "limit", 1, MAX_LIMIT) if "limit" in q else 100,
                wait=float(_int(q, "wait", 0, int(MAX_WAIT))) if "wait" in q else 0.0,
                agreement=decision.agreement.id,
            )
            if pulled.events:
                await self._recorder.delivered(
                    client=grant.client,
                    provider_org=provider,
                    stream=code,
                    events=[
                        DeliveredRecord(e.offset, e.event_id, e.event, e.agreement)
                        for e in pulled.events
                    ],
                    via="pull",
                    started_at=started,
                )
            return _json({"events": [e.to_json() for e in pulled.events], "next": pulled.next})
        except Problem as refused:
            return _problem(refused, request)

    async def ack(self, request: web.Request) -> web.Response:
        try:
            provider, code = request.match_info["provider"], request.match_info["stream"]
            grant = self._app(request, provider, code)
            # Moving the node's position is reading the stream: only an app the agreements
            # let read it may (an app without one could otherwise skip events for the rest).
            purpose = p.optional_text(p.H_PURPOSE, request.headers.get(p.H_PURPOSE))
            end_user = p.optional_text(p.H_USER, request.headers.get(p.H_USER))
            self._conf.usable().policy.decide(
                grant.client, provider, code, "GET", "", {}, purpose, end_user, utcnow(),
                "consumer",
            )  # fmt: skip
            body = await self._body(request)
            offset = body.get("offset") if isinstance(body, dict) else None
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise Problem(
                    problems.INVALID_REQUEST, 'send {"offset": N} with N an integer, 0 or more'
                )
            await self._delivery.ack(provider, code, offset)
            return _json({"acked": await self._delivery.acked(provider, code)})
        except Problem as refused:
            return _problem(refused, request)

    # --- checks ----------------------------------------------------------------------------
    def _app(self, request: web.Request, provider_org: str, code: str) -> KeyGrant:
        """The API key's grant: an app of this node's organization, scoped to the resource."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise Problem(problems.MISSING_CREDENTIAL, "send Authorization: Bearer <API key>")
        grant = self._keys.check(auth[7:].strip())
        if grant is None:
            raise Problem(problems.BAD_CREDENTIAL, "the API key is unknown, expired or revoked")
        if not grant.client.startswith(self._identity.client_id_prefix):
            raise Problem(
                problems.UNKNOWN_CLIENT,
                f"{grant.client} is not an app of this node's organization {self._identity.org}",
            )
        claimed = request.headers.get(p.H_CLIENT)
        if claimed is not None and claimed != grant.client:
            raise Problem(
                problems.BAD_CREDENTIAL, f"the API key belongs to another app than {claimed}"
            )
        if not grant.allows(provider_org, code):
            raise Problem(
                problems.OUT_OF_SCOPE,
                f"API key {grant.key_id} is not scoped to {provider_org}/{code}",
            )
        return grant

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


def _int(query: Any, name: str, low: int, high: int | None) -> int:
    raw = query.get(name, "")
    if not raw.isdigit() or len(raw) > 18:
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


def _problem(refused: Problem, request: web.Request) -> web.Response:
    return web.Response(
        body=refused.to_json(request.path),
        status=refused.status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
