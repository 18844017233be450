"""The demo backends' webhook receivers: Standard Webhooks verification, de-duplication by
webhook-id, what they keep and show."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiao.demo.receivers import (
    TOLERANCE_SECONDS,
    Receiver,
    new_secret,
    secret_key,
    sign,
    verify,
)

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NOW = 1_780_000_000


def _headers(msg_id: str, ts: int, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_sign_reproduces_the_standard_webhooks_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = _headers(VECTOR_ID, VECTOR_TS, VECTOR_SIGNATURE)
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, VECTOR_TS + 10) is None


def test_the_node_s_signatures_verify() -> None:
    """The dispatcher (qiao.events.webhooks) and the demo's receivers agree."""
    from qiao.events.webhooks import parse_secret
    from qiao.events.webhooks import sign as node_sign

    secret = new_secret()
    body = json.dumps({"event_id": "e1", "event": {"a": 1}}).encode()
    signature = node_sign(parse_secret(secret), "e1", NOW, body)
    assert verify(secret, _headers("e1", NOW, signature), body, NOW) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": VECTOR_BODY + b" "}, "no webhook-signature matches"),
        ({"msg_id": "msg_other"}, "no webhook-signature matches"),
        ({"secret": new_secret()}, "no webhook-signature matches"),
        ({"signature": "v2," + VECTOR_SIGNATURE[3:]}, "no webhook-signature matches"),
        ({"signature": "v1,not base64!"}, "no webhook-signature matches"),
        ({"signature": ""}, "required"),
        ({"ts": VECTOR_TS + TOLERANCE_SECONDS + 1}, "clock"),
        ({"now": VECTOR_TS - TOLERANCE_SECONDS - 1}, "clock"),
        ({"raw_ts": "1614265330.5"}, "Unix seconds"),
    ],
)
def test_verify_refuses_what_the_secret_did_not_sign(change: dict[str, Any], reason: str) -> None:
    secret = change.get("secret", VECTOR_SECRET)
    ts = change.get("ts", VECTOR_TS)
    signature = change.get("signature", VECTOR_SIGNATURE)
    if "ts" in change:  # a fresh signature over the shifted time: only the age is wrong
        signature = sign(VECTOR_SECRET, VECTOR_ID, ts, VECTOR_BODY)
    headers = _headers(change.get("msg_id", VECTOR_ID), ts, signature)
    if "raw_ts" in change:
        headers["webhook-timestamp"] = change["raw_ts"]
    got = verify(secret, headers, change.get("body", VECTOR_BODY), change.get("now", VECTOR_TS))
    assert got is not None and reason in got


def test_verify_accepts_any_matching_signature_while_a_secret_rotates() -> None:
    old = sign(new_secret(), VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    header = f"{old} v1a,xyz {VECTOR_SIGNATURE}"
    assert (
        verify(VECTOR_SECRET, _headers(VECTOR_ID, VECTOR_TS, header), VECTOR_BODY, VECTOR_TS)
        is None
    )


def test_new_secrets_are_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(secret_key(a)) == 32
    assert secret_key(a) == base64.b64decode(a[6:])


def _delivery(event_id: str, **event: Any) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "offset": 1,
            "provider": "ORG",
            "stream": "bike-stations",
            "partition_key": "BS1000",
            "published_at": "2026-11-29T04:00:00+00:00",
            "event": {"station_id": "BS1000", **event},
        }
    ).encode()


async def _post(
    client: TestClient[Any, Any], secret: str, msg_id: str, body: bytes, ts: int = NOW
) -> int:
    r = await client.post(
        "/events/bike-stations",
        data=body,
        headers=_headers(msg_id, ts, sign(secret, msg_id, ts, body)),
    )
    return r.status


async def test_receiver_keeps_each_event_once_and_refuses_forgeries() -> None:
    secret = new_secret()
    receiver = Receiver("bike-stations", secret, clock=lambda: NOW)
    app = web.Application()
    app.add_routes(receiver.routes("/events/bike-stations"))
    async with TestClient(TestServer(app)) as client:
        # A forgery first, under an id the node will use: it must not mark the id as seen.
        assert await _post(client, new_secret(), "e1", _delivery("e1", bikes_available=9)) == 401
        assert await _post(client, secret, "e1", _delivery("e1", bikes_available=3)) == 200
        assert await _post(client, secret, "e1", _delivery("e1", bikes_available=3)) == 200
        assert await _post(client, secret, "e2", _delivery("e2", bikes_available=4)) == 200
        # Signed, but not a delivered event: refused, not kept.
        assert await _post(client, secret, "e3", b'{"event_id": "e3"}') == 400
        assert await _post(client, secret, "e4", b"not json") == 400
        # A captured delivery replayed later than the tolerance.
        late = NOW - TOLERANCE_SECONDS - 5
        assert await _post(client, secret, "e5", _delivery("e5"), ts=late) == 401
        r = await client.get("/received")
        shown = await r.json()
    assert [e["event_id"] for e in shown["events"]] == ["e1", "e2"]
    assert shown["events"][0]["event"]["bikes_available"] == 3
    assert shown["events"][0]["webhook_id"] == "e1"
    assert (shown["duplicates"], shown["rejected"]) == (1, 4)


async def test_receiver_refusal_is_problem_json() -> None:
    receiver = Receiver("x", new_secret(), clock=lambda: NOW)
    app = web.Application()
    app.add_routes(receiver.routes("/in"))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/in", data=b"{}")
        assert r.status == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (await r.json())["status"] == 401
