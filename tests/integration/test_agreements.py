"""Agreements across the running city: a change made at the hub takes effect at every node
within 5 seconds (nodes long-poll the signed configuration), and refusals name the state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from qiao.agreements.service import AgreementService
from qiao.demo.sharing import person
from qiao.identity.roles import Role
from tests.integration.conftest import City

PROPAGATION_LIMIT_S = 5.0


def _within(limit: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check`` holds; fails if it does not within ``limit`` (+ one poll)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"not within {limit} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def _serials(city: City) -> dict[str, int]:
    out = {}
    for dept, node in city.dep.nodes.items():
        body = httpx.get(f"{node.url}/healthz", timeout=5).json()
        out[dept] = int(body["configuration"]["serial"] or 0)
    return out


def _hub_serial(city: City) -> int:
    return int(httpx.get(f"{city.dep.hub_url}/healthz", timeout=5).json()["serial"])


def _call(city: City) -> httpx.Response:
    headers = city.headers(
        "transport", "traffic-enforcement", **{"X-Qiao-Purpose": "operator-licensing"}
    )
    uscc = city.city.enterprises[0].uscc
    url = city.url("transport", "market", "enterprise-credit", f"/{uscc}")
    return httpx.get(url, headers=headers, timeout=10)


def _type(r: httpx.Response) -> str:
    return str(r.json().get("type", "")) if r.status_code >= 400 else ""


def test_new_suspended_resumed_and_revoked_agreements_reach_every_node_within_5_s(
    city: City,
) -> None:
    svc = AgreementService(city.registry)
    codes = city.dep.codes
    assert _type(_call(city)) == "urn:qiao:problem:client:no-agreement"
    timings: dict[str, Any] = {}

    def everywhere(change: Callable[[], Any], expect: Callable[[httpx.Response], bool]) -> float:
        change()
        serial = _hub_serial(city)
        took = _within(PROPAGATION_LIMIT_S, lambda: min(_serials(city).values()) >= serial)
        assert expect(_call(city))
        return took

    # A new agreement: transport subscribes to market regulation's (unconditional)
    # enterprise credit, to check the companies it licenses.
    made: dict[str, Any] = {}

    def subscribe() -> None:
        made["a"] = svc.subscribe(
            person(codes, "transport", Role.APP_DEVELOPER),
            codes["market"],
            "enterprise-credit",
            purposes=("operator-licensing",),
        )

    timings["new"] = everywhere(subscribe, lambda r: r.status_code == 200)
    agreement_id = made["a"].id
    approver = person(codes, "market", Role.APPROVER)
    timings["suspended"] = everywhere(
        lambda: svc.suspend(approver, agreement_id, "检查调用情况"),
        lambda r: (
            _type(r) == "urn:qiao:problem:client:agreement-suspended"
            and "检查调用情况" in r.json()["detail"]
        ),
    )
    timings["resumed"] = everywhere(
        lambda: svc.resume(approver, agreement_id), lambda r: r.status_code == 200
    )
    timings["revoked"] = everywhere(
        lambda: svc.revoke(approver, agreement_id, "合作结束"),
        lambda r: _type(r) == "urn:qiao:problem:client:agreement-revoked",
    )
    assert max(timings.values()) < PROPAGATION_LIMIT_S, timings


def test_the_consumer_node_refuses_early_what_the_agreement_does_not_allow(city: City) -> None:
    # A purpose the agreement does not list is refused at the consumer node before anything
    # leaves it. (The provider node's own refusal, for a call sent to it directly over mutual
    # TLS, is tested in test_exchange.py, test_provider_refuses_certificates_not_in_the_...)
    h = city.headers("transport", "traffic-enforcement", **{"X-Qiao-Purpose": "marketing"})
    r = httpx.get(
        city.url("transport", "police", "vehicle-violations"), params={"plate": "x"}, headers=h
    )
    assert _type(r) == "urn:qiao:problem:client:purpose-not-allowed"
    assert r.json()["allowed_purposes"] == ["traffic-enforcement"]
    # Asking for a field outside the projection, by the fields selector.
    h["X-Qiao-Purpose"] = "traffic-enforcement"
    r = httpx.get(
        city.url("transport", "police", "vehicle-violations"),
        params={"plate": "x", "fields": "plate,record_id"},
        headers=h,
    )
    assert _type(r) == "urn:qiao:problem:client:field-not-allowed"
    assert "record_id" in r.json()["detail"]
