"""The exchange path end to end: app → consumer node → mTLS → provider node → backend."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from qiao import pki
from qiao.db import make_engine
from qiao.exchange.models import ExchangeRecord
from tests.integration.conftest import MAX_BODY, City, wait_for

T = ("transport", "traffic-enforcement")


def problem(r: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == type_, body
    assert body["status"] == status and body["title"]
    return body


def records(city: City, dept: str, exchange_id: str) -> list[Any]:
    eng = make_engine(city.dep.node_db_url(dept))
    try:
        with eng.connect() as c:
            return list(
                c.execute(
                    select(ExchangeRecord.__table__).where(
                        ExchangeRecord.exchange_id == exchange_id
                    )
                ).mappings()
            )
    finally:
        eng.dispose()


def count(city: City, dept: str) -> int:
    eng = make_engine(city.dep.node_db_url(dept))
    try:
        with eng.connect() as c:
            return int(c.execute(select(func.count()).select_from(ExchangeRecord)).scalar_one())
    finally:
        eng.dispose()


def test_violations_lookup_end_to_end(city: City) -> None:
    plate = city.city.violations[0].plate
    r = httpx.get(
        city.url(*T[:1], "police", "vehicle-violations"),
        params={"plate": plate},
        headers=city.headers(
            *T, **{"X-Qiao-Purpose": "traffic-enforcement", "X-Qiao-User": "officer-1"}
        ),
    )
    assert r.status_code == 200, r.text
    assert r.json()["violations"]
    # The agreement the police approver narrowed: the record number withheld, the location
    # generalized to the district, the plate masked (a personal data element) — in the
    # records and where the answer's envelope repeats it.
    for v in [*r.json()["violations"], {"plate": r.json()["plate"], "location": "…区****"}]:
        assert "record_id" not in v and v["location"].endswith("****")
        assert v["plate"] != plate and v["plate"][:2] == plate[:2]
    assert plate.encode() not in r.content
    xid = r.headers["x-qiao-id"]
    (consumer,) = records(city, "transport", xid)
    (provider,) = records(city, "police", xid)
    assert consumer["role"] == "consumer" and provider["role"] == "provider"
    assert consumer["request_hash"] == provider["request_hash"] == r.headers["x-qiao-request-hash"]
    assert (
        consumer["response_hash"]
        == provider["response_hash"]
        == hashlib.sha256(r.content).hexdigest()
    )
    for rec in (consumer, provider):
        assert rec["status"] == 200 and rec["purpose"] == "traffic-enforcement"
        assert rec["end_user"] == "officer-1" and rec["resource"] == "vehicle-violations"
        assert rec["agreement"] == city.dep.sharing.agreements["violations"]
        assert rec["client"] == city.dep.client(*T)
    assert consumer["peer_node"] == "police-node" and provider["peer_node"] == "transport-node"


def test_caller_id_is_kept_and_headers_reach_the_backend(city: City) -> None:
    h = city.headers(*T, **{"X-Qiao-Id": "case-2026-0001", "Cookie": "secret=1"})
    r = httpx.post(
        city.url("transport", "police", "echo", "/sub/path"),
        params={"q": "桥"},
        content=b"hello",
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-qiao-id"] == "case-2026-0001"
    assert body["path"] == "/echo/sub/path" and body["query"] == {"q": "桥"}
    assert body["size"] == 5 and body["sha256"] == hashlib.sha256(b"hello").hexdigest()
    # The app's credential and cookies stay at the consumer node.
    sent = {k.lower(): v for k, v in body["headers"].items()}
    assert "authorization" not in sent and "cookie" not in sent
    assert sent["x-qiao-client"] == city.dep.client(*T)
    assert sent["x-qiao-id"] == "case-2026-0001"


@pytest.mark.parametrize(
    ("mutate", "status", "type_"),
    [
        (lambda h: h.pop("X-Qiao-Client"), 400, "client:missing-client"),
        (lambda h: h.update({"X-Qiao-Client": "nonsense"}), 400, "client:bad-client"),
        (lambda h: h.pop("Authorization"), 401, "client:missing-credential"),
        (lambda h: h.update({"Authorization": "Bearer qk_abc_def"}), 401, "client:bad-credential"),
        (lambda h: h.update({"X-Qiao-Id": "bad id"}), 400, "client:bad-header"),
        (lambda h: h.update({"X-Qiao-User": "x\ty"}), 400, "client:bad-header"),
        (lambda h: h.update({"X-Qiao-Purpose": "p" * 201}), 400, "client:bad-header"),
    ],
)
def test_bad_client_requests(city: City, mutate: Any, status: int, type_: str) -> None:
    h = city.headers(*T)
    mutate(h)
    r = httpx.get(city.url("transport", "police", "echo"), headers=h)
    problem(r, status, f"urn:qiao:problem:{type_}")


def test_malformed_http_is_answered_and_harmless(city: City) -> None:
    import socket

    node = city.dep.nodes["transport"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"GET /r1/x HTTP/1.1\r\nHost: a\r\nX-Qiao-User: a\x7fb\r\n\r\n")
        assert s.recv(100).split(b" ", 2)[1] == b"400"
    assert httpx.get(f"{node.url}/healthz").status_code == 200


def test_apps_of_other_organizations_and_unregistered_apps(city: City) -> None:
    # The bank's key at the transport bureau's node: not this node's organization.
    h = city.headers("bank", "credit-check")
    r = httpx.get(
        f"{city.dep.nodes['transport'].url}/r1/{city.dep.codes['police']}/echo", headers=h
    )
    problem(r, 403, "urn:qiao:problem:client:unknown-client")
    # A key for one app used under another app's name.
    h = city.headers(*T)
    h["X-Qiao-Client"] = h["X-Qiao-Client"].rsplit("/", 1)[0] + "/other-app"
    problem(
        httpx.get(city.url("transport", "police", "echo"), headers=h),
        401,
        "urn:qiao:problem:client:bad-credential",
    )


def test_unknown_provider_and_resource(city: City) -> None:
    h = city.headers(*T)
    node = city.dep.nodes["transport"].url
    problem(
        httpx.get(f"{node}/r1/91350100M000100Y43/x", headers=h),
        404,
        "urn:qiao:problem:client:unknown-provider",
    )
    problem(
        httpx.get(city.url("transport", "police", "no-such-resource"), headers=h),
        404,
        "urn:qiao:problem:client:unknown-resource",
    )
    problem(httpx.get(f"{node}/r1/short/x", headers=h), 400, "urn:qiao:problem:client:bad-path")
    problem(httpx.get(f"{node}/elsewhere", headers=h), 400, "urn:qiao:problem:client:bad-path")


def test_no_agreement_is_refused_by_the_consumer_node(city: City) -> None:
    h = city.headers("bank", "credit-check")
    r = httpx.get(
        city.url("bank", "police", "vehicle-violations"), params={"plate": "x"}, headers=h
    )
    body = problem(r, 403, "urn:qiao:problem:client:no-agreement")
    assert city.dep.codes["bank"] in body["detail"]
    # Refused early: the provider never saw it.
    assert records(city, "bank", r.headers["x-qiao-id"])
    assert not records(city, "police", r.headers["x-qiao-id"])


def test_backend_down_and_slow(city: City) -> None:
    h = city.headers(*T)
    problem(
        httpx.get(city.url("transport", "police", "down"), headers=h),
        502,
        "urn:qiao:problem:provider:backend-unavailable",
    )
    t0 = time.monotonic()
    r = httpx.get(city.url("transport", "police", "slow"), headers=h, timeout=20)
    problem(r, 504, "urn:qiao:problem:provider:backend-timeout")
    assert time.monotonic() - t0 < 5  # the service's timeout is 1 s
    (rec,) = records(city, "police", r.headers["x-qiao-id"])
    assert rec["status"] == 504 and rec["problem_type"].endswith("backend-timeout")


def test_body_limits(city: City) -> None:
    h = city.headers(*T)
    url = city.url("transport", "police", "echo")
    ok = httpx.post(url, content=b"a" * MAX_BODY, headers=h, timeout=30)
    assert ok.status_code == 200 and ok.json()["size"] == MAX_BODY
    problem(
        httpx.post(url, content=b"a" * (MAX_BODY + 1), headers=h),
        413,
        "urn:qiao:problem:client:body-too-large",
    )

    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered, chunked, with no Content-Length
            sent += 65536
            yield b"b" * 65536

    try:
        r = httpx.post(url, content=chunks(), headers=h, timeout=30)
    except httpx.HTTPError:
        pass  # the node may close the connection while we are still sending
    else:
        problem(r, 413, "urn:qiao:problem:client:body-too-large")
    # A large streamed body under the limit passes whole, hashed the same at both ends.
    payload = bytes(range(256)) * 3000
    r = httpx.post(
        url,
        content=iter([payload[i : i + 10000] for i in range(0, len(payload), 10000)]),
        headers=h,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(payload).hexdigest()


def test_large_response_streams_through(city: City) -> None:
    r = httpx.get(city.url("transport", "police", "big"), headers=city.headers(*T), timeout=30)
    assert r.status_code == 200 and len(r.content) == 48 * 65536
    (rec,) = records(city, "transport", r.headers["x-qiao-id"])
    assert rec["response_bytes"] == 48 * 65536
    assert rec["response_hash"] == hashlib.sha256(r.content).hexdigest()


def _peer_url(city: City, dept: str, resource: str) -> str:
    info = city.dep.nodes[dept]
    return f"https://127.0.0.1:{info.peer_port}/r1/{info.org}/{resource}"


def _client_ctx(cert: bytes, key: bytes, ca: bytes, tmp: Any) -> ssl.SSLContext:
    (tmp / "c.pem").write_bytes(cert)
    (tmp / "c.key").write_bytes(key)
    (tmp / "ca.pem").write_bytes(ca)
    return pki.client_context(tmp / "c.pem", tmp / "c.key", tmp / "ca.pem")


def test_provider_refuses_certificates_from_another_ca(city: City, tmp_path: Any) -> None:
    ca_key, ca = pki.create_ca("Not the hub")
    key = pki.generate_private_key()
    csr = pki.create_csr(key, "rogue", city.dep.codes["transport"])
    cert = pki.issue_node_certificate(
        ca_key,
        ca,
        csr,
        node_name="rogue",
        org_code=city.dep.codes["transport"],
        hosts=["127.0.0.1"],
        days=1,
    )
    hub_ca = (city.dep.data_dir / "hub" / "ca.pem").read_bytes()
    ctx = _client_ctx(pki.cert_to_pem(cert), pki.key_to_pem(key), hub_ca, tmp_path)
    with pytest.raises(httpx.HTTPError):
        httpx.get(
            _peer_url(city, "police", "echo"),
            verify=ctx,
            headers={"X-Qiao-Client": city.dep.client(*T)},
        )
    # And with no client certificate at all.
    plain = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    plain.check_hostname = False
    with pytest.raises(httpx.HTTPError):
        httpx.get(_peer_url(city, "police", "echo"), verify=plain)


def test_provider_refuses_certificates_not_in_the_configuration(city: City, tmp_path: Any) -> None:
    hub_dir = city.dep.data_dir / "hub"
    ca_key = pki.load_key_pem((hub_dir / "ca.key").read_bytes())
    ca = pki.load_cert_pem((hub_dir / "ca.pem").read_bytes())
    key = pki.generate_private_key()
    csr = pki.create_csr(key, "unlisted", city.dep.codes["transport"])
    cert = pki.issue_node_certificate(
        ca_key,
        ca,
        csr,
        node_name="unlisted",
        org_code=city.dep.codes["transport"],
        hosts=["127.0.0.1"],
        days=1,
    )
    ctx = _client_ctx(pki.cert_to_pem(cert), pki.key_to_pem(key), pki.cert_to_pem(ca), tmp_path)
    r = httpx.get(
        _peer_url(city, "police", "echo"),
        verify=ctx,
        headers={"X-Qiao-Client": city.dep.client(*T)},
    )
    problem(r, 403, "urn:qiao:problem:provider:certificate-mismatch")
    # A listed node may not speak for another organization's app.
    tdir = city.dep.nodes["transport"].data_dir
    ctx = _client_ctx(
        (tdir / "node.pem").read_bytes(),
        (tdir / "node.key").read_bytes(),
        pki.cert_to_pem(ca),
        tmp_path,
    )
    r = httpx.get(
        _peer_url(city, "police", "echo"),
        verify=ctx,
        headers={"X-Qiao-Client": city.dep.client("bank", "credit-check")},
    )
    body = problem(r, 403, "urn:qiao:problem:provider:certificate-mismatch")
    assert "transport-node" in body["detail"]
    # The provider node is authoritative: it re-checks the agreements itself.
    r = httpx.get(
        _peer_url(city, "police", "vehicle-violations"),
        verify=ctx,
        headers={"X-Qiao-Client": city.dep.client(*T), "X-Qiao-Purpose": "traffic-enforcement"},
        params={"plate": "x"},
    )
    assert r.status_code == 200
    r = httpx.get(
        _peer_url(city, "police", "vehicle-violations"),
        verify=ctx,
        headers={"X-Qiao-Client": city.dep.client(*T), "X-Qiao-Purpose": "marketing"},
        params={"plate": "x"},
    )
    problem(r, 403, "urn:qiao:problem:client:purpose-not-allowed")
    r = httpx.get(
        _peer_url(city, "police", "identity-verification"),
        verify=ctx,
        headers={"X-Qiao-Client": city.dep.client(*T), "X-Qiao-Purpose": "traffic-enforcement"},
    )
    problem(r, 403, "urn:qiao:problem:client:no-agreement")


def test_revoked_certificate_is_refused(city: City) -> None:
    h = city.headers("health", "epidemic-stats")
    url = city.url("health", "police", "echo")
    assert httpx.get(url, headers=h).status_code == 200
    city.registry.revoke("health-node", "test: key compromise")

    def refused() -> bool:
        r = httpx.get(url, headers=h)
        return r.status_code == 403 and r.json()["type"].endswith("certificate-revoked")

    wait_for(refused)


def test_tampered_configuration_is_refused_and_last_good_kept(city: City) -> None:
    health = city.dep.nodes["transport"].url + "/healthz"
    serial = httpx.get(health).json()["configuration"]["serial"]
    city.proxy.mode = "tamper"
    try:
        wait_for(lambda: "signature" in httpx.get(health).json()["configuration"]["last_error"])
        status = httpx.get(health).json()
        assert status["configuration"]["serial"] == serial
        r = httpx.get(city.url("transport", "police", "echo"), headers=city.headers(*T))
        assert r.status_code == 200
    finally:
        city.proxy.mode = "pass"
    wait_for(lambda: httpx.get(health).json()["configuration"]["last_error"] == "")


def test_hub_unreachable_grace_period_then_refusal_then_recovery(city: City) -> None:
    node = city.dep.nodes["transport"]
    url = city.url("transport", "police", "echo")
    city.proxy.mode = "down"
    try:
        time.sleep(1.5)
        status = httpx.get(f"{node.url}/healthz").json()["configuration"]
        assert 0 < status["grace_remaining_seconds"] < 6
        assert "unreachable" in status["last_error"]
        assert httpx.get(url, headers=city.headers(*T)).status_code == 200  # still serving

        def expired() -> bool:
            return httpx.get(f"{node.url}/healthz").status_code == 503

        wait_for(expired, 15)
        health = httpx.get(f"{node.url}/healthz").json()
        assert health["status"] == "unavailable" and "expired" in health["reason"]
        body = problem(
            httpx.get(url, headers=city.headers(*T)),
            503,
            "urn:qiao:problem:consumer:configuration-expired",
        )
        assert "grace period" in body["detail"]
    finally:
        city.proxy.mode = "pass"
    # Every node lost the hub, the provider's too: both must have recovered by themselves.
    for dept in ("transport", "police"):
        health_url = f"{city.dep.nodes[dept].url}/healthz"
        wait_for(lambda u=health_url: httpx.get(u).status_code == 200)  # type: ignore[misc]
    assert httpx.get(url, headers=city.headers(*T)).status_code == 200


def test_nothing_crashed_and_every_exchange_was_recorded(city: City) -> None:
    before = {d: count(city, d) for d in ("transport", "police")}
    outcomes = []
    h = city.headers(*T)
    for i in range(30):
        resource = ["echo", "down", "no-such", "slow" if i == 0 else "echo"][i % 4]
        r = httpx.get(city.url("transport", "police", resource), headers=h, timeout=10)
        outcomes.append(r.status_code)
    assert set(outcomes) >= {200, 502, 404}
    # Every call is on record at the consumer; the ones that reached the provider there too.
    assert count(city, "transport") - before["transport"] == 30
    reached = sum(1 for s in outcomes if s != 404)
    assert count(city, "police") - before["police"] == reached
    for name, proc in [("hub", city.dep.hub)] + [(k, n.process) for k, n in city.dep.nodes.items()]:
        assert proc is not None and proc.running, f"{name} is not running"
