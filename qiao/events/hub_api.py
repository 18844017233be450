"""The hub's embedded broker over HTTP, for nodes (qiao.events.remote.HubBroker is the client).

Every route needs a node signature over the whole request (``node_request_message``): the
configuration fetch's signature covers only node and time, so a captured one could be replayed
with another body or path; this one cannot. Only a node of a stream's provider organization
publishes to it; only the subscriber node reads, acknowledges and positions its own log.
Envelopes are HPKE-sealed to the subscriber (RFC 9180): the hub stores them as opaque bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from qiao import problems
from qiao.config import HubSettings
from qiao.events import retention
from qiao.events.broker import Outgoing, StoredEvent, check_log
from qiao.events.embedded import EmbeddedBroker
from qiao.events.remote import (
    EVENTS_KEY_PATH,
    EVENTS_PREFIX,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_FETCH_LIMIT,
    MAX_WAIT_SECONDS,
    NODE_REQUEST_SKEW_SECONDS,
    node_request_message,
    rfc3339,
)
from qiao.problems import Problem
from qiao.registry.services import (
    NODE_CERTIFICATE_HEADER,
    NodeSignatureRefused,
    RegistryService,
)

log = logging.getLogger("qiao.events.hub")
# The body may exceed the events' own size by the JSON around them.
_MAX_BODY = MAX_BATCH_BYTES


@dataclass(frozen=True, slots=True)
class Caller:
    """The node that signed a request, and the body it signed."""

    node: str
    org: str
    fingerprint: str
    body: bytes


class EventIn(BaseModel):
    event_id: str
    partition_key: str
    envelope: str = Field(description="The HPKE-sealed event (RFC 9180), base64")
    published_at: datetime = Field(description="RFC 3339, with a time zone")


class PublishIn(BaseModel):
    events: list[EventIn] = Field(max_length=MAX_BATCH_EVENTS)


class AckIn(BaseModel):
    offset: int


class EventsKeyIn(BaseModel):
    events_key: str = Field(description="Base64 X25519 public key (HPKE, RFC 9180)")


def _unauthorized(detail: str) -> Problem:
    return Problem(problems.UNAUTHORIZED, f"a node signature is required: {detail}")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_BODY:
        raise Problem(problems.BODY_TOO_LARGE, f"a request carries at most {_MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise Problem(problems.BODY_TOO_LARGE, f"a request carries at most {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Problem(problems.VALIDATION, detail) from exc


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def install(app: FastAPI, registry: RegistryService, settings: HubSettings) -> EmbeddedBroker:
    """Serve the embedded broker to nodes; it closes when the app shuts down."""
    broker = EmbeddedBroker(registry.engine)
    app.state.events_broker = broker
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        # Each stream's retention (qiao.events.retention) keeps the broker's tables bounded.
        cap = settings.events_max_retention_hours
        trimming = asyncio.create_task(
            retention.run(
                registry,
                broker,
                every=settings.events_trim_seconds,
                max_retention=None if cap is None else timedelta(hours=cap),
            )
        )
        try:
            async with inner(a) as state:
                yield state
        finally:
            trimming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trimming
            await broker.close()

    app.router.lifespan_context = lifespan

    def verify(headers: dict[str, str], method: str, target: str, body: bytes) -> Caller:
        # The registry's node-signature check, over the whole request (method, target, body).
        try:
            node, org = registry.verify_node_signature(
                headers,
                lambda n, at: node_request_message(n, at, method, target, body),
                now=time.time(),
                skew=NODE_REQUEST_SKEW_SECONDS,
            )
        except NodeSignatureRefused as refused:
            raise _unauthorized(str(refused)) from None
        fingerprint = headers.get(NODE_CERTIFICATE_HEADER.lower(), "").lower()
        return Caller(node=node, org=org, fingerprint=fingerprint, body=body)

    async def caller(request: Request) -> Caller:
        body = await _read_body(request)
        # The target as it arrived (RFC 9112 §3.2.1), before any decoding.
        target = request.scope["raw_path"].decode("latin-1")
        if request.scope.get("query_string"):
            target += "?" + request.scope["query_string"].decode("latin-1")
        headers = dict(request.headers)
        return await run_in_threadpool(verify, headers, request.method, target, body)

    def _stream(org: str, code: str) -> str:
        return f"{org}/{code}"

    def publisher(org: str, who: Caller) -> None:
        # Registry codes are upper case and looked up case-insensitively (RegistryService._org).
        if who.org.upper() != org.upper():
            raise Problem(
                problems.FORBIDDEN,
                f"node {who.node} is of organization {who.org}; only nodes of {org} publish "
                "its streams",
            )

    def reader(subscriber: str, who: Caller) -> None:
        if who.node != subscriber:
            raise Problem(
                problems.FORBIDDEN, f"node {who.node} may not read node {subscriber}'s log"
            )

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except ValueError as exc:
            raise Problem(problems.VALIDATION, str(exc)) from exc

    router = APIRouter(tags=["events"])
    log_path = "/{org}/{code}/{subscriber}"

    @router.post(
        EVENTS_PREFIX + log_path,
        summary="Publish sealed events to a subscriber's log",
        openapi_extra=_body_schema(PublishIn),
    )
    async def publish(
        org: str, code: str, subscriber: str, who: Caller = Depends(caller)
    ) -> dict[str, list[int]]:
        """Append up to 1000 events (4 MiB) to ``subscriber``'s log of ``{org}/{code}``, in
        order; answers once they are durable. An event id the log holds already keeps its
        offset. Only a node of ``org`` may publish."""
        body: PublishIn = _parse(PublishIn, who.body)
        outgoing: list[Outgoing] = []
        for e in body.events:
            try:
                envelope = base64.b64decode(e.envelope, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise Problem(
                    problems.VALIDATION, f"envelope of event {e.event_id} is not base64"
                ) from exc
            outgoing.append(Outgoing(e.event_id, e.partition_key, envelope, e.published_at))
        _check_log(_stream(org, code), subscriber)
        publisher(org, who)
        offsets = await call(broker.publish(_stream(org, code), subscriber, outgoing))
        return {"offsets": offsets}

    @router.get(EVENTS_PREFIX + log_path, summary="Fetch events from the caller's own log")
    async def fetch(
        org: str,
        code: str,
        subscriber: str,
        who: Caller = Depends(caller),
        after: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=MAX_FETCH_LIMIT),
        wait: float = Query(0, ge=0, le=MAX_WAIT_SECONDS, description="Long poll, seconds"),
    ) -> Response:
        """Up to ``limit`` events after offset ``after``; with none there, waits up to
        ``wait`` seconds for one. Only the subscriber node itself."""
        await _authorize_read(org, code, subscriber, who)
        found = await call(
            broker.fetch(_stream(org, code), subscriber, after=after, limit=limit, wait=wait)
        )
        # Serialized here with orjson in one call: FastAPI's own encoder would walk every value
        # of up to 1,000 events in Python first.
        return Response(
            orjson.dumps({"events": [_event_json(e) for e in found]}),
            media_type="application/json",
        )

    @router.post(
        EVENTS_PREFIX + log_path + "/ack",
        summary="Acknowledge the caller's log up to an offset",
        openapi_extra=_body_schema(AckIn),
    )
    async def ack(
        org: str, code: str, subscriber: str, who: Caller = Depends(caller)
    ) -> dict[str, int]:
        """Record that the subscriber has everything up to ``offset``; it never moves back."""
        body: AckIn = _parse(AckIn, who.body)
        await _authorize_read(org, code, subscriber, who)
        await call(broker.ack(_stream(org, code), subscriber, body.offset))
        return {"acked": await call(broker.acked(_stream(org, code), subscriber))}

    @router.get(EVENTS_PREFIX + log_path + "/acked", summary="The caller's acknowledged offset")
    async def acked(
        org: str, code: str, subscriber: str, who: Caller = Depends(caller)
    ) -> dict[str, int]:
        await _authorize_read(org, code, subscriber, who)
        return {"acked": await call(broker.acked(_stream(org, code), subscriber))}

    @router.get(
        EVENTS_PREFIX + log_path + "/offset-at",
        summary="The last offset of the caller's log published before a time",
    )
    async def offset_at(
        org: str,
        code: str,
        subscriber: str,
        when: datetime = Query(description="RFC 3339, with a time zone"),
        who: Caller = Depends(caller),
    ) -> dict[str, int]:
        """Replay from a time: fetch after the offset this returns."""
        await _authorize_read(org, code, subscriber, who)
        return {"offset": await call(broker.offset_at(_stream(org, code), subscriber, when))}

    async def _authorize_read(org: str, code: str, subscriber: str, who: Caller) -> None:
        _check_log(_stream(org, code), subscriber)
        reader(subscriber, who)

    @router.post(
        EVENTS_KEY_PATH,
        summary="Register the signing node's event key",
        openapi_extra=_body_schema(EventsKeyIn),
    )
    async def events_key(who: Caller = Depends(caller)) -> dict[str, str]:
        """The node that signs the request registers (or replaces) the X25519 key providers
        seal its events to; its entry in the global configuration carries it."""
        body: EventsKeyIn = _parse(EventsKeyIn, who.body)
        await run_in_threadpool(registry.set_events_key, who.node, who.fingerprint, body.events_key)
        log.info("node %s registered its events key", who.node)
        return {"node": who.node, "events_key": body.events_key}

    app.include_router(router)
    return broker


def _check_log(stream: str, subscriber: str) -> None:
    try:
        check_log(stream, subscriber)
    except ValueError as exc:
        raise Problem(problems.VALIDATION, str(exc)) from exc


def _event_json(e: StoredEvent) -> dict[str, Any]:
    return {
        "offset": e.offset,
        "event_id": e.event_id,
        "partition_key": e.partition_key,
        "envelope": base64.b64encode(e.envelope).decode(),
        "published_at": rfc3339(e.published_at),
    }
