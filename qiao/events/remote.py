"""The broker as a node sees it: the hub's embedded broker over the hub's API.

Every request is signed with the node key (ECDSA P-256, the key its hub-issued certificate
certifies) over ``node_request_message``: the node, the time, the method, the path with its
query and the SHA-256 of the body. The configuration fetch's signature covers only node and
time; here a captured request must not be replayable with another body or path, so both are
signed too. The hub accepts a signed time within ``NODE_REQUEST_SKEW_SECONDS`` of its clock.

Retention runs at the hub (``qiao.events.retention``), so :meth:`HubBroker.trim` is refused.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from qiao.events.broker import (
    Outgoing,
    StoredEvent,
    check_fetch,
    check_log,
    check_outgoing,
    check_stream,
    check_when,
)
from qiao.node.confcache import NodeCredentials
from qiao.registry.services import (
    NODE_CERTIFICATE_HEADER,
    NODE_HEADER,
    NODE_SIGNATURE_HEADER,
    NODE_TIME_HEADER,
)

REQUEST_CONTEXT = "qiao-node-request/1"
NODE_REQUEST_SKEW_SECONDS = 300
EVENTS_PREFIX = "/api/v1/events/logs"
EVENTS_KEY_PATH = "/api/v1/nodes/events-key"
# What one publish request may carry (the hub refuses more); larger batches are split.
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_FETCH_LIMIT = 1000
MAX_WAIT_SECONDS = 25.0
# Room in a batch for the JSON around the envelopes.
_EVENT_OVERHEAD = 600


def node_request_message(node: str, at: int, method: str, target: str, body: bytes) -> bytes:
    """What a node signs for one request to the hub's node API. ``target`` is the path and
    query exactly as sent (RFC 9112 §3.2.1 origin-form); the context line keeps the signature
    from being taken for any other the node key makes (configuration fetch, ledger batch)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{REQUEST_CONTEXT}\n{node}\n{at}\n{method.upper()}\n{target}\n{digest}\n".encode()


def sign_node_request(
    credentials: NodeCredentials, method: str, target: str, body: bytes
) -> dict[str, str]:
    """The headers that sign one request (ECDSA-SHA256, FIPS 186-5, DER in base64)."""
    at = int(credentials.clock())
    message = node_request_message(credentials.node, at, method, target, body)
    signature = credentials.key.sign(message, ec.ECDSA(hashes.SHA256()))
    return {
        NODE_HEADER: credentials.node,
        NODE_CERTIFICATE_HEADER: credentials.fingerprint,
        NODE_TIME_HEADER: str(at),
        NODE_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


class HubError(Exception):
    """The hub refused or failed a request (its problem+json ``type``, status and detail)."""

    def __init__(self, status: int, type_: str, detail: str) -> None:
        super().__init__(f"hub answered {status} {type_}: {detail}")
        self.status = status
        self.type = type_
        self.detail = detail


class HubBroker:
    """:class:`qiao.events.broker.Broker` over the hub's API, as one node.

    Publishing needs a node of the stream's provider organization; fetching, acknowledging
    and the positions need the subscriber node itself."""

    def __init__(
        self,
        hub_url: str,
        credentials: NodeCredentials,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._hub = hub_url.rstrip("/")
        self._credentials = credentials
        self._session = session
        self._own_session = session is None

    async def _request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        target = path + (f"?{urlencode(query)}" if query else "")
        data = b"" if body is None else _json_bytes(body)
        headers = sign_node_request(self._credentials, method, target, data)
        if data:
            headers["Content-Type"] = "application/json"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        wait = float(query.get("wait", 0)) if query else 0.0
        timeout = aiohttp.ClientTimeout(total=wait + 60)
        # encoded=True: the target goes out byte for byte as signed.
        url = URL(self._hub + target, encoded=True)
        async with self._session.request(
            method, url, data=data or None, headers=headers, timeout=timeout
        ) as response:
            raw = await response.read()
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                payload = None  # a proxy's error page: the status still says what happened
                if response.status < 400:
                    raise HubError(response.status, "", "the hub's answer is not JSON") from None
            if response.status >= 400:
                problem = payload if isinstance(payload, dict) else {}
                type_ = str(problem.get("type", ""))
                detail = str(problem.get("detail", problem.get("title", "")))
                if response.status == 422 and type_.endswith(":validation"):
                    # The broker's own refusals, as every backend raises them.
                    raise ValueError(detail)
                raise HubError(response.status, type_, detail)
            return payload

    @staticmethod
    def _log_path(stream: str, subscriber: str, action: str = "") -> str:
        org, code = stream.split("/")
        parts = [quote(p, safe="") for p in (org, code, subscriber)]
        return "/".join([EVENTS_PREFIX, *parts]) + (f"/{action}" if action else "")

    async def publish(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        check_log(stream, subscriber)
        check_outgoing(events)
        offsets: list[int] = []
        for batch in _batches(events):
            answer = await self._request(
                "POST",
                self._log_path(stream, subscriber),
                body={"events": [_outgoing_json(e) for e in batch]},
            )
            offsets += [int(o) for o in answer["offsets"]]
        return offsets

    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        check_log(stream, subscriber)
        check_fetch(after, limit, wait)
        # The hub holds a poll at most 25 s and answers at most 1000 events: fewer is allowed.
        query = {
            "after": str(after),
            "limit": str(min(limit, MAX_FETCH_LIMIT)),
            "wait": repr(min(float(wait), MAX_WAIT_SECONDS)),
        }
        answer = await self._request("GET", self._log_path(stream, subscriber), query)
        return [
            StoredEvent(
                stream=stream,
                subscriber=subscriber,
                offset=int(e["offset"]),
                event_id=str(e["event_id"]),
                partition_key=str(e["partition_key"]),
                published_at=datetime.fromisoformat(str(e["published_at"])),
                envelope=base64.b64decode(e["envelope"], validate=True),
            )
            for e in answer["events"]
        ]

    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        check_log(stream, subscriber)
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, not {offset}")
        await self._request(
            "POST", self._log_path(stream, subscriber, "ack"), body={"offset": offset}
        )

    async def acked(self, stream: str, subscriber: str) -> int:
        check_log(stream, subscriber)
        answer = await self._request("GET", self._log_path(stream, subscriber, "acked"))
        return int(answer["acked"])

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        check_log(stream, subscriber)
        check_when(when)
        answer = await self._request(
            "GET", self._log_path(stream, subscriber, "offset-at"), {"when": rfc3339(when)}
        )
        return int(answer["offset"])

    async def trim(self, stream: str, *, before: datetime) -> int:
        check_stream(stream)
        raise NotImplementedError("retention runs at the hub (qiao.events.retention)")

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None


async def register_events_key(
    hub_url: str,
    credentials: NodeCredentials,
    key_text: str,
    *,
    session: aiohttp.ClientSession | None = None,
) -> None:
    """Register (or replace) the node's event key at the hub, signed with the node key."""
    broker = HubBroker(hub_url, credentials, session=session)
    try:
        await broker._request("POST", EVENTS_KEY_PATH, body={"events_key": key_text})
    finally:
        await broker.close()


def _json_bytes(body: Any) -> bytes:
    # orjson: compact UTF-8 JSON, several times faster than json.dumps on 1,000-event batches.
    return orjson.dumps(body)


def _outgoing_json(event: Outgoing) -> dict[str, str]:
    return {
        "event_id": event.event_id,
        "partition_key": event.partition_key,
        "envelope": base64.b64encode(event.envelope).decode(),
        "published_at": rfc3339(event.published_at),
    }


def _batches(events: Sequence[Outgoing]) -> list[Sequence[Outgoing]]:
    """Split into requests the hub accepts: at most 1000 events and 4 MiB of JSON each.
    Ids make a split safe: a batch resent after a lost answer is not stored twice."""
    batches: list[Sequence[Outgoing]] = []
    start, size = 0, 0
    for i, event in enumerate(events):
        cost = (len(event.envelope) + 2) // 3 * 4 + len(event.partition_key.encode()) * 6
        cost += _EVENT_OVERHEAD
        if i > start and (i - start >= MAX_BATCH_EVENTS or size + cost > MAX_BATCH_BYTES):
            batches.append(events[start:i])
            start, size = i, 0
        size += cost
    if start < len(events):
        batches.append(events[start:])
    return batches
