"""What every event broker promises: one ordered, durable log per (stream, subscriber).

A provider node seals each event to each subscriber node (HPKE, RFC 9180) and hands the
sealed envelopes to the broker; the broker stores and returns them as opaque bytes and never
sees plaintext. Each (stream, subscriber) pair is its own log with offsets 1, 2, 3 … that are
contiguous at publishing and never reused, even after retention removes old events.

Backends: :class:`qiao.events.embedded.EmbeddedBroker` (the hub's database) and
:class:`qiao.events.nats.NatsBroker` (NATS JetStream). ``tests/events/test_broker.py`` is the
conformance suite both pass. This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# A stream is "{org}/{code}": the organization's code (registry: 1-64 letters, digits, '-' and
# '_') and the resource code of the catalog (qiao.catalog.spec.RESOURCE_CODE).
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}/[a-z0-9][a-z0-9-]{0,63}")
# A subscriber is a node's name, as the registry enrolls it.
_SUBSCRIBER = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Event ids travel in the Nats-Msg-Id header, so they stay printable ASCII without spaces
# (UUIDs and ULIDs fit).
# Backends' event ids, and "~" + hex for an event's copy under one of several agreements of
# the same organization (qiao.events.publisher.broker_event_id).
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}|~[0-9a-f]{40}")
MAX_PARTITION_KEY = 256
# JetStream's default max_payload is 1 MiB; an envelope is an event plus HPKE overhead.
MAX_ENVELOPE = 1024 * 1024 - 4096


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed event handed to the broker for one subscriber's log."""

    event_id: str  # the provider's id, the same in every subscriber's log; de-duplicates
    partition_key: str  # order matters per key; the log keeps all keys in one order anyway
    envelope: bytes  # HPKE-sealed to the subscriber node: opaque to the broker
    published_at: datetime  # timezone-aware


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as one subscriber's log holds it."""

    stream: str
    subscriber: str
    offset: int
    event_id: str
    partition_key: str
    published_at: datetime
    envelope: bytes


class Broker(Protocol):
    """The face every backend shows; the callers (provider and consumer nodes) see only this."""

    async def publish(self, stream: str, subscriber: str, events: Sequence[Outgoing]) -> list[int]:
        """Append ``events`` in order and return their offsets, once they are durable.

        An event whose id the log already holds is not appended again: its original offset
        comes back (so a batch sent again after a lost answer is harmless).
        """
        ...

    async def fetch(
        self, stream: str, subscriber: str, *, after: int, limit: int, wait: float = 0
    ) -> list[StoredEvent]:
        """Up to ``limit`` events with offset > ``after``, in order.

        With nothing there and ``wait`` > 0, waits up to ``wait`` seconds for an event (a long
        poll) and returns what is there then, possibly nothing.
        """
        ...

    async def ack(self, stream: str, subscriber: str, offset: int) -> None:
        """Record that the subscriber has everything up to ``offset``; never moves back."""
        ...

    async def acked(self, stream: str, subscriber: str) -> int:
        """The subscriber's acknowledged offset (0 before the first ack)."""
        ...

    async def offset_at(self, stream: str, subscriber: str, when: datetime) -> int:
        """The last offset published before ``when`` (replay from a time fetches after it)."""
        ...

    async def trim(self, stream: str, *, before: datetime) -> int:
        """Retention: remove the events published before ``before`` from every subscriber's
        log of ``stream``; return how many went. Offsets are never handed out again."""
        ...

    async def close(self) -> None: ...


# --- validation: the same refusals from every backend -----------------------------------------
def check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
        raise ValueError(
            f"stream {stream!r} must be '{{org}}/{{code}}': an organization code (1-64 letters, "
            "digits, '-' or '_') and a resource code (1-64 lowercase letters, digits or '-', "
            "starting with a letter or digit)"
        )
    return stream


def check_subscriber(subscriber: str) -> str:
    if not isinstance(subscriber, str) or not _SUBSCRIBER.fullmatch(subscriber):
        raise ValueError(
            f"subscriber {subscriber!r} must be a node name: 1-64 letters, digits, '-' or '_'"
        )
    return subscriber


def check_log(stream: str, subscriber: str) -> None:
    check_stream(stream)
    check_subscriber(subscriber)


def check_outgoing(events: Sequence[Outgoing]) -> None:
    for ev in events:
        if not isinstance(ev.event_id, str) or not _EVENT_ID.fullmatch(ev.event_id):
            raise ValueError(
                f"event id {ev.event_id!r} must be 1-128 of letters, digits, '.', '_', ':', '-'"
            )
        key = ev.partition_key
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= MAX_PARTITION_KEY
            or any(ord(c) < 32 or ord(c) == 127 for c in key)
        ):
            raise ValueError(
                f"partition key of event {ev.event_id} must be 1-{MAX_PARTITION_KEY} characters "
                "without control characters"
            )
        if not isinstance(ev.envelope, bytes | bytearray):
            raise ValueError(f"envelope of event {ev.event_id} must be bytes")
        if not 0 < len(ev.envelope) <= MAX_ENVELOPE:
            raise ValueError(
                f"envelope of event {ev.event_id} is {len(ev.envelope)} bytes; "
                f"1 to {MAX_ENVELOPE} are accepted"
            )
        if ev.published_at.tzinfo is None:
            raise ValueError(f"published_at of event {ev.event_id} has no time zone")


def check_fetch(after: int, limit: int, wait: float) -> None:
    if after < 0:
        raise ValueError(f"after must be 0 or more, not {after}")
    if limit < 1:
        raise ValueError(f"limit must be 1 or more, not {limit}")
    if wait < 0:
        raise ValueError(f"wait must be 0 or more seconds, not {wait}")


def check_when(when: datetime) -> None:
    if when.tzinfo is None:
        raise ValueError("a naive datetime is ambiguous: give a timezone-aware one")
