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


@dataclass(frozen=True)
class ResourceEntry:
    org: str
    code: str
    name: str
    allowed: frozenset[str]
    version: int = 0
    # Compiled from the catalog's JSON Schemas (qiao.catalog.schema); None = not validated.
    response_schema: PayloadValidator | None = field(default=None, compare=False)
    request_schema: PayloadValidator | None = field(default=None, compare=False)

    def allows(self, client: str) -> bool:
        """A client ``{instance}/{org}/{app}`` is allowed by its own id or its org's."""
        return client in self.allowed or client.rsplit("/", 1)[0] in self.allowed


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

    @classmethod
    def compile(cls, doc: dict[str, Any]) -> GlobalConf:
        """Compile a verified document; raises ``ValueError`` if its shape is wrong."""
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
                )
                by_org.setdefault(entry.org, []).append(entry)
                for fp in fps:
                    by_fp[fp] = entry
            resources = {(r["org"], r["code"]): _resource(r) for r in doc["resources"]}
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"global configuration has an unexpected shape: {exc!r}") from exc


def _resource(r: dict[str, Any]) -> ResourceEntry:
    # "version" and "schemas" arrived with the catalog; documents without them still load.
    schemas = r.get("schemas") or {}
    response, request = schemas.get("response"), schemas.get("request")
    return ResourceEntry(
        r["org"],
        r["code"],
        r.get("name", ""),
        frozenset(r["allowed_clients"]),
        version=int(r.get("version", 0)),
        # Compiled validators are cached by schema hash: an unchanged schema costs nothing.
        response_schema=compile_schema(response) if response else None,
        request_schema=compile_schema(request) if request else None,
    )
