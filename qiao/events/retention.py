"""Retention: events older than their stream's retention leave the broker.

Each stream in the catalog says how long its events stay replayable (``retention_hours``,
docs/events.md). The hub trims every stream's logs on a schedule, so the broker's storage
stays bounded — the lesson of message logs that grew without bound elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from qiao.db import utcnow
from qiao.events.broker import Broker

log = logging.getLogger("qiao.events.retention")


def streams_with_retention(registry: Any) -> dict[str, timedelta]:
    """``{"{org}/{code}": retention}`` for every published resource that is a stream."""
    from qiao.catalog.service import CatalogService

    specs, _elements, _lists = CatalogService(registry).published_for_configuration()
    return {
        f"{org}/{code}": timedelta(hours=spec.stream.retention_hours)
        for (org, code), spec in specs.items()
        if spec.stream is not None
    }


async def trim_once(registry: Any, broker: Broker, now: datetime | None = None) -> dict[str, int]:
    """Trim every stream once; returns how many events each stream lost."""
    now = now or utcnow()
    streams = await asyncio.to_thread(streams_with_retention, registry)
    removed: dict[str, int] = {}
    for stream, keep in sorted(streams.items()):
        removed[stream] = await broker.trim(stream, before=now - keep)
    return removed


async def run(registry: Any, broker: Broker, every: float = 600.0) -> None:
    """Trim on a schedule until cancelled; a failed round is logged and retried next time."""
    while True:
        try:
            removed = await trim_once(registry, broker)
            if any(removed.values()):
                log.info("retention removed %s", {k: v for k, v in removed.items() if v})
        except Exception:  # the next round tries again; the broker keeps what it has
            log.exception("event retention round failed")
        await asyncio.sleep(every)
