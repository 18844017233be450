"""Network faults (issue 9, part 6), each measured: how long until the documented answer, how
long until the city has recovered by itself, and how many exchange records were lost (none).

What tests/integration already covers is not repeated here: a backend down or slow
(test_exchange.py::test_backend_down_and_slow), the hub's grace period as such
(test_exchange.py::test_hub_unreachable_grace_period_then_refusal_then_recovery), a witness
stopped and started (test_ledger_faults.py), a publish refused while the hub is killed
(test_events_faults.py). This file adds what they do not:

1. the provider's *node* unreachable — killed (connection refused), and frozen (SIGSTOP: the
   kernel accepts the connection, nothing answers) — at the consumer: the documented problem
   and status, within the consumer's ``provider_timeout_seconds``; nothing recorded as a
   success; calls succeed again once the provider is back, without restarting the consumer;
2. the hub unreachable for all the nodes at once, with traffic: exchanges served within the
   grace period, refused after it, served again on the hub's return; the exchange records
   written meanwhile queue and all reach the ledger afterwards; event publishes and pulls
   answer the documented 503 with ``Retry-After`` meanwhile, and work again after;
3. a witness that never answers (frozen, not stopped): checkpoints are still cosigned by the
   other two (the quorum), and the witness catches up after it thaws.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from qiao.db import make_engine
from qiao.demo.people import generate_accidents
from qiao.exchange.models import ExchangeRecord
from reliability.conftest_soak import (
    CONFIG_GRACE_SECONDS,
    PROVIDER_TIMEOUT_SECONDS,
    SoakCity,
    eventually,
    soak_city,
)
from reliability.figures import record

__all__ = ["soak_city"]

PROBLEM = "urn:qiao:problem:"
# A refused connection is answered at once; allow for a machine shared with other jobs.
PROMPT_SECONDS = 3.0
# A node that lost the hub finds out at its next configuration fetch (long polls of 1 s) and
# is reached again at the next one after the hub returns (backing off at most
# config_refresh_seconds, 0.5 s): both well within this.
RECOVERY_SECONDS = 15.0


def _problem(r: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == PROBLEM + type_, body
    assert body["status"] == status and body["title"], body
    return body


def _timed(fn: Any, *args: Any) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = fn(*args)
    return r, time.monotonic() - t0


@pytest.fixture
def city(soak_city: SoakCity) -> Iterator[SoakCity]:
    """The shared city, healthy before and (whatever happened) put back after each fault."""
    soak_city.healthy()
    try:
        yield soak_city
    finally:
        soak_city.proxy.mode = "pass"
        for dept in list(soak_city.frozen):
            soak_city.thaw(dept)
        for proc in soak_city.processes().values():
            if not proc.running:
                proc.start()
        soak_city.healthy()


def _enterprise(city: SoakCity, http: httpx.Client, i: int = 0) -> httpx.Response:
    url, headers = city.enterprise(i)
    return http.get(url, headers={**headers, "X-Qiao-Id": str(uuid.uuid4())})


def _violations(city: SoakCity, http: httpx.Client, i: int = 0) -> httpx.Response:
    url, headers = city.violations(i)
    return http.get(url, headers={**headers, "X-Qiao-Id": str(uuid.uuid4())})


def _misrecorded(city: SoakCity, ids: list[str], failed: int) -> int:
    """How many of these failed calls the consumer's node does not have on record with the
    failure its app saw (missing, or another status)."""
    at_bank = city.record_statuses("bank", ids)
    return len(ids) - len(at_bank) + sum(1 for s in at_bank if s != failed)


def test_a_provider_node_that_is_down(city: SoakCity) -> None:
    market = city.dep.nodes["market"].process
    with httpx.Client(timeout=30) as http:
        assert _enterprise(city, http).status_code == 200
        market.kill()  # kill -9: its ports refuse connections from now on
        answers = [_timed(_enterprise, city, http, i) for i in range(5)]
        for r, _s in answers:
            body = _problem(r, 502, "consumer:provider-unreachable")
            assert body["detail"], body
        slowest = max(s for _r, s in answers)
        ids = [r.headers["x-qiao-id"] for r, _s in answers]
        # Back, at the same address, without restarting the consumer's node.
        market.start()
        market.wait_healthy(60)
        recovered = eventually(lambda: _enterprise(city, http).status_code == 200, RECOVERY_SECONDS)
    # The provider never saw them (it was down): nothing at all on record there.
    wrong = _misrecorded(city, ids, 502) + len(city.record_statuses("market", ids))
    record(
        "network",
        "provider node down: time to 502 provider-unreachable",
        round(slowest, 3),
        "s",
        target=f"< {PROMPT_SECONDS:g}",
        ok=slowest < PROMPT_SECONDS,
        note="kill -9, connection refused; slowest of 5 calls",
    )
    record(
        "network",
        "provider node down: time to recover after it is healthy",
        round(recovered, 2),
        "s",
        target=f"< {RECOVERY_SECONDS:g}",
        ok=recovered < RECOVERY_SECONDS,
        note="the consumer was not restarted",
    )
    record(
        "network",
        "provider node down: failed calls recorded otherwise",
        wrong,
        target="0",
        ok=wrong == 0,
        note="each on record at the consumer with its 502, none at the provider",
    )
    assert slowest < PROMPT_SECONDS
    assert wrong == 0


def _pending_of(city: SoakCity, dept: str, ids: list[str]) -> int:
    eng = make_engine(city.dep.node_db_url(dept))
    try:
        with eng.connect() as c:
            return int(
                c.execute(
                    select(func.count())
                    .select_from(ExchangeRecord)
                    .where(ExchangeRecord.exchange_id.in_(ids))
                    .where(ExchangeRecord.ledger_index.is_(None))
                ).scalar_one()
            )
    finally:
        eng.dispose()


def _in_ledger(city: SoakCity, dept: str, ids: list[str]) -> list[tuple[str, int | None]]:
    eng = make_engine(city.dep.node_db_url(dept))
    try:
        with eng.connect() as c:
            return [
                (str(x), i)
                for x, i in c.execute(
                    select(ExchangeRecord.exchange_id, ExchangeRecord.ledger_index).where(
                        ExchangeRecord.exchange_id.in_(ids)
                    )
                )
            ]
    finally:
        eng.dispose()


def test_the_hub_unreachable_for_every_node(city: SoakCity) -> None:
    transport = city.dep.nodes["transport"]
    publish_url, publish_headers = city.publish_url()
    pull_url, pull_headers = city.pull_url()
    event = {"event_id": f"outage-{uuid.uuid4()}"}
    event |= generate_accidents(1)[0]
    with httpx.Client(timeout=30) as http:
        assert _violations(city, http).status_code == 200
        city.proxy.mode = "down"
        down = time.monotonic()
        try:
            # Within the grace period: served on the cached configuration, records kept.
            served = [_violations(city, http, i) for i in range(5)]
            assert [r.status_code for r in served] == [200] * 5, [r.text for r in served]
            ids = [r.headers["x-qiao-id"] for r in served]

            def noticed() -> bool:
                conf = http.get(f"{transport.url}/healthz").json()["configuration"]
                return "unreachable" in conf["last_error"]

            detected = eventually(noticed, RECOVERY_SECONDS)
            # Events need the broker, which is the hub's: 503 with Retry-After, at once.
            r, publish_seconds = _timed(
                lambda: http.post(publish_url, json={"events": [event]}, headers=publish_headers)
            )
            _problem(r, 503, "provider:broker-unavailable")
            assert int(r.headers["Retry-After"]) > 0
            p, pull_seconds = _timed(lambda: http.get(pull_url, headers=pull_headers))
            _problem(p, 503, "consumer:broker-unavailable")
            assert int(p.headers["Retry-After"]) > 0
            # Nothing reached the ledger meanwhile: the records wait at both nodes.
            assert _pending_of(city, "transport", ids) == 5
            assert _pending_of(city, "police", ids) == 5

            # After the grace period: refused, as documented.
            last: list[httpx.Response] = []

            def expired() -> bool:
                r = _violations(city, http)
                last[:] = [r]
                return r.status_code == 503

            eventually(expired, CONFIG_GRACE_SECONDS + RECOVERY_SECONDS, step=0.2)
            refused_after = time.monotonic() - down
            # Both nodes lost the hub at once; whichever reached it last keeps its configuration
            # longest, so the refusal comes from the consumer's node or the provider's.
            side = last[0].json().get("type", "").removeprefix(PROBLEM).split(":")[0]
            assert side in ("consumer", "provider"), last[0].text
            body = _problem(last[0], 503, f"{side}:configuration-expired")
            assert "grace period" in body["detail"]
            refused_ids = [last[0].headers["x-qiao-id"]]
        finally:
            city.proxy.mode = "pass"
        back = time.monotonic()
        recovered = eventually(lambda: _violations(city, http).status_code == 200, RECOVERY_SECONDS)
        # The backend publishes the same event again (same id: stored once) and it goes.
        republished = eventually(
            lambda: (
                http.post(
                    publish_url, json={"events": [event]}, headers=publish_headers
                ).status_code
                == 202
            ),
            RECOVERY_SECONDS,
        )
        # Every record written during the outage reaches the ledger, the refusal's too.
        all_ids = ids + refused_ids
        eventually(
            lambda: (
                _pending_of(city, "transport", all_ids) == 0
                and _pending_of(city, "police", ids) == 0
            ),
            60,
            step=0.25,
        )
        flushed_after = time.monotonic() - back
        status = city.ledger_status()
        lost = 0
        for dept, want in (("transport", all_ids), ("police", ids)):
            placed = _in_ledger(city, dept, want)
            assert len(placed) == len(want), (dept, placed)
            for exchange_id, index in placed:
                assert index is not None and index < status["size"]
                entry = http.get(f"{city.dep.hub_url}/ledger/entries/{index}").json()
                if (entry.get("type"), entry.get("node"), entry.get("exchange_id")) != (
                    "exchange",
                    f"{dept}-node",
                    exchange_id,
                ):
                    lost += 1
    # The grace period runs from the last fetch, up to a long poll (1 s) before the hub went.
    grace_ok = CONFIG_GRACE_SECONDS - 1.5 <= refused_after <= CONFIG_GRACE_SECONDS + 5.0
    record(
        "network",
        "hub unreachable: time for a node to notice",
        round(detected, 2),
        "s",
        note="health says unreachable; exchanges still served",
    )
    record(
        "network",
        "hub unreachable: event publish / pull answered 503",
        f"{publish_seconds:.2f} / {pull_seconds:.2f}",
        "s",
        target=f"< {PROMPT_SECONDS:g}",
        ok=max(publish_seconds, pull_seconds) < PROMPT_SECONDS,
    )
    record(
        "network",
        "hub unreachable: time to configuration-expired",
        round(refused_after, 2),
        "s",
        target=f"grace {CONFIG_GRACE_SECONDS:g} s (-1.5, +5)",
        ok=grace_ok,
        note=f"503 {side}:configuration-expired first",
    )
    record(
        "network",
        "hub back: time to serve exchanges / accept events",
        f"{recovered:.2f} / {recovered + republished:.2f}",
        "s",
        target=f"< {RECOVERY_SECONDS:g}",
        ok=True,
    )
    record(
        "network",
        "hub back: time until queued records are in the ledger",
        round(flushed_after, 2),
        "s",
        note=f"{len(all_ids) + len(ids)} records at two nodes",
    )
    record("network", "hub unreachable: exchange records lost", lost, target="0", ok=lost == 0)
    assert lost == 0
    assert max(publish_seconds, pull_seconds) < PROMPT_SECONDS
    assert grace_ok, refused_after


def test_a_node_that_never_answers_as_provider_and_as_witness(city: SoakCity) -> None:
    """Market regulation's node frozen: the bank's calls to it time out at the bank's node
    (one on the pooled connection, one on a new connection whose TLS handshake is never
    answered), and the hub cosigns checkpoints with the other two witnesses meanwhile. Both
    faults come from one freeze so that the short profile pays for one timeout, not two."""
    name = city.dep.nodes["market"].name

    def witness() -> dict[str, Any]:
        return next(w for w in city.ledger_status()["witnesses"] if w["name"].endswith(name))

    def call_market(i: int) -> tuple[httpx.Response, float]:
        with httpx.Client(timeout=30) as own:
            return _timed(_enterprise, city, own, i)

    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(2) as pool:
        assert _enterprise(city, http).status_code == 200  # leaves a pooled connection
        before = city.ledger_status()["size"]
        city.freeze("market")
        frozen = time.monotonic()
        try:
            calls = [pool.submit(call_market, i) for i in range(2)]
            # Meanwhile transport calls public security: entries for the hub to checkpoint.
            for i in range(3):
                assert _violations(city, http, i).status_code == 200
            # The records reach the ledger (submitted every 0.5 s): the size to cosign.
            eventually(lambda: city.ledger_status()["size"] >= before + 6, 30)
            size = city.ledger_status()["size"]
            eventually(lambda: city.ledger_status()["cosigned_size"] >= size, 60)
            cosigned_after = time.monotonic() - frozen
            # Cosigned without it (the hub asks the witnesses at once and does not wait for
            # a silent one once a quorum answered); its own request times out meanwhile and
            # the ledger's status says so.
            assert witness().get("size", 0) < size, witness()
            eventually(lambda: bool(witness().get("last_error")), 15)
            quorum = city.ledger_status()["quorum"]
            answers = [c.result(60) for c in calls]
        finally:
            city.thaw("market")
        thawed = time.monotonic()
        for r, _s in answers:
            _problem(r, 504, "consumer:provider-timeout")
        ids = [r.headers["x-qiao-id"] for r, _s in answers]
        waited = [s for _r, s in answers]
        # The provider's node picks up where it stopped: it may first refresh a configuration
        # that aged while it was frozen; then it serves again.
        eventually(lambda: _enterprise(city, http).status_code == 200, RECOVERY_SECONDS)
        provider_back = time.monotonic() - thawed
        for i in range(2):
            assert _violations(city, http, i).status_code == 200
        target = city.ledger_status()["size"]

        def caught_up() -> bool:
            w = witness()
            return bool(w.get("size", 0) >= target and not w.get("last_error"))

        eventually(caught_up, 60, step=0.25)
        witness_back = time.monotonic() - thawed
    # The frozen node answers the calls it had accepted late, after the consumer gave up; the
    # consumer's record says 504, the outcome its app saw.
    wrong = _misrecorded(city, ids, 504)
    # The call sent on the pooled connection sat in the frozen node's socket: on thawing, the
    # node may serve it to an app that has gone, and record that (the provider's view).
    late = city.record_statuses("market", ids)
    bound = PROVIDER_TIMEOUT_SECONDS + PROMPT_SECONDS
    in_time = all(PROVIDER_TIMEOUT_SECONDS - 0.5 <= w < bound for w in waited)
    record(
        "network",
        "provider node black hole: time to 504 provider-timeout",
        f"{min(waited):.2f}-{max(waited):.2f}",
        "s",
        target=f"{PROVIDER_TIMEOUT_SECONDS:g} s timeout, < {bound:g}",
        ok=in_time,
        note="SIGSTOP: the kernel accepts the connection, nothing answers; pooled and new",
    )
    record(
        "network",
        "provider node black hole: time to serve again after it thaws",
        round(provider_back, 2),
        "s",
        target=f"< {RECOVERY_SECONDS:g}",
        ok=provider_back < RECOVERY_SECONDS,
    )
    record(
        "network",
        "witness black hole: time to a checkpoint cosigned without it",
        round(cosigned_after, 2),
        "s",
        note=f"quorum {quorum} of 3; witnesses are asked at once, and a silent one is not "
        "waited for once a quorum answered",
    )
    record(
        "network",
        "witness black hole: time to catch up after it thaws",
        round(witness_back, 2),
        "s",
        target=f"< {RECOVERY_SECONDS:g}",
        ok=witness_back < RECOVERY_SECONDS,
    )
    record(
        "network",
        "provider node black hole: failed calls recorded otherwise",
        wrong,
        target="0",
        ok=wrong == 0,
        note=f"at the consumer; the provider recorded {len(late)} it served late: {late}",
    )
    assert in_time, waited
    assert wrong == 0
    assert provider_back < RECOVERY_SECONDS and witness_back < RECOVERY_SECONDS
