"""Retention trims each stream by its own period, and only streams the catalog declares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from qiao.catalog.service import CatalogService
from qiao.catalog.spec import Catalog
from qiao.config import HubSettings
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import org_codes
from qiao.events.broker import Outgoing
from qiao.events.embedded import EmbeddedBroker
from qiao.events.retention import (
    DEFAULT_RETENTION_HOURS,
    own_streams,
    streams_with_retention,
    trim_once,
    trim_streams,
)
from qiao.globalconf import GlobalConf
from qiao.hub.app import open_registry
from qiao.identity.roles import CLI


async def test_each_stream_is_trimmed_by_its_own_retention(tmp_path: Path, db_url: str) -> None:
    from qiao.catalog.standards import standard_catalog

    settings = HubSettings(data_dir=tmp_path / "hub", database_url=db_url)
    registry = open_registry(settings)
    codes = org_codes()
    for dept, org in codes.items():
        registry.add_organization(org, dept)
    std, city = standard_catalog(), demo_catalog(codes)
    CatalogService(registry).import_catalog(
        CLI,
        Catalog(
            code_lists=std.code_lists + city.code_lists,
            data_elements=std.data_elements + city.data_elements,
            resources=city.resources,
        ),
    )
    accidents, bikes = f"{codes['police']}/traffic-accidents", f"{codes['transport']}/bike-stations"
    assert streams_with_retention(registry) == {
        accidents: timedelta(hours=72),
        bikes: timedelta(hours=24),
    }
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    broker = EmbeddedBroker(registry.engine)
    try:
        for stream in (accidents, bikes):
            await broker.publish(
                stream,
                "transport-node",
                [
                    Outgoing(f"e{h}", "k", b"sealed", now - timedelta(hours=h))
                    for h in (100, 48, 1)  # oldest first: offsets 1, 2, 3
                ],
            )
        removed = await trim_once(registry, broker, now)
        # Accidents keep 72 h: only the 100-hour-old event goes; stations keep 24 h: two go.
        assert removed == {accidents: 1, bikes: 2}
        left = await broker.fetch(accidents, "transport-node", after=0, limit=10)
        assert [e.event_id for e in left] == ["e48", "e1"]
        left = await broker.fetch(bikes, "transport-node", after=0, limit=10)
        assert [(e.offset, e.event_id) for e in left] == [(3, "e1")]  # offsets never reused
    finally:
        await broker.close()
        registry.engine.dispose()


async def test_a_provider_node_trims_its_own_streams_by_the_configuration(
    tmp_path: Path,
) -> None:
    # With NATS the hub reaches no broker: each provider node trims its own organization's
    # streams, reading each one's retention from the signed configuration's resources.
    document = {
        "resources": [
            {"org": "ORG-A", "code": "accidents", "stream": {"retention_hours": 72}},
            {"org": "ORG-A", "code": "stations", "stream": {}},  # the catalog's default
            {"org": "ORG-A", "code": "violations"},  # not a stream
            {"org": "ORG-B", "code": "other", "stream": {"retention_hours": 1}},
        ]
    }
    conf = cast(GlobalConf, SimpleNamespace(document=document))
    streams = own_streams(conf, "ORG-A")
    assert streams == {
        "ORG-A/accidents": timedelta(hours=72),
        "ORG-A/stations": timedelta(hours=DEFAULT_RETENTION_HOURS),
    }
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    settings = HubSettings(data_dir=tmp_path / "hub")
    broker = EmbeddedBroker(open_registry(settings).engine)
    try:
        for stream in ("ORG-A/accidents", "ORG-A/stations", "ORG-B/other"):
            await broker.publish(
                stream,
                "node-b",
                [Outgoing(f"e{h}", "k", b"sealed", now - timedelta(hours=h)) for h in (200, 100)],
            )
        removed = await trim_streams(streams, broker, now)
        assert removed == {"ORG-A/accidents": 2, "ORG-A/stations": 1}
        # Another organization's stream is not this node's to trim.
        assert len(await broker.fetch("ORG-B/other", "node-b", after=0, limit=10)) == 2
    finally:
        await broker.close()


async def test_the_hub_operator_caps_every_stream_retention(tmp_path: Path) -> None:
    # A hub whose disk cannot hold the catalog's 72 h keeps no stream longer than its cap;
    # a stream whose own retention is shorter keeps its own.
    settings = HubSettings(data_dir=tmp_path / "hub", events_max_retention_hours=36)
    registry = open_registry(settings)
    codes = org_codes()
    for dept, org in codes.items():
        registry.add_organization(org, dept)
    from qiao.catalog.standards import standard_catalog

    std, city = standard_catalog(), demo_catalog(codes)
    CatalogService(registry).import_catalog(
        CLI,
        Catalog(
            code_lists=std.code_lists + city.code_lists,
            data_elements=std.data_elements + city.data_elements,
            resources=city.resources,
        ),
    )
    accidents, bikes = f"{codes['police']}/traffic-accidents", f"{codes['transport']}/bike-stations"
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    broker = EmbeddedBroker(registry.engine)
    try:
        for stream in (accidents, bikes):
            await broker.publish(
                stream,
                "transport-node",
                [Outgoing(f"e{h}", "k", b"sealed", now - timedelta(hours=h)) for h in (48, 30, 1)],
            )
        assert settings.events_max_retention_hours is not None
        cap = timedelta(hours=settings.events_max_retention_hours)
        removed = await trim_once(registry, broker, now, max_retention=cap)
        # Accidents (72 h in the catalog) keep 36 h: the 48-hour-old event goes; stations
        # keep their own 24 h: the 48- and 30-hour-old ones go.
        assert removed == {accidents: 1, bikes: 2}
        left = await broker.fetch(accidents, "transport-node", after=0, limit=10)
        assert [e.event_id for e in left] == ["e30", "e1"]
    finally:
        await broker.close()
        registry.engine.dispose()


def test_retention_settings_default_to_the_documented_schedule() -> None:
    settings = HubSettings()
    assert settings.events_trim_seconds == 600.0
    assert settings.events_max_retention_hours is None
