"""Webhook receivers of the demo's department backends: what a department writes to take a
stream from its own node.

The node delivers each event as one POST signed as Standard Webhooks specifies: headers
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, a space
separated list of ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where the key
is the base64 part of the shared ``whsec_`` secret. A receiver

1. verifies the signature over the raw body (before parsing it) in constant time and refuses a
   missing or wrong one with 401 — only the node holding the secret can make one;
2. refuses a timestamp more than five minutes away from its own clock (401), so a captured
   delivery cannot be replayed later (the id check below only remembers so much);
3. de-duplicates by ``webhook-id``: delivery is at least once (a retry after a lost answer
   delivers the same event again), so a repeat is acknowledged (200) and not kept again.

What it received stays in memory, newest last and bounded, and is served read-only at
``GET /received`` for ``qiao demo --check``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

SECRET_PREFIX = "whsec_"
# Standard Webhooks: reject timestamps outside a tolerance (replay protection).
TOLERANCE_SECONDS = 300
KEEP = 10_000  # events kept for GET /received
REMEMBER = 50_000  # webhook ids remembered for de-duplication
BODY_MEMBERS = ("event_id", "offset", "provider", "stream", "partition_key", "published_at")


def new_secret() -> str:
    """A fresh signing secret in the ``whsec_`` form the node reads from its secret file."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the base64-decoded part after the prefix)."""
    return base64.b64decode(secret.strip().removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A ``webhook-signature`` value (one ``v1`` signature) for the message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Why the delivery is not authentic, or ``None`` if it is."""
    msg_id = headers.get("webhook-id", "")
    raw_ts = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not msg_id or not raw_ts or not header:
        return "webhook-id, webhook-timestamp and webhook-signature are required"
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        return "webhook-timestamp is not Unix seconds"
    timestamp = int(raw_ts)
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        return f"webhook-timestamp is more than {TOLERANCE_SECONDS} s from this server's clock"
    expected = sign(secret, msg_id, timestamp, body).encode()
    # Several signatures may be sent while a secret is rotated: any v1 one that matches does.
    for candidate in header.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate.encode(), expected):
            return None
    return "no webhook-signature matches"


class Receiver:
    """One webhook endpoint: verifies, de-duplicates and keeps what a node delivers."""

    def __init__(
        self, name: str, secret: str, *, clock: Callable[[], float] = time.time, keep: int = KEEP
    ) -> None:
        self.name = name
        self._secret = secret
        self._clock = clock
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0  # repeated deliveries acknowledged, not kept again
        self.rejected = 0  # deliveries refused (bad signature, old timestamp, bad body)

    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        reason = verify(self._secret, request.headers, body, self._clock())
        if reason is not None:
            self.rejected += 1
            return _problem(401, "Unauthorized", reason)
        msg_id = request.headers["webhook-id"]
        if msg_id in self._seen:
            self.duplicates += 1
            return web.json_response({"duplicate": True})
        try:
            delivered = orjson.loads(body)
        except orjson.JSONDecodeError:
            delivered = None
        if not isinstance(delivered, dict) or not isinstance(delivered.get("event"), dict):
            self.rejected += 1
            return _problem(400, "Bad Request", "the body is not one delivered event")
        missing = [m for m in BODY_MEMBERS if m not in delivered]
        if missing:
            self.rejected += 1
            return _problem(400, "Bad Request", f"the body lacks {', '.join(missing)}")
        self._seen[msg_id] = None
        if len(self._seen) > REMEMBER:
            self._seen.popitem(last=False)
        self.events.append({"webhook_id": msg_id, **delivered})
        return web.json_response({"received": msg_id})

    async def received(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                {
                    "webhook": self.name,
                    "events": list(self.events),
                    "duplicates": self.duplicates,
                    "rejected": self.rejected,
                }
            ),
            content_type="application/json",
        )

    def routes(self, path: str) -> list[web.RouteDef]:
        """POST ``path`` takes deliveries; GET /received shows what was kept."""
        return [web.post(path, self.deliver), web.get("/received", self.received)]


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(
            {"type": "about:blank", "title": title, "status": status, "detail": detail}
        ),
        status=status,
        content_type="application/problem+json",
    )
