"""Delivery at the consumer node: fetch this node's log, open each envelope, check, hand over.

Each event in the log ``("{provider org}/{code}", this node's name)`` was sealed to this node's
events key (HPKE, RFC 9180) bound to the stream, this node and the event id
(``qiao.events.envelope.event_aad``), so an envelope the broker moved from another log or
another id does not open. Inside is ``{"agreement": id, "event": record}``: the record as the
provider masked it under that agreement.

An event that does not open, is not that shape, or breaks the resource's event schema is
skipped and logged (never delivered); the position still moves past it, so one broken event
cannot block a log. The schema check allows what the agreement did to the record: fields
outside its projection may be missing even when the schema requires them, and masked fields
may break their format (``闽A***23`` is not a plate); everything else is checked.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from qiao import problems
from qiao.agreements.document import Agreement
from qiao.events.broker import Broker, StoredEvent
from qiao.events.envelope import EnvelopeError, batch_aad, event_aad, open_envelope
from qiao.events.publisher import stream_name, stream_partition_key
from qiao.globalconf import GlobalConf, ResourceEntry
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem

log = logging.getLogger("qiao.events.delivery")

MAX_LIMIT = 1000
MAX_WAIT = 30.0  # seconds of long poll, well under common proxy idle timeouts
_TOP = re.compile(r"[.\[]")


@dataclass(frozen=True)
class DeliveredEvent:
    offset: int
    event_id: str
    # The record's partition key value as masked (it may be a pseudonym), or the broker's
    # opaque token when the agreement does not project the field.
    partition_key: str
    published_at: datetime
    event: dict[str, Any]
    agreement: str  # the agreement the provider masked it under

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "event_id": self.event_id,
            "partition_key": self.partition_key,
            "published_at": self.published_at.isoformat(),
            "event": self.event,
        }


@dataclass(frozen=True)
class Pulled:
    """What one pull found: the events to deliver and where the next pull starts (the last
    offset looked at, skipped ones included; ``after`` if there was nothing)."""

    events: list[DeliveredEvent]
    next: int


class Delivery:
    def __init__(
        self, conf_cache: ConfigurationCache, identity: NodeIdentity, broker: Broker
    ) -> None:
        self._conf = conf_cache
        self._identity = identity
        self._broker = broker

    def _resource(self, conf: GlobalConf, provider_org: str, code: str) -> ResourceEntry:
        resource = conf.resources.get((provider_org, code))
        if resource is None or resource.event_schema is None:
            raise Problem(
                problems.UNKNOWN_RESOURCE,
                f"{provider_org}/{code} is not an event stream in the global configuration",
            )
        return resource

    async def pull(
        self,
        provider_org: str,
        stream_code: str,
        *,
        after: int,
        limit: int = 100,
        wait: float = 0,
        agreement: str | None = None,
    ) -> Pulled:
        """Up to ``limit`` events after offset ``after`` of this node's log, waiting up to
        ``wait`` seconds when there is none. With ``agreement``, only events masked under
        that agreement, or an earlier one it renews, are delivered (the others are for
        another app of this node)."""
        conf = self._conf.usable()
        resource = self._resource(conf, provider_org, stream_code)
        limit, wait = max(1, min(limit, MAX_LIMIT)), max(0.0, min(wait, MAX_WAIT))
        stream = stream_name(provider_org, stream_code)
        stored = await self._broker.fetch(
            stream, self._identity.name, after=after, limit=limit, wait=wait
        )
        key_field = stream_partition_key(conf, provider_org, stream_code)
        admitted = None if agreement is None else lineage(conf, agreement)
        out: list[DeliveredEvent] = []
        for ev in stored:
            delivered = self._open(conf, resource, stream, key_field, ev)
            if delivered is not None and (admitted is None or delivered.agreement in admitted):
                out.append(delivered)
        return Pulled(out, stored[-1].offset if stored else after)

    def _open(
        self,
        conf: GlobalConf,
        resource: ResourceEntry,
        stream: str,
        key_field: str,
        ev: StoredEvent,
    ) -> DeliveredEvent | None:
        name = self._identity.name
        try:
            plain = open_envelope(
                self._identity.event_key,
                ev.envelope,
                aad=event_aad(stream, name, ev.event_id),
                key_aad=batch_aad(stream, name),
            )
            sealed = orjson.loads(plain)
        except (EnvelopeError, orjson.JSONDecodeError) as exc:
            log.error("skipping event %s at %s of %s: %s", ev.event_id, ev.offset, stream, exc)
            return None
        record = sealed.get("event") if isinstance(sealed, dict) else None
        agreement_id = sealed.get("agreement") if isinstance(sealed, dict) else None
        # The event's own id: inside the envelope when the broker holds one copy per agreement
        # under derived ids (qiao.events.publisher.broker_event_id), else the broker's.
        event_id = sealed.get("event_id", ev.event_id) if isinstance(sealed, dict) else None
        if (
            not isinstance(record, dict)
            or not isinstance(agreement_id, str)
            or not isinstance(event_id, str)
        ):
            log.error(
                "skipping event %s at %s of %s: not an agreement id and a record",
                ev.event_id, ev.offset, stream,
            )  # fmt: skip
            return None
        broken = _violations(resource, conf.policy.agreements.get(agreement_id), record)
        if broken:
            # Pointers and rules only: the values are the provider's data.
            log.error(
                "skipping event %s at %s of %s: it breaks the event schema at %s",
                ev.event_id, ev.offset, stream, ", ".join(broken),
            )  # fmt: skip
            return None
        key = record.get(key_field) if key_field else None
        return DeliveredEvent(
            ev.offset,
            event_id,
            str(key)
            if isinstance(key, str | int) and not isinstance(key, bool)
            else ev.partition_key,
            ev.published_at,
            record,
            agreement_id,
        )

    async def ack(self, provider_org: str, stream_code: str, offset: int) -> None:
        """This node has everything of the stream up to ``offset`` (the broker never moves a
        position back)."""
        self._resource(self._conf.usable(), provider_org, stream_code)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise Problem(problems.INVALID_REQUEST, "offset must be an integer, 0 or more")
        await self._broker.ack(stream_name(provider_org, stream_code), self._identity.name, offset)

    async def acked(self, provider_org: str, stream_code: str) -> int:
        return await self._broker.acked(stream_name(provider_org, stream_code), self._identity.name)

    async def offset_at(self, provider_org: str, stream_code: str, when: datetime) -> int:
        """Where a replay from ``when`` starts: the last offset of this node's log published
        before it (a pull ``after`` it gets the events from ``when`` on)."""
        self._resource(self._conf.usable(), provider_org, stream_code)
        return await self._broker.offset_at(
            stream_name(provider_org, stream_code), self._identity.name, when
        )


def _ancestors(conf: GlobalConf, agreement_id: str) -> list[str]:
    """``agreement_id`` and the agreements it renews, back as far as the configuration knows."""
    out = [agreement_id]
    current = conf.policy.agreements.get(agreement_id)
    while current is not None and current.renews and current.renews not in out and len(out) < 64:
        out.append(current.renews)
        current = conf.policy.agreements.get(current.renews)
    return out


def lineage(conf: GlobalConf, agreement_id: str) -> set[str]:
    """The agreements whose events an app admitted under ``agreement_id`` receives: it, the
    ones it renews, and the ones that renew it. A renewal keeps the terms
    (docs/agreements.md), so events published under an agreement before its renewal took
    over reach the apps the renewal admits, and the other way round while both are in force
    (the publisher seals for the newest only)."""
    out = set(_ancestors(conf, agreement_id))
    for other in conf.policy.agreements:
        chain = _ancestors(conf, other)
        if agreement_id in chain[1:]:
            out.add(other)
    return out


def _top(path: str) -> str:
    return _TOP.split(path, 1)[0]


def _violations(
    resource: ResourceEntry, agreement: Agreement | None, record: dict[str, Any]
) -> list[str]:
    """The schema's violations that the agreement's projection and masking do not explain
    (see the module doc), as "pointer keyword" texts. An agreement this configuration no
    longer holds explains nothing: its events are checked in full."""
    assert resource.event_schema is not None
    masked: set[str] = set()
    projected: set[str] | None = None
    if agreement is not None:
        masked = {_top(path) for path in agreement.masking}
        if agreement.fields is not None:
            projected = {_top(path) for path in agreement.fields}
    out = []
    for v in resource.event_schema.errors(record):
        top = v.pointer.split("/")[1].replace("~1", "/").replace("~0", "~") if v.pointer else ""
        if top in masked:
            continue
        if v.keyword == "required" and projected is not None and top not in projected:
            continue
        out.append(f"{v.pointer or '/'} {v.keyword}")
    return out
