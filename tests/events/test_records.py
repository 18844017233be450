"""Records of published and delivered events: digests over RFC 8785 canonical JSON, one
exchange record per batch whose request hash commits the digests, durable on return, never
counted against an agreement's exchange quota, and the check of a batch against its entry."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, update

from qiao.canonical import canonical_json
from qiao.db import make_engine, migrate
from qiao.events.record_models import EventRecord
from qiao.events.records import (
    DeliveredRecord,
    EventRecorder,
    PublishedRecord,
    batch_hash,
    canonical_event,
    event_digest,
    ledger_index,
    list_records,
    verify,
)
from qiao.exchange.limits import Limiter
from qiao.exchange.models import ExchangeRecord
from qiao.exchange.records import RecordWriter
from tests.agreements.test_policy import agreement

ORG = "91110000000000000A"
OTHER = "91310000000000000B"
BACKEND = f"gov/{ORG}/backend"
APP = f"gov/{OTHER}/inspector"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- pure functions ------------------------------------------------------------------------
def test_an_events_digest_is_sha256_of_its_canonical_json() -> None:
    # RFC 8785 §3.2: members sorted by UTF-16 code units, no whitespace, numbers as ECMAScript
    # prints them (1.0 -> 1, 1e21 -> 1e+21), non-ASCII left as UTF-8, controls as \u00xx.
    event = {"z": [1.0, 1e21], "a": "é/\x1f", "\U0001f600": 1, "\ufb01": 2}
    expected = '{"a":"é/\\u001f","z":[1,1e+21],"\U0001f600":1,"\ufb01":2}'.encode()
    assert event_digest(event) == (_sha(expected), len(expected))
    # Member order and whitespace of the event as received do not change the digest.
    assert event_digest({"b": 1, "a": 2})[0] == event_digest({"a": 2, "b": 1})[0]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**53 - 1, 2**53, -(2**53), 2**63, 2**64])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-5, 1e-6, 1.5e-6, 1e15 + 0.5, 1e16, 1e21, -0.0, 2.0**53, 0.1 + 0.2])
    | st.text(st.characters(codec=None, exclude_categories=())),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.sampled_from("az\x1f\u00e9\ue000\ufb01\U0001f600\U00010000"), max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_the_fast_encoder_writes_rfc8785s_bytes(value: Any) -> None:
    """The orjson path writes exactly what the full RFC 8785 encoder writes, or gives way."""
    try:
        expected: bytes | None = canonical_json(value)
    except Exception:
        expected = None  # not representable in RFC 8785: the fast path must not invent bytes
    if expected is None:
        with pytest.raises(Exception):  # noqa: B017  (whatever the full encoder raises)
            canonical_event(value)
    else:
        assert canonical_event(value) == expected


def test_the_batch_hash_covers_the_event_ids_and_digests_in_order() -> None:
    pairs = [("e-1", "aa" * 32), ("e-2", "bb" * 32)]
    expected = f'[["e-1","{"aa" * 32}"],["e-2","{"bb" * 32}"]]'.encode()
    assert batch_hash(pairs) == _sha(expected)
    assert batch_hash(reversed(pairs)) != batch_hash(pairs)


def _rows(role: str = "subscriber") -> list[dict[str, Any]]:
    return [
        {
            "id": i + 1,
            "event_id": f"e-{i}",
            "digest": event_digest({"n": i})[0],
            "bytes": event_digest({"n": i})[1],
            "role": role,
            "stream": "ORG/accidents",
            "client": "CN/ORG2/app",
            "agreement": "AG-1",
        }
        for i in range(3)
    ]


def _entry(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "exchange_id": "b-1",
        "role": "subscriber",
        "node": "n1",
        "request_hash": batch_hash((r["event_id"], r["digest"]) for r in rows),
        "provider_org": "ORG",
        "resource": "accidents",
        "client": "CN/ORG2/app",
        "request_bytes": sum(r["bytes"] for r in rows),
        "agreement": "AG-1",
    }


def test_verify_compares_the_recomputed_hash_with_the_ledger_entry() -> None:
    rows = _rows()
    entry = _entry(rows)
    good = entry["request_hash"]
    ok = verify(rows, "b-1", 7, entry, "n1")
    assert ok.verified and ok.recomputed == good and ok.events == 3

    tampered = [dict(rows[0], digest=event_digest({"n": 99})[0]), *rows[1:]]
    bad = verify(tampered, "b-1", 7, entry, "n1")
    assert not bad.verified and "changed" in bad.problem and bad.on_ledger == good

    assert not verify(rows, "b-1", 7, entry, "n2").verified  # another node's record
    assert not verify(rows, "b-1", 7, dict(entry, exchange_id="b-2"), "n1").verified
    assert not verify(rows, "b-1", 7, dict(entry, role="publisher"), "n1").verified
    assert "not on the ledger" in verify(rows, "b-1", None, None, "n1").problem
    assert "no event records" in verify([], "b-1", 7, entry, "n1").problem


@pytest.mark.parametrize(
    "column,value",
    [
        ("stream", "ORG/other"),
        ("client", "CN/ORG3/app"),
        ("role", "publisher"),
        ("bytes", 1),
        ("agreement", "AG-2"),
    ],
)
def test_verify_checks_what_the_batch_record_vouches_for_in_each_row(
    column: str, value: Any
) -> None:
    # Fields outside the hash but on the ledger in the batch's exchange record: a change in
    # any row (not only the first) is found (reliability/test_tamper.py found these).
    rows = _rows()
    entry = _entry(rows)
    assert verify(rows, "b-1", 7, entry, "n1").verified
    tampered = [*rows[:2], dict(rows[2], **{column: value})]
    result = verify(tampered, "b-1", 7, entry, "n1")
    assert not result.verified and result.problem


# --- at a node's store ---------------------------------------------------------------------
async def _recorder(db_url: str) -> tuple[EventRecorder, RecordWriter, Engine]:
    migrate("node", db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine)
    return EventRecorder(writer, ORG), writer, engine


@pytest.fixture
async def node(db_url: str) -> AsyncIterator[tuple[EventRecorder, RecordWriter, Engine]]:
    recorder, writer, engine = await _recorder(db_url)
    try:
        yield recorder, writer, engine
    finally:
        writer.close()
        engine.dispose()


def _exchange_records(engine: Engine) -> list[dict[str, Any]]:
    t = ExchangeRecord.__table__
    with engine.connect() as c:
        return [dict(r) for r in c.execute(select(t).order_by(t.c.id)).mappings()]


async def test_records_are_durable_when_the_calls_return(
    node: tuple[EventRecorder, RecordWriter, Engine], db_url: str
) -> None:
    recorder, _, _ = node
    started = datetime.now(UTC) - timedelta(milliseconds=5)
    published = [
        PublishedRecord("e-1", {"plate": "京A1", "n": 1}, {"n-a": 1, "n-b": 1}),
        PublishedRecord("e-2", {"plate": "京A2", "n": 2}, {"n-a": 2, "n-b": 2}),
    ]
    await recorder.published(
        client=BACKEND, stream="accidents", events=published, started_at=started
    )
    delivered = [
        DeliveredRecord(1, "e-1", {"plate": "tok-1", "n": 1}, "agr-1"),
        DeliveredRecord(2, "e-2", {"plate": "tok-2", "n": 2}, "agr-1"),
    ]
    await recorder.delivered(
        client=APP,
        provider_org=OTHER,
        stream="accidents",
        events=delivered,
        via="webhook:city",
        started_at=started,
    )
    # A fresh engine (another connection) sees both batches: they were committed before the
    # calls returned.
    fresh = make_engine(db_url)
    try:
        pub, sub = _exchange_records(fresh)
        rows = list_records(fresh, limit=10)
    finally:
        fresh.dispose()
    assert [r["event_id"] for r in rows] == ["e-2", "e-1", "e-2", "e-1"]  # newest first
    for ex, role, method, via, status, agr, events in (
        (pub, "publisher", "PUBLISH", "publish", 202, "", published),
        (sub, "subscriber", "DELIVER", "webhook:city", 200, "agr-1", delivered),
    ):
        batch = [r for r in reversed(rows) if r["batch"] == ex["exchange_id"]]
        digests = [event_digest(e.event) for e in events]
        assert [r["digest"] for r in batch] == [d for d, _ in digests]
        assert {r["role"] for r in batch} == {role}
        assert {r["via"] for r in batch} == {via}
        assert (ex["role"], ex["method"], ex["path"], ex["status"]) == (role, method, via, status)
        assert ex["request_hash"] == batch_hash(
            (e.event_id, d) for e, (d, _) in zip(events, digests, strict=True)
        )
        assert ex["request_bytes"] == sum(n for _, n in digests) == sum(r["bytes"] for r in batch)
        assert ex["agreement"] == agr and ex["resource"] == "accidents"
        assert ex["ledger_index"] is None  # in the ledger's outbox
    pub_rows = [r for r in rows if r["role"] == "publisher"]
    assert pub_rows[-1]["offsets"] == {"n-a": 1, "n-b": 1} and pub_rows[-1]["offset"] is None
    assert pub_rows[-1]["stream"] == f"{ORG}/accidents"
    sub_rows = [r for r in rows if r["role"] == "subscriber"]
    assert [r["offset"] for r in sub_rows] == [2, 1] and sub_rows[0][
        "stream"
    ] == f"{OTHER}/accidents"
    assert sub["provider_org"] == OTHER and pub["provider_org"] == ORG


async def test_a_batch_of_several_agreements_names_none_and_empty_batches_are_not_recorded(
    node: tuple[EventRecorder, RecordWriter, Engine],
) -> None:
    recorder, _, engine = node
    now = datetime.now(UTC)
    await recorder.delivered(
        client=APP, provider_org=OTHER, stream="s", events=[], via="pull", started_at=now
    )
    assert _exchange_records(engine) == []
    await recorder.delivered(
        client=APP,
        provider_org=OTHER,
        stream="s",
        events=[DeliveredRecord(1, "e-1", {}, "agr-1"), DeliveredRecord(2, "e-2", {}, "agr-2")],
        via="sse",
        started_at=now,
    )
    (ex,) = _exchange_records(engine)
    assert ex["agreement"] == ""
    assert [r["agreement"] for r in list_records(engine, batch=ex["exchange_id"])] == [
        "agr-1",
        "agr-2",
    ]


async def test_event_records_never_count_against_exchange_quotas(
    node: tuple[EventRecorder, RecordWriter, Engine],
) -> None:
    recorder, _, engine = node
    a = agreement(daily_quota=2, rate_limit={"requests": 2, "per_seconds": 3600})
    now = datetime.now(UTC)
    for via in ("pull", "sse", "webhook:w"):
        await recorder.delivered(
            client=APP,
            provider_org=OTHER,
            stream="s",
            events=[DeliveredRecord(i, f"{via}-{i}", {"i": i}, a.id) for i in range(5)],
            via=via,
            started_at=now,
        )
    assert {r["agreement"] for r in _exchange_records(engine)} == {a.id}
    for role in ("consumer", "provider"):
        limiter = Limiter(engine, role)
        limiter.seed([a], now)  # counts from this node's records, as after a restart
        assert limiter.used(a.id) == (0, 0), role
        limiter.admit(a, now)
        limiter.admit(a, now)  # the agreement's whole quota is still there


async def test_the_ledger_index_of_a_batch_is_read_from_its_exchange_record(
    node: tuple[EventRecorder, RecordWriter, Engine],
) -> None:
    recorder, _, engine = node
    now = datetime.now(UTC)
    await recorder.published(
        client=BACKEND, stream="s", events=[PublishedRecord("e", {}, {"n": 1})], started_at=now
    )
    (ex,) = _exchange_records(engine)
    assert ledger_index(engine, ex["exchange_id"]) is None
    with engine.begin() as c:
        c.execute(update(ExchangeRecord).values(ledger_index=41))
    assert ledger_index(engine, ex["exchange_id"]) == 41
    assert ledger_index(engine, "no-such-batch") is None


async def test_a_batch_and_its_exchange_record_commit_together(tmp_path: Any) -> None:
    """If the event rows cannot be written, neither is the exchange record (one
    transaction), and the caller hears of it."""
    url = f"sqlite:///{tmp_path / 'n.db'}"
    recorder, writer, engine = await _recorder(url)
    try:
        with engine.begin() as c:  # the table is gone: the event rows' INSERT fails
            c.exec_driver_sql("DROP TABLE event_records")
        with pytest.raises(Exception, match="event_records"):
            await recorder.published(
                client=BACKEND,
                stream="s",
                events=[PublishedRecord("e", {}, {"n": 1})],
                started_at=datetime.now(UTC),
            )
        assert _exchange_records(engine) == []
    finally:
        writer.close()
        engine.dispose()


async def test_per_event_cost(tmp_path: Any) -> None:
    """5,000 events a second through one node: 50 concurrent deliveries of 100 events, with
    the cost per event printed (run with -s); bounded loosely so a slow machine passes."""
    recorder, writer, engine = await _recorder(f"sqlite:///{tmp_path / 'n.db'}")
    event = {
        "accident_id": "A-000001",
        "plate": "tok-3f9a2c",
        "location": {"lat": 39.9042, "lon": 116.4074, "district": "东城区"},
        "severity": 2,
        "reported_at": "2026-11-29T12:00:00+08:00",
    }
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                recorder.delivered(
                    client=APP,
                    provider_org=OTHER,
                    stream="s",
                    events=[
                        DeliveredRecord(b * 100 + i, f"e-{b}-{i}", event, "agr-1")
                        for i in range(100)
                    ],
                    via="pull",
                    started_at=datetime.now(UTC),
                )
                for b in range(50)
            )
        )
        elapsed = time.perf_counter() - start
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(EventRecord)).scalar() == 5000
        print(f"\n5000 events in {elapsed:.3f} s: {elapsed / 5000 * 1e6:.1f} µs an event")
        assert elapsed < 10
    finally:
        writer.close()
        engine.dispose()
