"""The conformance suite: every broker backend keeps the promises of qiao.events.broker.

Runs on the embedded broker (SQLite and PostgreSQL) and on NATS JetStream.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from qiao.events.broker import Broker, Outgoing
from qiao.events.models import EventLogEntry
from qiao.events.nats import NatsBroker
from tests.events.conftest import Backend

STREAM = "gov-ps/traffic-accidents"
NODE = "transport-node"


def outgoing(n: int, *, start: int = 0, tag: str = "e", size: int = 64) -> list[Outgoing]:
    now = datetime.now(UTC)
    return [
        Outgoing(
            event_id=f"{tag}-{i}",
            partition_key=f"accident-{i % 7}",
            # Random bytes: what a sealed HPKE envelope looks like to the broker.
            envelope=os.urandom(size),
            published_at=now,
        )
        for i in range(start, start + n)
    ]


async def test_publish_appends_in_order_with_contiguous_offsets(broker: Broker) -> None:
    events = outgoing(5)
    assert await broker.publish(STREAM, NODE, events) == [1, 2, 3, 4, 5]
    assert await broker.publish(STREAM, NODE, outgoing(3, start=5)) == [6, 7, 8]
    got = await broker.fetch(STREAM, NODE, after=0, limit=100)
    assert [e.offset for e in got] == list(range(1, 9))
    assert [e.event_id for e in got] == [f"e-{i}" for i in range(8)]
    first = got[0]
    assert (first.stream, first.subscriber) == (STREAM, NODE)
    assert first.envelope == events[0].envelope
    assert first.partition_key == "accident-0"
    assert abs(first.published_at - events[0].published_at) < timedelta(milliseconds=1)
    assert first.published_at.tzinfo is not None
    assert await broker.publish(STREAM, NODE, []) == []


async def test_republishing_an_event_id_returns_its_offset(broker: Broker) -> None:
    events = outgoing(4)
    assert await broker.publish(STREAM, NODE, events) == [1, 2, 3, 4]
    # A batch sent again after a lost answer, with one new event at the end.
    again = [*events[2:], *outgoing(1, start=4)]
    assert await broker.publish(STREAM, NODE, again) == [3, 4, 5]
    # The same id twice in one batch is stored once.
    twice = outgoing(1, start=5)
    assert await broker.publish(STREAM, NODE, twice + twice) == [6, 6]
    got = await broker.fetch(STREAM, NODE, after=0, limit=100)
    assert [e.offset for e in got] == [1, 2, 3, 4, 5, 6]
    assert got[2].envelope == events[2].envelope


async def test_what_is_acknowledged_survives_closing_the_broker(backend: Backend) -> None:
    first = await backend.open()
    events = outgoing(10)
    assert await first.publish(STREAM, NODE, events) == list(range(1, 11))
    await first.ack(STREAM, NODE, 7)
    await first.close()

    second = await backend.open()
    got = await second.fetch(STREAM, NODE, after=0, limit=100)
    assert [e.envelope for e in got] == [e.envelope for e in events]
    assert await second.acked(STREAM, NODE) == 7
    # Offsets go on where they were; a republished id is still recognised.
    assert await second.publish(STREAM, NODE, outgoing(1, start=10)) == [11]
    assert await second.publish(STREAM, NODE, events[:1]) == [1]


async def test_long_poll_wakes_up_when_an_event_is_published(broker: Broker) -> None:
    await broker.publish(STREAM, NODE, outgoing(2))

    async def publish_later() -> float:
        await asyncio.sleep(0.3)
        await broker.publish(STREAM, NODE, outgoing(1, start=2))
        return time.monotonic()

    publisher = asyncio.create_task(publish_later())
    got = await broker.fetch(STREAM, NODE, after=2, limit=10, wait=5)
    woke = time.monotonic()
    published = await publisher
    assert [e.offset for e in got] == [3]
    assert woke - published < 0.5


async def test_long_poll_times_out_with_nothing(broker: Broker) -> None:
    await broker.publish(STREAM, NODE, outgoing(2))
    started = time.monotonic()
    assert await broker.fetch(STREAM, NODE, after=2, limit=10, wait=0.4) == []
    waited = time.monotonic() - started
    assert 0.35 <= waited < 2.0
    # Without wait, an empty answer at once.
    started = time.monotonic()
    assert await broker.fetch(STREAM, NODE, after=2, limit=10) == []
    assert time.monotonic() - started < 0.35


async def test_fetch_honours_after_and_limit(broker: Broker) -> None:
    await broker.publish(STREAM, NODE, outgoing(10))
    got = await broker.fetch(STREAM, NODE, after=3, limit=4)
    assert [e.offset for e in got] == [4, 5, 6, 7]
    assert [e.offset for e in await broker.fetch(STREAM, NODE, after=8, limit=4)] == [9, 10]
    assert await broker.fetch(STREAM, NODE, after=10, limit=4) == []
    assert await broker.fetch(STREAM, NODE, after=99, limit=4) == []


async def test_ack_only_moves_forward(broker: Broker) -> None:
    assert await broker.acked(STREAM, NODE) == 0
    await broker.publish(STREAM, NODE, outgoing(10))
    await broker.ack(STREAM, NODE, 5)
    assert await broker.acked(STREAM, NODE) == 5
    await broker.ack(STREAM, NODE, 3)
    assert await broker.acked(STREAM, NODE) == 5
    await broker.ack(STREAM, NODE, 10)
    assert await broker.acked(STREAM, NODE) == 10
    with pytest.raises(ValueError, match="never published"):
        await broker.ack(STREAM, NODE, 11)
    with pytest.raises(ValueError, match="0 or more"):
        await broker.ack(STREAM, NODE, -1)
    assert await broker.acked(STREAM, NODE) == 10


async def test_concurrent_acks_keep_the_highest(broker: Broker) -> None:
    await broker.publish(STREAM, NODE, outgoing(40))
    await asyncio.gather(*(broker.ack(STREAM, NODE, n) for n in range(1, 41)))
    assert await broker.acked(STREAM, NODE) == 40


async def test_offset_at_finds_the_last_event_before_a_time(broker: Broker) -> None:
    assert await broker.offset_at(STREAM, NODE, datetime.now(UTC)) == 0
    await broker.publish(STREAM, NODE, outgoing(3, tag="a"))
    await asyncio.sleep(0.05)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await broker.publish(STREAM, NODE, outgoing(4, tag="b"))
    assert await broker.offset_at(STREAM, NODE, middle) == 3
    assert await broker.offset_at(STREAM, NODE, middle - timedelta(hours=1)) == 0
    assert await broker.offset_at(STREAM, NODE, datetime.now(UTC) + timedelta(seconds=1)) == 7
    # Replay from the time: fetch after that offset.
    replay = await broker.fetch(STREAM, NODE, after=3, limit=10)
    assert [e.event_id for e in replay] == [f"b-{i}" for i in range(4)]


async def test_trim_removes_old_events_and_never_reuses_offsets(broker: Broker) -> None:
    other = "district-node"
    await broker.publish(STREAM, NODE, outgoing(3, tag="old"))
    await broker.publish(STREAM, other, outgoing(2, tag="old"))
    await asyncio.sleep(0.05)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await broker.publish(STREAM, NODE, outgoing(2, tag="new"))
    # Another stream is not trimmed.
    await broker.publish("gov-ps/bike-stations", NODE, outgoing(2, tag="old"))

    assert await broker.trim(STREAM, before=cut) == 5
    got = await broker.fetch(STREAM, NODE, after=0, limit=10)
    assert [(e.offset, e.event_id) for e in got] == [(4, "new-0"), (5, "new-1")]
    assert [e.offset for e in await broker.fetch(STREAM, NODE, after=0, limit=1)] == [4]
    assert await broker.fetch(STREAM, other, after=0, limit=10) == []
    assert len(await broker.fetch("gov-ps/bike-stations", NODE, after=0, limit=10)) == 2
    # Replay from before the cut starts at what is left.
    assert await broker.offset_at(STREAM, NODE, cut - timedelta(hours=1)) == 3
    # The logs go on after the trimmed offsets, even the one trimmed empty.
    assert await broker.publish(STREAM, NODE, outgoing(1, tag="later")) == [6]
    assert await broker.publish(STREAM, other, outgoing(1, tag="later")) == [3]
    assert await broker.trim(STREAM, before=cut) == 0


async def test_logs_are_isolated(broker: Broker) -> None:
    await broker.publish(STREAM, NODE, outgoing(3))
    await broker.ack(STREAM, NODE, 2)
    assert await broker.fetch(STREAM, "district-node", after=0, limit=10) == []
    assert await broker.fetch("gov-ps/bike-stations", NODE, after=0, limit=10) == []
    assert await broker.acked(STREAM, "district-node") == 0
    # The same event ids in another log are other events, with offsets of their own.
    assert await broker.publish(STREAM, "district-node", outgoing(2)) == [1, 2]
    assert await broker.publish("gov-ps/bike-stations", NODE, outgoing(1)) == [1]
    assert len(await broker.fetch(STREAM, NODE, after=0, limit=10)) == 3


async def test_concurrent_publishers_get_contiguous_offsets(backend: Backend) -> None:
    # Four publishers, each its own broker (as four hub replicas would be).
    brokers = [await backend.open() for _ in range(4)]

    async def publish(worker: int, broker: Broker) -> list[int]:
        offsets: list[int] = []
        for batch in range(10):
            events = outgoing(5, start=batch * 5, tag=f"w{worker}")
            offsets += await broker.publish(STREAM, NODE, events)
        return offsets

    results = await asyncio.gather(*(publish(i, b) for i, b in enumerate(brokers)))
    every = sorted(o for offsets in results for o in offsets)
    assert every == list(range(1, 201))
    for offsets in results:
        assert offsets == sorted(offsets)  # each publisher's events stay in its order
    got = await brokers[0].fetch(STREAM, NODE, after=0, limit=500)
    assert [e.offset for e in got] == list(range(1, 201))
    assert len({e.event_id for e in got}) == 200


@pytest.mark.parametrize(
    ("stream", "subscriber", "message"),
    [
        ("traffic-accidents", NODE, "stream"),
        ("gov-ps/Traffic", NODE, "stream"),
        ("gov ps/traffic", NODE, "stream"),
        ("gov-ps/traffic/x", NODE, "stream"),
        ("gov.ps/traffic", NODE, "stream"),
        (STREAM, "", "subscriber"),
        (STREAM, "node.one", "subscriber"),
        (STREAM, "node>", "subscriber"),
        (STREAM, "n" * 65, "subscriber"),
    ],
)
async def test_bad_names_are_refused(
    broker: Broker, stream: str, subscriber: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await broker.publish(stream, subscriber, outgoing(1))
    with pytest.raises(ValueError, match=message):
        await broker.fetch(stream, subscriber, after=0, limit=1)
    with pytest.raises(ValueError, match=message):
        await broker.acked(stream, subscriber)


async def test_bad_events_and_arguments_are_refused(broker: Broker) -> None:
    now = datetime.now(UTC)
    bad = [
        Outgoing("has space", "k", b"x", now),
        Outgoing("", "k", b"x", now),
        Outgoing("id-1", "", b"x", now),
        Outgoing("id-1", "line\nbreak", b"x", now),
        Outgoing("id-1", "k", b"", now),
        Outgoing("id-1", "k", b"x", now.replace(tzinfo=None)),
    ]
    for event in bad:
        with pytest.raises(ValueError):
            await broker.publish(STREAM, NODE, [event])
    with pytest.raises(ValueError, match="limit"):
        await broker.fetch(STREAM, NODE, after=0, limit=0)
    with pytest.raises(ValueError, match="after"):
        await broker.fetch(STREAM, NODE, after=-1, limit=1)
    with pytest.raises(ValueError, match="timezone"):
        await broker.offset_at(STREAM, NODE, now.replace(tzinfo=None))
    # Nothing of the refused events got in.
    assert await broker.fetch(STREAM, NODE, after=0, limit=10) == []


async def test_partition_keys_round_trip(broker: Broker) -> None:
    now = datetime.now(UTC)
    keys = ["站点-0042", "a b/c%d", "x" * 256]
    await broker.publish(
        STREAM, NODE, [Outgoing(f"k-{i}", key, b"sealed", now) for i, key in enumerate(keys)]
    )
    got = await broker.fetch(STREAM, NODE, after=0, limit=10)
    assert [e.partition_key for e in got] == keys


async def test_the_broker_stores_exactly_the_opaque_envelope(
    backend: Backend, broker: Broker
) -> None:
    events = outgoing(3, size=300)
    await broker.publish(STREAM, NODE, events)
    if backend.engine is not None:
        with backend.engine.connect() as conn:
            stored = conn.execute(
                select(EventLogEntry.offset, EventLogEntry.envelope)
                .where(EventLogEntry.stream == STREAM, EventLogEntry.subscriber == NODE)
                .order_by(EventLogEntry.offset)
            ).all()
        assert [bytes(envelope) for _, envelope in stored] == [e.envelope for e in events]
    else:
        import nats

        assert isinstance(broker, NatsBroker)
        name, subject = broker.log_name(STREAM, NODE)
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            jsm = nc.jetstream()
            for seq, event in enumerate(events, start=1):
                raw = await jsm.get_msg(name, seq)
                assert raw.subject == subject
                assert raw.data == event.envelope
        finally:
            await nc.close()


async def test_long_poll_sees_an_event_another_broker_published(backend: Backend) -> None:
    # Two hub replicas (or a provider's broker and a consumer's): no in-process wake-up.
    waiting, publishing = await backend.open(), await backend.open()
    await publishing.publish(STREAM, NODE, outgoing(1))

    async def publish_later() -> float:
        await asyncio.sleep(0.3)
        await publishing.publish(STREAM, NODE, outgoing(1, start=1))
        return time.monotonic()

    publisher = asyncio.create_task(publish_later())
    got = await waiting.fetch(STREAM, NODE, after=1, limit=10, wait=5)
    woke = time.monotonic()
    assert [e.offset for e in got] == [2]
    assert woke - await publisher < 0.5


def test_the_migration_creates_the_tables_the_models_describe(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from qiao.db import HubBase, make_engine, migrate

    migrate("hub", db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), HubBase.metadata)
    finally:
        engine.dispose()
    event_diff = [d for d in diff if "event_log" in str(d) or "event_positions" in str(d)]
    assert event_diff == []
