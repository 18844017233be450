"""Publishing at the provider node and delivery at the consumer's: validation, per-agreement
masking, sealing to every node of the subscribing organization, and what the broker holds.

Everything runs in this process on the embedded broker (SQLite) with a signed configuration of
three organizations: the provider, a consumer with two nodes and an agreement, and another
organization with a node and no agreement. ``Exchange`` is reused by test_node_api.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from qiao import problems, signing
from qiao.db import make_engine, migrate
from qiao.events.broker import Outgoing
from qiao.events.delivery import Delivery
from qiao.events.embedded import EmbeddedBroker
from qiao.events.envelope import event_aad, event_key_from_text, seal
from qiao.events.models import EventLogEntry
from qiao.events.publisher import Publisher
from qiao.globalconf import KIND
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem
from tests.agreements.test_policy import CONSUMER, KEYS, OTHER, PROVIDER, agreement, public_text
from tests.agreements.test_policy import published as signed

INSTANCE = "test"
STREAM = "traffic-accidents"
PURPOSE = "traffic-enforcement"
SECRET = b"p" * 32
NODES = (
    ("provider-node", PROVIDER),
    ("consumer-a", CONSUMER),
    ("consumer-b", CONSUMER),
    ("other-node", OTHER),
)
EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"urn:qiao:schema:{PROVIDER}:{STREAM}:1:event",
    "type": "object",
    "properties": {
        "accident_id": {"type": "string", "minLength": 1},
        "occurred_at": {"type": "string", "format": "date-time"},
        "plate": {"type": "string", "minLength": 7},
        "driver_mobile": {"type": "string", "pattern": "^1[3-9][0-9]{9}$"},
        "severity": {"type": "integer", "minimum": 1, "maximum": 4},
    },
    "required": ["accident_id", "occurred_at", "plate", "severity"],
    "additionalProperties": False,
}
FIELDS = ["accident_id", "occurred_at", "plate", "driver_mobile", "severity"]


def accident_agreement(**terms: Any) -> Any:
    """The consumer's agreement on the stream, in force around now: no driver mobile, plates
    masked, for the app "inspector"."""
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "id": "agr-accidents",
        "consumer": {"org": CONSUMER, "name": "交通局", "apps": ["inspector"]},
        "resource": {"code": STREAM, "version": 1, "sharing_type": "conditional"},
        "operations": {"methods": ["GET"], "paths": ["**"]},
        "fields": ["accident_id", "occurred_at", "plate", "severity"],
        "masking": {"plate": {"rule": "plate"}},
        "purposes": [PURPOSE],
        "valid_from": (now - timedelta(days=1)).isoformat(),
        "valid_until": (now + timedelta(days=1)).isoformat(),
        "issued_at": (now - timedelta(days=1)).isoformat(),
    }
    doc.update(terms)
    return agreement(**doc)


def accident(accident_id: str, severity: int = 2, **change: Any) -> dict[str, Any]:
    event = {
        "accident_id": accident_id,
        "occurred_at": "2026-11-29T08:15:00+08:00",
        "plate": "闽A12345",
        "driver_mobile": "13812345678",
        "severity": severity,
    }
    event.update(change)
    return event


@dataclass
class Exchange:
    """The provider node's publisher, each node's delivery, the broker and its database."""

    publisher: Publisher
    delivery: dict[str, Delivery]
    identities: dict[str, NodeIdentity]
    confs: dict[str, ConfigurationCache]
    broker: EmbeddedBroker
    hub: Engine
    tmp: Path

    def log_rows(self) -> list[Any]:
        with self.hub.connect() as conn:
            return list(conn.execute(select(EventLogEntry.__table__)).all())


def conf_document(
    identities: dict[str, NodeIdentity],
    agreements: list[dict[str, Any]],
    emergencies: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "instance": INSTANCE,
        "serial": 1,
        "issued_at": datetime.now(UTC).isoformat(),
        "organizations": [
            {
                "code": org,
                "name": org,
                "apps": ["inspector", "clerk", "backend"],
                "agreement_key": public_text(KEYS[org]),
            }
            for org in (PROVIDER, CONSUMER, OTHER)
        ],
        "revoked": [],
        "nodes": [
            {
                "name": name,
                "org": org,
                "address": "https://127.0.0.1:1",
                "certificates": [{"fingerprint": f"fp-{name}"}],
                "events_key": identities[name].event_key_text,
            }
            for name, org in NODES
        ],
        "resources": [
            {
                "org": PROVIDER,
                "code": STREAM,
                "name": "交通事故",
                "version": 1,
                "schemas": {"response": None, "request": None, "event": EVENT_SCHEMA},
                "fields": FIELDS,
                "records_at": "",
                "sharing_type": "conditional",
                "stream": {"partition_key": "accident_id", "retention_hours": 72},
            }
        ],
        "ca_certificates": [],
        "agreements": agreements,
        "emergencies": emergencies or [],
    }


@contextlib.asynccontextmanager
async def exchange(
    tmp: Path,
    agreements: list[dict[str, Any]] | None = None,
    emergencies: list[dict[str, Any]] | None = None,
) -> AsyncIterator[Exchange]:
    """Four nodes on one configuration (``agreements`` default: the accident agreement)."""
    signer = signing.generate_signing_key()
    public = signing.public_key_to_text(signer.public_key())
    identities: dict[str, NodeIdentity] = {}
    for name, org in NODES:
        (tmp / name).mkdir()
        identities[name] = NodeIdentity(tmp / name, name, org, INSTANCE, public, f"fp-{name}")
    if agreements is None:
        agreements = [signed(accident_agreement())]
    envelope = signing.sign_document(
        signer, conf_document(identities, agreements, emergencies), kind=KIND
    )
    confs: dict[str, ConfigurationCache] = {}
    for name, _ in NODES:
        confs[name] = ConfigurationCache(
            tmp / name, public_key=public, instance=INSTANCE, grace_seconds=3600
        )
        confs[name].accept(envelope)
    url = f"sqlite:///{tmp / 'hub.db'}"
    migrate("hub", url)
    hub = make_engine(url)
    broker = EmbeddedBroker(hub, poll_interval=0.05)
    try:
        yield Exchange(
            Publisher(confs["provider-node"], identities["provider-node"], broker, SECRET),
            {name: Delivery(confs[name], identities[name], broker) for name, _ in NODES},
            identities,
            confs,
            broker,
            hub,
            tmp,
        )
    finally:
        await broker.close()
        hub.dispose()


def _refused(caught: pytest.ExceptionInfo[Problem], kind: problems.ProblemType) -> Problem:
    assert caught.value.kind is kind, caught.value
    return caught.value


def _plaintexts(event: dict[str, Any]) -> Iterator[bytes]:
    """The event's longer text values (a few bytes could match random bytes by chance)."""
    for value in event.values():
        if isinstance(value, str) and len(value.encode()) >= 8:
            yield value.encode()


# --- publishing ----------------------------------------------------------------------------
async def test_published_events_reach_each_consumer_node_sealed_and_masked(
    tmp_path: Path,
) -> None:
    async with exchange(tmp_path) as x:
        events = [accident("A-1", 1), accident("A-2", 2), accident("A-1", 3)]
        published = await x.publisher.publish(STREAM, events)
        assert [e.partition_key for e in published] == ["A-1", "A-2", "A-1"]
        # Both nodes of the consumer, each with its own log; no one else.
        for e, offset in zip(published, (1, 2, 3), strict=True):
            assert e.offsets == {"consumer-a": offset, "consumer-b": offset}
        rows = x.log_rows()
        assert {r.subscriber for r in rows} == {"consumer-a", "consumer-b"}
        # The broker holds only envelopes: no value of any event, not even the partition key.
        stored = b"".join(r.envelope + r.partition_key.encode() + r.event_id.encode() for r in rows)
        for event in events:
            for plain in _plaintexts(event):
                assert plain not in stored, plain
        keys = {r.partition_key for r in rows if r.subscriber == "consumer-a"}
        assert len(keys) == 2 and not keys & {"A-1", "A-2"}

        for node in ("consumer-a", "consumer-b"):
            pulled = await x.delivery[node].pull(PROVIDER, STREAM, after=0, limit=10)
            assert pulled.next == 3
            got = pulled.events
            assert [e.offset for e in got] == [1, 2, 3]
            assert [e.event_id for e in got] == [e.event_id for e in published]
            # In order per partition key, masked and projected by the agreement.
            assert [(e.partition_key, e.event["severity"]) for e in got] == [
                ("A-1", 1),
                ("A-2", 2),
                ("A-1", 3),
            ]
            for d in got:
                assert d.event["plate"] == "闽A****5"
                assert "driver_mobile" not in d.event
                assert d.agreement == "agr-accidents"
        # The organization without an agreement gets nothing, and the provider's own node
        # has no log of its stream.
        for node in ("other-node", "provider-node"):
            assert (await x.delivery[node].pull(PROVIDER, STREAM, after=0)).events == []


async def test_event_ids_from_the_backend_are_kept_and_republishing_is_harmless(
    tmp_path: Path,
) -> None:
    async with exchange(tmp_path) as x:
        first = await x.publisher.publish(STREAM, [accident("A-1", event_id="evt-1")])
        again = await x.publisher.publish(STREAM, [accident("A-1", event_id="evt-1")])
        assert first[0].event_id == again[0].event_id == "evt-1"
        assert first[0].offsets == again[0].offsets == {"consumer-a": 1, "consumer-b": 1}
        generated = await x.publisher.publish(STREAM, [accident("A-2")])
        assert generated[0].event_id != "evt-1" and len(generated[0].event_id) == 36
        got = (await x.delivery["consumer-a"].pull(PROVIDER, STREAM, after=0)).events
        assert [e.event_id for e in got] == ["evt-1", generated[0].event_id]
        assert "event_id" not in got[0].event  # the id names the event; it is not data


async def test_an_invalid_event_refuses_the_batch_naming_pointers_never_values(
    tmp_path: Path,
) -> None:
    async with exchange(tmp_path) as x:
        bad = [
            accident("A-1"),
            accident("A-2", severity=9, driver_mobile="99999999999"),
            {"accident_id": "A-3"},
            "not an object",
            accident("A-4", event_id="has space"),
        ]
        with pytest.raises(Problem) as caught:
            await x.publisher.publish(STREAM, bad)
        refusal = _refused(caught, problems.INVALID_REQUEST)
        pointers = {(v["pointer"], v["keyword"]) for v in refusal.extra["violations"]}
        assert {
            ("/1/severity", "maximum"),
            ("/1/driver_mobile", "pattern"),
            ("/2/plate", "required"),
            ("/3", "type"),
            ("/4/event_id", "pattern"),
        } <= pointers
        text = refusal.to_json().decode()
        assert "99999999999" not in text and "has space" not in text
        assert x.log_rows() == []  # nothing published, not even the valid events

        with pytest.raises(Problem) as caught:
            await x.publisher.publish(
                STREAM, [accident("A-1", event_id="e"), accident("A-2", event_id="e")]
            )
        _refused(caught, problems.INVALID_REQUEST)
        assert x.log_rows() == []

        # Integers beyond I-JSON's exact range (RFC 7493 §2.2) have no RFC 8785 form: the
        # records' digests could not be made, so they are refused before anything is stored.
        with pytest.raises(Problem) as caught:
            await x.publisher.publish(STREAM, [accident("A-1", severity=2**60)])
        refused = _refused(caught, problems.INVALID_REQUEST).extra["violations"]
        assert {"pointer": "/0/severity", "keyword": "maximum", "rule": "i-json-integer"} in [
            {k: v.get(k) for k in ("pointer", "keyword", "rule")} for v in refused
        ]
        assert x.log_rows() == []

        with pytest.raises(Problem) as caught:
            await x.publisher.publish("no-such-stream", [accident("A-1")])
        _refused(caught, problems.UNKNOWN_RESOURCE)


@pytest.mark.parametrize(
    ("state", "terms"),
    [
        ("suspended", {}),
        ("revoked", {}),
        ("active", {"operations": {"methods": ["GET"], "topics": ["bike-stations"]}}),
        ("active", {"conditions": {"emergency_only": True}}),
        (
            "active",
            {
                "valid_from": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                "valid_until": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
            },
        ),
    ],
    ids=["suspended", "revoked", "other-topic", "emergency-only", "not-yet-valid"],
)
async def test_agreements_that_do_not_allow_events_now_get_nothing(
    tmp_path: Path, state: str, terms: dict[str, Any]
) -> None:
    async with exchange(tmp_path, [signed(accident_agreement(**terms), state=state)]) as x:
        published = await x.publisher.publish(STREAM, [accident("A-1")])
        assert published[0].offsets == {}
        assert x.log_rows() == []


async def test_topics_naming_the_stream_and_a_declared_emergency_admit(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    emergency = {
        "id": "em-1",
        "reason": "台风",
        "resources": [f"{PROVIDER}/{STREAM}"],
        "organizations": [CONSUMER],
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
    }
    terms = {
        "operations": {"methods": ["GET"], "topics": [STREAM]},
        "conditions": {"emergency_only": True},
    }
    async with exchange(tmp_path, [signed(accident_agreement(**terms))], [emergency]) as x:
        published = await x.publisher.publish(STREAM, [accident("A-1")])
        assert published[0].offsets == {"consumer-a": 1, "consumer-b": 1}


# --- delivery ------------------------------------------------------------------------------
async def test_events_that_do_not_open_or_break_the_schema_are_skipped(tmp_path: Path) -> None:
    async with exchange(tmp_path) as x:
        stream = f"{PROVIDER}/{STREAM}"
        now = datetime.now(UTC)
        other_key = event_key_from_text(x.identities["consumer-b"].event_key_text)
        own_key = event_key_from_text(x.identities["consumer-a"].event_key_text)
        wrong_node = seal(
            other_key,
            b'{"agreement": "agr-accidents", "event": {}}',
            aad=event_aad(stream, "consumer-b", "e-1"),
        )
        # Opens, but the severity breaks the schema (neither projection nor masking explain it).
        broken = seal(
            own_key,
            b'{"agreement": "agr-accidents", "event": {"accident_id": "A-9", '
            b'"occurred_at": "2026-11-29T08:15:00+08:00", "plate": "x", "severity": 7}}',
            aad=event_aad(stream, "consumer-a", "e-2"),
        )
        await x.broker.publish(
            stream,
            "consumer-a",
            [Outgoing("e-1", "k", wrong_node, now), Outgoing("e-2", "k", broken, now)],
        )
        await x.publisher.publish(STREAM, [accident("A-1", event_id="e-3")])
        pulled = await x.delivery["consumer-a"].pull(PROVIDER, STREAM, after=0)
        assert [e.event_id for e in pulled.events] == ["e-3"]
        assert pulled.next == 3  # past the skipped ones


async def test_ack_moves_the_nodes_position_and_never_back(tmp_path: Path) -> None:
    async with exchange(tmp_path) as x:
        await x.publisher.publish(STREAM, [accident("A-1"), accident("A-2")])
        delivery = x.delivery["consumer-a"]
        assert await delivery.acked(PROVIDER, STREAM) == 0
        await delivery.ack(PROVIDER, STREAM, 2)
        await delivery.ack(PROVIDER, STREAM, 1)
        assert await delivery.acked(PROVIDER, STREAM) == 2
        assert await x.delivery["consumer-b"].acked(PROVIDER, STREAM) == 0
        with pytest.raises(Problem) as caught:
            await delivery.ack(PROVIDER, STREAM, -1)
        _refused(caught, problems.INVALID_REQUEST)


async def test_a_long_poll_returns_when_an_event_arrives(tmp_path: Path) -> None:
    async with exchange(tmp_path) as x:
        waiting = asyncio.create_task(
            x.delivery["consumer-a"].pull(PROVIDER, STREAM, after=0, wait=5)
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await x.publisher.publish(STREAM, [accident("A-1")])
        pulled = await asyncio.wait_for(waiting, 5)
        assert [e.offset for e in pulled.events] == [1]


async def test_each_agreement_of_an_organization_gets_the_events_masked_its_own_way(
    tmp_path: Path,
) -> None:
    """Two agreements of one organization, for two apps with different terms: each app
    receives every event, masked by its own agreement; the broker holds one copy per
    agreement under ids that name neither the event nor the agreement."""
    inspector = signed(accident_agreement())
    clerk = signed(
        accident_agreement(
            id="agr-clerk",
            consumer={"org": CONSUMER, "name": "交通局", "apps": ["clerk"]},
            fields=["accident_id", "severity"],
            masking={},
        )
    )
    async with exchange(tmp_path, [inspector, clerk]) as x:
        ids = ["acc-1", "acc-2"]
        published = await x.publisher.publish(
            STREAM, [accident("A-1", event_id=ids[0]), accident("A-2", event_id=ids[1])]
        )
        assert [e.event_id for e in published] == ids
        stored = {r.event_id for r in x.log_rows() if r.subscriber == "consumer-a"}
        assert len(stored) == 4 and not stored & set(ids)
        delivery = x.delivery["consumer-a"]
        as_inspector = await delivery.pull(PROVIDER, STREAM, after=0, agreement="agr-accidents")
        as_clerk = await delivery.pull(PROVIDER, STREAM, after=0, agreement="agr-clerk")
        assert [e.event_id for e in as_inspector.events] == ids
        assert [e.event_id for e in as_clerk.events] == ids
        assert all(e.event["plate"] == "闽A****5" for e in as_inspector.events)
        assert [set(e.event) for e in as_clerk.events] == [{"accident_id", "severity"}] * 2
        # Publishing the batch again (a retry) stores nothing new: the copies' ids are stable.
        await x.publisher.publish(
            STREAM, [accident("A-1", event_id=ids[0]), accident("A-2", event_id=ids[1])]
        )
        assert {r.event_id for r in x.log_rows() if r.subscriber == "consumer-a"} == stored


async def test_a_renewal_and_the_agreement_it_renews_share_their_events(
    tmp_path: Path,
) -> None:
    """While a renewal and the agreement it renews are both in force, the events are sealed
    once, under the renewal, and the apps admitted under either receive them; another
    agreement of the same organization gets its own copy and nothing of theirs."""
    old = signed(accident_agreement())
    renewal = signed(accident_agreement(id="agr-accidentsrenewed", renews="agr-accidents"))
    other = signed(
        accident_agreement(
            id="agr-otherone", consumer={"org": CONSUMER, "name": "交通局", "apps": ["clerk"]}
        )
    )
    async with exchange(tmp_path, [old, renewal, other]) as x:
        await x.publisher.publish(STREAM, [accident("A-1"), accident("A-2")])
        assert len([r for r in x.log_rows() if r.subscriber == "consumer-a"]) == 4
        delivery = x.delivery["consumer-a"]
        for decided in ("agr-accidents", "agr-accidentsrenewed"):
            pulled = await delivery.pull(PROVIDER, STREAM, after=0, agreement=decided)
            assert [e.agreement for e in pulled.events] == ["agr-accidentsrenewed"] * 2
        pulled = await delivery.pull(PROVIDER, STREAM, after=0, agreement="agr-otherone")
        assert [e.agreement for e in pulled.events] == ["agr-otherone"] * 2
