"""Retention trims each stream by its own period, and only streams the catalog declares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from qiao.catalog.service import CatalogService
from qiao.catalog.spec import Catalog
from qiao.config import HubSettings
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import org_codes
from qiao.events.broker import Outgoing
from qiao.events.embedded import EmbeddedBroker
from qiao.events.retention import streams_with_retention, trim_once
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
