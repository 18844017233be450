"""Records of published and delivered events, and their digests on the ledger.

(Interface fixed; the implementation is being written — see docs/events.md#records.)

Every event a node publishes and every event it delivers to one of its apps or backends is
recorded at that node, with the SHA-256 digest of the event as it was published or delivered
(RFC 8785 canonical JSON). The ledger gets the digests through the node's exchange records,
the ledger's outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class PublishedRecord:
    """One event as the provider's backend published it (before any masking)."""

    event_id: str
    event: dict[str, Any]
    offsets: dict[str, int]  # subscriber node name -> offset in that node's log


@dataclass(frozen=True)
class DeliveredRecord:
    """One event as this node handed it to an app or a backend (as masked for it)."""

    offset: int
    event_id: str
    event: dict[str, Any]
    agreement: str


class EventRecorder:
    """Records events at a node. ``via`` says how they were delivered: ``"pull"``,
    ``"sse"`` or ``"webhook:<name>"``. Both calls return once the records are durable."""

    async def published(
        self,
        *,
        client: str,
        stream: str,
        events: Sequence[PublishedRecord],
        started_at: datetime,
    ) -> None:
        """``client`` (an app of this node's organization) published ``events`` of this
        organization's ``stream``."""

    async def delivered(
        self,
        *,
        client: str,
        provider_org: str,
        stream: str,
        events: Sequence[DeliveredRecord],
        via: str,
        started_at: datetime,
    ) -> None:
        """``events`` of ``provider_org``'s ``stream`` were handed to ``client`` ``via`` a
        pull, server-sent events or a webhook."""
