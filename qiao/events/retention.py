"""Retention: events older than their stream's retention leave the broker.

Each stream in the catalog says how long its events stay replayable (``retention_hours``,
docs/events.md). Logs are trimmed on a schedule, so the broker's storage stays bounded — the
lesson of message logs that grew without bound elsewhere. The hub trims the embedded broker
(every stream in the catalog); with NATS JetStream, which the hub does not reach, each
provider node trims its own organization's streams (every subscriber's log of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from qiao.db import utcnow
from qiao.events.broker import Broker
from qiao.globalconf import GlobalConf

DEFAULT_RETENTION_HOURS = 168  # the catalog's default (qiao.catalog.spec.StreamSpec)

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


def own_streams(conf: GlobalConf, org: str) -> dict[str, timedelta]:
    """``{"{org}/{code}": retention}`` for ``org``'s streams in the global configuration."""
    out: dict[str, timedelta] = {}
    for r in conf.document.get("resources", ()):
        stream = r.get("stream")
        if r.get("org") == org and isinstance(stream, dict):
            hours = stream.get("retention_hours") or DEFAULT_RETENTION_HOURS
            out[f"{org}/{r.get('code')}"] = timedelta(hours=float(hours))
    return out


async def trim_streams(
    streams: dict[str, timedelta], broker: Broker, now: datetime | None = None
) -> dict[str, int]:
    """Trim each stream's logs by its retention; returns how many events each lost."""
    now = now or utcnow()
    removed: dict[str, int] = {}
    for stream, keep in sorted(streams.items()):
        removed[stream] = await broker.trim(stream, before=now - keep)
    return removed


async def trim_once(
    registry: Any,
    broker: Broker,
    now: datetime | None = None,
    max_retention: timedelta | None = None,
) -> dict[str, int]:
    """Trim every stream of the catalog once (the hub, embedded broker), keeping no stream's
    events longer than ``max_retention`` when the operator set one."""
    streams = await asyncio.to_thread(streams_with_retention, registry)
    if max_retention is not None:
        streams = {stream: min(keep, max_retention) for stream, keep in streams.items()}
    return await trim_streams(streams, broker, now)


async def run(
    registry: Any, broker: Broker, every: float = 600.0, max_retention: timedelta | None = None
) -> None:
    """The hub's schedule: trim every stream of the catalog until cancelled."""
    await _every(lambda: trim_once(registry, broker, max_retention=max_retention), every)


async def run_at_node(
    conf: Callable[[], GlobalConf | None], org: str, broker: Broker, every: float = 600.0
) -> None:
    """A provider node's schedule (NATS JetStream): trim its organization's streams."""

    async def once() -> dict[str, int]:
        current = conf()
        return {} if current is None else await trim_streams(own_streams(current, org), broker)

    await _every(once, every)


async def _every(trim: Callable[[], Awaitable[dict[str, int]]], every: float) -> None:
    """Trim on a schedule until cancelled; a failed round is logged and retried next time."""
    while True:
        try:
            removed = await trim()
            if any(removed.values()):
                log.info("retention removed %s", {k: v for k, v in removed.items() if v})
        except Exception:  # the next round tries again; the broker keeps what it has
            log.exception("event retention round failed")
        await asyncio.sleep(every)
