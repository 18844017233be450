"""The signed global configuration: what every node knows about the exchange.

The hub builds one document from its registry (organizations and their apps, nodes with their
addresses and certificate fingerprints, CA certificates, revocations, resources) and signs it
with its Ed25519 configuration key (``qiao.signing``). Nodes fetch it, verify it against the
key they received at enrollment, cache it on disk, and compile it into the lookup tables
below. Like X-Road's global configuration, but tolerant: a node keeps serving from its cache
for a grace period after the hub was last reached, and says how long it has left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qiao.agreements.policy import Policy, compile_policy
from qiao.catalog.schema import PayloadValidator, compile_schema

KIND = "qiao-global-configuration/1"


@dataclass(frozen=True)
class NodeEntry:
    name: str
    org: str
    address: str
    fingerprints: frozenset[str]
    witness_key: str = ""
    witness_url: str = ""
    events_key: str = ""  # base64 X25519 key events are sealed to; "" = cannot receive events


@dataclass(frozen=True)
class ResourceEntry:
    org: str
    code: str
    name: str
    version: int = 0
    # The record's field names (what agreements project), where the records sit in an
    # answer (a JSON Pointer, RFC 6901) and the sharing type, as the catalog publishes them.
    fields: tuple[str, ...] = ()
    records_at: str = ""
    sharing_type: str = ""
    # Compiled from the catalog's JSON Schemas (qiao.catalog.schema); None = not validated.
    response_schema: PayloadValidator | None = field(default=None, compare=False)
    request_schema: PayloadValidator | None = field(default=None, compare=False)
    # One event of the resource's stream (a record; qiao.events); None = not a stream.
    event_schema: PayloadValidator | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GlobalConf:
    """A verified global configuration, compiled for constant-time lookups on the hot path."""

    instance: str
    serial: int
    issued_at: datetime
    document: dict[str, Any]
    org_names: dict[str, str]
    apps: frozenset[str]  # "{instance}/{org}/{app}"
    nodes_by_org: dict[str, tuple[NodeEntry, ...]]
    nodes_by_fingerprint: dict[str, NodeEntry]
    revoked: frozenset[str]  # certificate fingerprints
    resources: dict[tuple[str, str], ResourceEntry]
    ca_pems: tuple[str, ...] = field(default=())
    ledger_origin: str = ""
    ledger_key: str = ""  # the log's C2SP verifier key
    # Agreements and emergencies, verified and compiled once per configuration: who may
    # call what (qiao.agreements.policy). Replaces the foundation's allow-list.
    policy: Policy = field(default_factory=Policy, compare=False)

    @classmethod
    def compile(cls, doc: dict[str, Any]) -> GlobalConf:
        """Compile a verified document; raises ``ValueError`` if its shape is wrong."""
        if doc.get("redacted"):
            # The hub signs a public form without agreements and emergencies for callers
            # that are not enrolled nodes. A node must never run on it: anyone between the
            # node and the hub could replay it to strip the node of its agreements.
            raise ValueError(
                "the hub sent the public configuration, without agreements and emergencies: "
                "it did not accept this node's signature on the fetch"
            )
        try:
            instance = str(doc["instance"])
            apps: set[str] = set()
            names: dict[str, str] = {}
            for org in doc["organizations"]:
                names[org["code"]] = org["name"]
                apps.update(f"{instance}/{org['code']}/{a}" for a in org["apps"])
            revoked = frozenset(r["fingerprint"] for r in doc["revoked"])
            by_org: dict[str, list[NodeEntry]] = {}
            by_fp: dict[str, NodeEntry] = {}
            for n in doc["nodes"]:
                fps = frozenset(c["fingerprint"] for c in n["certificates"]) - revoked
                entry = NodeEntry(
                    n["name"],
                    n["org"],
                    n["address"],
                    fps,
                    n.get("witness_key", ""),
                    n.get("witness_url", ""),
                    # Documents from before event streams have no "events_key".
                    n.get("events_key", ""),
                )
                by_org.setdefault(entry.org, []).append(entry)
                for fp in fps:
                    by_fp[fp] = entry
            resources = {(r["org"], r["code"]): _resource(r) for r in doc["resources"]}
            # Documents from before agreements have no "agreements" or "emergencies":
            # the policy is then empty and every call is refused (no agreement).
            policy = compile_policy(doc, {k: r.fields for k, r in resources.items()})
            return cls(
                instance=instance,
                serial=int(doc["serial"]),
                issued_at=datetime.fromisoformat(doc["issued_at"]).astimezone(UTC),
                document=doc,
                org_names=names,
                apps=frozenset(apps),
                nodes_by_org={k: tuple(v) for k, v in by_org.items()},
                nodes_by_fingerprint=by_fp,
                revoked=revoked,
                resources=resources,
                ca_pems=tuple(doc["ca_certificates"]),
                ledger_origin=doc.get("ledger", {}).get("origin", ""),
                ledger_key=doc.get("ledger", {}).get("key", ""),
                policy=policy,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"global configuration has an unexpected shape: {exc!r}") from exc


def _resource(r: dict[str, Any]) -> ResourceEntry:
    # "version", "schemas", "fields", "records_at" and "sharing_type" arrived with the
    # catalog and agreements; documents without them still load.
    schemas = r.get("schemas") or {}
    response, request = schemas.get("response"), schemas.get("request")
    event = schemas.get("event")  # only for resources offered as an event stream
    return ResourceEntry(
        r["org"],
        r["code"],
        r.get("name", ""),
        version=int(r.get("version", 0)),
        fields=tuple(str(f) for f in r.get("fields") or ()),
        records_at=str(r.get("records_at") or ""),
        sharing_type=str(r.get("sharing_type") or ""),
        # Compiled validators are cached by schema hash: an unchanged schema costs nothing.
        response_schema=compile_schema(response) if response else None,
        request_schema=compile_schema(request) if request else None,
        event_schema=compile_schema(event) if event else None,
    )
