"""Publishing at the provider node: validate, mask per agreement, seal per node, hand to the broker.

The provider's backend publishes records of one of its streams (a catalog resource offered as
events). The node

1. checks every event against the resource's event schema (the record's JSON Schema the
   catalog derives, ``GlobalConf.resources[...].event_schema``) and refuses the whole batch
   if any one fails, naming JSON Pointers and rules, never values;
2. finds the subscribers: each consumer organization with an agreement on the resource that
   is active, in force now, covered by a declared emergency if it is emergency-only, and whose
   ``operations.topics`` lists the stream (empty ``topics`` = every stream of the resource);
3. applies that agreement's projection and masking (``qiao.agreements.masking``, with the
   pseudonym key the request/response exchange uses, so a consumer's joins work across both);
4. seals the masked event to **each** node of the consumer organization that publishes an
   events key (HPKE, ``qiao.events.envelope``; every node has its own log), and
5. publishes to the broker log ``("{org}/{code}", node name)``, returning only once every
   publish returned (the broker's publish is durable).

Event ids: the event's ``"event_id"`` member when the backend gives one (a string of 1-128
letters, digits, ``.``, ``_``, ``:``, ``-``; publishing it again is then harmless, the broker
keeps one copy), else a random UUID. Unless the resource has a field called ``event_id``, the
member is taken out of the record before validation and masking: it names the event, it is not
data.

Partition keys: the value of the stream's partition key field (the catalog's
``stream.partition_key``). The broker sees only a keyed hash of it (HMAC-SHA256 under the
consumer's pseudonym key, RFC 2104): equal keys stay equal, so order per key is kept, but an
accident id or a plate never reaches the broker in the clear.

Time windows of an agreement are not applied here: they limit when the consumer's apps may
pull, and the pull is decided under the policy at the consumer's node.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from qiao import problems
from qiao.agreements.document import Agreement, AgreementState
from qiao.agreements.masking import RecordMasker, compile_masking, pseudonym_key
from qiao.agreements.policy import CompiledAgreement, Policy
from qiao.canonical import canonical_json
from qiao.catalog.schema import Violation
from qiao.db import utcnow
from qiao.events.broker import MAX_ENVELOPE, MAX_PARTITION_KEY, Broker, Outgoing
from qiao.events.envelope import (
    BATCH_OVERHEAD,
    EnvelopeError,
    batch_aad,
    event_aad,
    event_key_from_text,
    seal_batch,
)
from qiao.globalconf import GlobalConf, NodeEntry, ResourceEntry
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem

log = logging.getLogger("qiao.events.publisher")

EVENT_ID_MEMBER = "event_id"
MAX_EVENTS = 1000  # per publish call
MAX_VIOLATIONS = 20  # named in one refusal
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what the broker accepts (qiao.events.broker)
# The sealed plaintext carries the agreement id beside the event; this bounds that overhead.
_SEAL_OVERHEAD = BATCH_OVERHEAD + 256


@dataclass(frozen=True)
class PublishedEvent:
    """One event as published: its id, its partition key and its offset in each node's log."""

    event_id: str
    partition_key: str
    offsets: dict[str, int]  # subscriber node name -> offset in that node's log
    event: dict[str, Any]  # the record as the backend published it (before masking)


@dataclass(frozen=True)
class Subscription:
    """A consumer organization that receives the stream, under which agreement."""

    consumer_org: str
    agreement: Agreement
    sha256: str
    nodes: tuple[NodeEntry, ...]


def stream_name(org: str, code: str) -> str:
    return f"{org}/{code}"


def stream_partition_key(conf: GlobalConf, org: str, code: str) -> str:
    """The catalog's partition key field of the stream, "" if the configuration has none.

    Read from the signed document: ``ResourceEntry`` does not carry the stream (yet)."""
    for r in conf.document.get("resources", ()):
        if r.get("org") == org and r.get("code") == code:
            stream = r.get("stream")
            return str(stream.get("partition_key") or "") if isinstance(stream, dict) else ""
    return ""


def partition_token(key: bytes, value: str) -> str:
    """What the broker sees of a partition key: HMAC-SHA256 (RFC 2104) under the consumer's
    pseudonym key, 128 bits in base64url. Equal values give equal tokens per consumer."""
    mac = hmac.new(key, canonical_json(["qiao-partition/1", value]), hashlib.sha256).digest()
    return "pk_" + base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")


def publishable(
    policy: Policy, e: CompiledAgreement, consumer_org: str, provider_org: str, code: str,
    now: datetime,
) -> bool:  # fmt: skip
    """Whether events of ``code`` go to ``consumer_org`` under ``e`` now: verified, active,
    in force, an emergency covering it if it is emergency-only, and the stream among its
    topics (none listed = every stream of the resource)."""
    a = e.agreement
    if e.invalid or a is None or e.state is not AgreementState.ACTIVE or not a.in_force(now):
        return False
    if a.operations.topics and code not in a.operations.topics:
        return False
    if e.emergency_only:
        key = f"{provider_org}/{code}"
        return any(em.covers(consumer_org, key, now) for em in policy.emergencies)
    return True


def subscriptions(
    conf: GlobalConf, provider_org: str, code: str, now: datetime
) -> list[Subscription]:
    """Who receives ``provider_org``'s stream ``code`` now: every agreement that allows it
    (an organization may hold several, for different apps, purposes or fields: each gets the
    events masked by its own terms), with that organization's nodes with an events key."""
    out: list[Subscription] = []
    for (consumer_org, prov, res), entries in sorted(conf.policy.by_parties.items()):
        if prov != provider_org or res != code:
            continue
        nodes = tuple(n for n in conf.nodes_by_org.get(consumer_org, ()) if n.events_key)
        if not nodes:
            continue
        found: list[Subscription] = []
        for e in entries:
            if publishable(conf.policy, e, consumer_org, provider_org, code, now):
                assert e.agreement is not None
                found.append(Subscription(consumer_org, e.agreement, e.sha256, nodes))
        # While a renewal and the agreement it renews are both in force, only the renewal
        # gets the events (once); the apps of either receive them (qiao.events.delivery.lineage).
        renewed = {sub.agreement.renews for sub in found}
        out.extend(sub for sub in found if sub.agreement.id not in renewed)
    return out


def broker_event_id(event_id: str, agreement_id: str) -> str:
    """The id in the broker of ``event_id``'s copy for one of several agreements of the same
    organization: each copy is its own entry in the node's log (a broker keeps one entry per
    id), the same on every retry. ``~`` never appears in a backend's event ids, so a derived
    id cannot collide with one; the event's own id travels inside the envelope."""
    digest = hashlib.sha256(canonical_json(["qiao-event-copy/1", event_id, agreement_id]))
    return "~" + digest.hexdigest()[:40]


class Publisher:
    """Publishes the provider node's own streams (see the module doc)."""

    def __init__(
        self,
        conf_cache: ConfigurationCache,
        identity: NodeIdentity,
        broker: Broker,
        pseudonym_secret: bytes,
    ) -> None:
        self._conf = conf_cache
        self._identity = identity
        self._broker = broker
        self._secret = pseudonym_secret
        self._maskers: dict[str, RecordMasker] = {}

    def _masker(self, sub: Subscription) -> RecordMasker:
        # Keyed by the agreement's hash: a changed or renewed agreement compiles afresh.
        masker = self._maskers.get(sub.sha256)
        if masker is None:
            a = sub.agreement
            masker = self._maskers[sub.sha256] = compile_masking(
                a.fields, a.masking, self._pseudonym_key(sub.consumer_org, a.resource.code)
            )
        return masker

    def _pseudonym_key(self, consumer_org: str, code: str) -> bytes:
        return pseudonym_key(self._secret, consumer_org, self._identity.org, code)

    async def publish(
        self,
        stream_code: str,
        events: Sequence[Any],
        *,
        partition_key: str = "",
        now: datetime | None = None,
    ) -> list[PublishedEvent]:
        """Publish ``events`` (records of this node's organization's stream ``stream_code``)
        to every subscribing node; ``partition_key`` names the partition key field when the
        catalog declares none. Raises ``Problem`` (INVALID_REQUEST, with ``violations``) and
        publishes nothing if any event is invalid."""
        conf = self._conf.usable(problems.PROVIDER_CONFIGURATION_EXPIRED)
        org = self._identity.org
        resource = conf.resources.get((org, stream_code))
        if resource is None or resource.event_schema is None:
            raise Problem(
                problems.UNKNOWN_RESOURCE,
                f"{org}/{stream_code} is not an event stream in the global configuration",
            )
        key_field = stream_partition_key(conf, org, stream_code) or partition_key
        if not key_field:
            raise Problem(
                problems.INVALID_REQUEST,
                f"{org}/{stream_code} declares no partition key; name the field that orders "
                "the events",
            )
        if len(events) > MAX_EVENTS:
            raise Problem(
                problems.INVALID_REQUEST,
                f"{len(events)} events in one call; at most {MAX_EVENTS} are accepted",
            )
        records = self._checked(resource, key_field, events)
        if not records:
            return []
        now = now or utcnow()
        stream = stream_name(org, stream_code)
        offsets: dict[str, dict[str, int]] = {event_id: {} for event_id, _, _ in records}
        subs = subscriptions(conf, org, stream_code, now)
        per_org = Counter(sub.consumer_org for sub in subs)
        # Per node: what goes into its log (one broker call), and whose event each entry is.
        logs: dict[str, tuple[list[Outgoing], list[str]]] = {}
        for sub in subs:
            masker = self._masker(sub)
            token_key = self._pseudonym_key(sub.consumer_org, stream_code)
            copies = per_org[sub.consumer_org] > 1
            plain = [
                (
                    broker_event_id(event_id, sub.agreement.id) if copies else event_id,
                    partition_token(token_key, key),
                    orjson.dumps(
                        {
                            "agreement": sub.agreement.id,
                            "event_id": event_id,
                            "event": masker.apply(record),
                        }
                    ),
                )
                for event_id, key, record in records
            ]
            for node in sub.nodes:
                outgoing = self._sealed(stream, node, plain, now)
                if outgoing:
                    entries, owners = logs.setdefault(node.name, ([], []))
                    entries.extend(outgoing)
                    owners.extend(event_id for event_id, _, _ in records)
        # All logs are written concurrently; the call returns once every one is durable.
        names = list(logs)
        results = await asyncio.gather(
            *(self._broker.publish(stream, name, logs[name][0]) for name in names)
        )
        for name, node_offsets in zip(names, results, strict=True):
            for event_id, offset in zip(logs[name][1], node_offsets, strict=True):
                # With several agreements a node holds several copies: the first one's offset.
                offsets[event_id].setdefault(name, offset)
        return [PublishedEvent(eid, key, offsets[eid], record) for eid, key, record in records]

    def _sealed(
        self, stream: str, node: NodeEntry, plain: list[tuple[str, str, bytes]], now: datetime
    ) -> list[Outgoing]:
        try:
            recipient = event_key_from_text(node.events_key)
        except EnvelopeError as exc:
            # One node's broken key must not stop the stream for everyone else.
            log.error("not sealing %s to node %s: %s", stream, node.name, exc)
            return []
        # One data key for the batch, sealed once to the node (qiao.events.envelope, version 2).
        envelopes = seal_batch(
            recipient,
            [(data, event_aad(stream, node.name, event_id)) for event_id, _, data in plain],
            key_aad=batch_aad(stream, node.name),
        )
        return [
            Outgoing(event_id, token, envelope, now)
            for (event_id, token, _), envelope in zip(plain, envelopes, strict=True)
        ]

    def _checked(
        self, resource: ResourceEntry, key_field: str, events: Sequence[Any]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(event id, partition key, record) of each event, or a Problem naming every
        violation (JSON Pointers into the list of events) if any is invalid."""
        assert resource.event_schema is not None
        keeps_id = EVENT_ID_MEMBER in resource.fields
        out: list[tuple[str, str, dict[str, Any]]] = []
        violations: list[Violation] = []
        seen: set[str] = set()
        for i, event in enumerate(events):
            at = f"/{i}"
            if not isinstance(event, dict):
                violations.append(Violation(at, "type"))
                continue
            record = dict(event)
            raw_id = record.get(EVENT_ID_MEMBER) if keeps_id else record.pop(EVENT_ID_MEMBER, None)
            if raw_id is None:
                event_id = str(uuid.uuid4())
            elif isinstance(raw_id, str) and _EVENT_ID.fullmatch(raw_id):
                event_id = raw_id
            else:
                violations.append(Violation(f"{at}/{EVENT_ID_MEMBER}", "pattern", "event-id"))
                continue
            if event_id in seen:
                violations.append(Violation(f"{at}/{EVENT_ID_MEMBER}", "uniqueItems", "event-id"))
                continue
            seen.add(event_id)
            violations.extend(
                Violation(at + v.pointer, v.keyword, v.rule)
                for v in resource.event_schema.errors(record)
            )
            inexact = _inexact_number(record)
            if inexact is not None:
                # RFC 7493 §2.2 (I-JSON): integers beyond ±(2**53 - 1) do not survive other
                # JSON implementations, and RFC 8785 (the digest's canonical form) has none.
                violations.append(Violation(at + inexact, "maximum", "i-json-integer"))
                continue
            key = _key_text(record.get(key_field))
            if key is None:
                violations.append(
                    Violation(f"{at}/{_escape(key_field)}", "partition-key", "partition-key")
                )
                continue
            if len(orjson.dumps(record)) + _SEAL_OVERHEAD > MAX_ENVELOPE:
                violations.append(Violation(at, "maxLength", "event-size"))
                continue
            out.append((event_id, key, record))
            if len(violations) >= MAX_VIOLATIONS:
                break
        if violations:
            shown = violations[:MAX_VIOLATIONS]
            raise Problem(
                problems.INVALID_REQUEST,
                f"{len(shown)} problem(s) in the events of {resource.org}/{resource.code}; "
                "none was published",
                {"violations": [v.to_dict() for v in shown]},
            )
        return out


def _key_text(value: Any) -> str | None:
    """A partition key as text: a string or an integer (not a boolean), 1-256 characters."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not 0 < len(text) <= MAX_PARTITION_KEY:
        return None
    return text


_EXACT = 2**53 - 1


def _inexact_number(value: Any, at: str = "") -> str | None:
    """The JSON Pointer of the first integer outside I-JSON's exact range, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return at if abs(value) > _EXACT else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _inexact_number(v, f"{at}/{_escape(str(k))}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _inexact_number(v, f"{at}/{i}")
            if found is not None:
                return found
    return None


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")  # RFC 6901 §3
