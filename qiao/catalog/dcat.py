"""The catalog as DCAT 3 (JSON-LD), in the style of DCAT-AP, for data-space interoperability.

Data spaces (Eclipse Dataspace Components, Gaia-X, the EU data portals) exchange catalogs as
W3C DCAT; DCAT-AP fixes the vocabularies. Each resource becomes a ``dcat:Dataset``:

* publisher: a ``foaf:Organization`` identified by its unified social credit code
  (``adms:identifier``, GB 32100);
* ``dcat:theme``: the catalog guideline's classification, as concepts of a SKOS scheme;
* ``dct:accessRights``: the sharing type, mapped to the EU access-right vocabulary
  (无条件共享 → PUBLIC within the exchange, 有条件共享 → RESTRICTED, 不予共享 → NON_PUBLIC),
  with the sharing conditions and legal basis as the rights statement's description;
* ``dct:accrualPeriodicity``: the update cycle in the EU frequency vocabulary;
* ``dcat:distribution``: one per sharing method, served by a ``dcat:DataService`` — the
  exchange path ``/r1/{org}/{code}`` for service calls, the event broker for streams;
* ``dct:conformsTo``: the data elements the items are bound to (``dct:Standard``);
* ``dct:issued``, ``dcat:version``, ``dcat:keyword``, ``dct:relation``.

IRIs are under the hub's public URL and point at the catalog API, so a reader can follow them.
Pure function; no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from qiao.catalog.spec import (
    Catalog,
    Classification,
    ResourceSpec,
    ResourceStatus,
    SharingMethod,
    SharingType,
    UpdateCycle,
    label_zh,
)

__all__ = ["CONTEXT", "to_dcat"]

CONTEXT: dict[str, str] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "adms": "http://www.w3.org/ns/adms#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}

_EU = "http://publications.europa.eu/resource/authority"
ACCESS_RIGHTS = {
    SharingType.UNCONDITIONAL: f"{_EU}/access-right/PUBLIC",
    SharingType.CONDITIONAL: f"{_EU}/access-right/RESTRICTED",
    SharingType.NONE: f"{_EU}/access-right/NON_PUBLIC",
}
FREQUENCIES = {
    UpdateCycle.REALTIME: f"{_EU}/frequency/CONT",
    UpdateCycle.DAILY: f"{_EU}/frequency/DAILY",
    UpdateCycle.WEEKLY: f"{_EU}/frequency/WEEKLY",
    UpdateCycle.MONTHLY: f"{_EU}/frequency/MONTHLY",
    UpdateCycle.QUARTERLY: f"{_EU}/frequency/QUARTERLY",
    UpdateCycle.YEARLY: f"{_EU}/frequency/ANNUAL",
    UpdateCycle.IRREGULAR: f"{_EU}/frequency/IRREG",
}
# ADMS status of a dataset (EU dataset-status vocabulary).
STATUSES = {
    ResourceStatus.PUBLISHED: f"{_EU}/dataset-status/COMPLETED",
    ResourceStatus.DEPRECATED: f"{_EU}/dataset-status/DEPRECATED",
}
CLASSIFICATION_EN = {
    Classification.BASIC: "Base information resources",
    Classification.THEMATIC: "Thematic information resources",
    Classification.DEPARTMENTAL: "Departmental information resources",
}
_METHOD_EN = {
    SharingMethod.SERVICE: "service call",
    SharingMethod.EVENTS: "event subscription",
    SharingMethod.DATASET: "dataset",
}
_IANA = "https://www.iana.org/assignments/media-types/"


def _text(zh: str, en: str = "") -> list[dict[str, str]]:
    values = [{"@value": zh, "@language": "zh"}]
    if en:
        values.append({"@value": en, "@language": "en"})
    return values


def to_dcat(catalog: Catalog, *, base_url: str, org_names: Mapping[str, str]) -> dict[str, Any]:
    """A DCAT 3 JSON-LD document describing every resource of ``catalog``.

    ``base_url`` is the hub's public URL; ``org_names`` maps credit codes to organization
    names (a code without a name is published under the code).
    """
    base = base_url.rstrip("/")
    api = f"{base}/api/v1/catalog"
    themes = f"{api}/themes"

    def dataset_iri(org: str, code: str) -> str:
        return f"{api}/resources/{quote(org, safe='')}/{quote(code, safe='')}"

    def related(provider: str, rel: str) -> str:
        # spec.ResourceSpec.related: "{org}/{code}", or "{code}" of the same provider.
        org, _, code = rel.rpartition("/")
        return dataset_iri(org or provider, code)

    def element_iri(identifier: str) -> str:
        return f"{api}/data-elements/{quote(identifier, safe='')}"

    def organization(uscc: str) -> dict[str, Any]:
        return {
            "@id": f"{base}/api/v1/organizations/{quote(uscc, safe='')}",
            "@type": "foaf:Organization",
            "foaf:name": _text(org_names.get(uscc, uscc)),
            "adms:identifier": {
                "@type": "adms:Identifier",
                "skos:notation": uscc,
                "dct:creator": _text("统一社会信用代码 (GB 32100-2015)"),
            },
        }

    def dataset(r: ResourceSpec) -> dict[str, Any]:
        iri = dataset_iri(r.provider, r.code)
        rights: dict[str, Any] = {
            "@id": ACCESS_RIGHTS[r.sharing_type],
            "@type": "dct:RightsStatement",
            "skos:prefLabel": _text(label_zh(r.sharing_type)),
        }
        statement = "；".join(
            part
            for part in (
                f"共享条件:{r.sharing_conditions}" if r.sharing_conditions else "",
                f"共享依据:{r.legal_basis}" if r.legal_basis else "",
            )
            if part
        )
        if statement:
            rights["dct:description"] = _text(statement)
        doc: dict[str, Any] = {
            "@id": iri,
            "@type": "dcat:Dataset",
            "dct:identifier": f"{r.provider}/{r.code}",
            "dct:title": _text(r.name, r.name_en),
            "dct:description": _text(r.abstract),
            "dct:publisher": organization(r.provider),
            "dcat:contactPoint": {
                "@type": "vcard:Organization",
                "vcard:fn": org_names.get(r.provider, r.provider),
            },
            "dcat:theme": {"@id": f"{themes}/{r.classification.value}"},
            "dct:accessRights": rights,
            "dct:accrualPeriodicity": {"@id": FREQUENCIES[r.update_cycle]},
            "adms:status": {"@id": STATUSES[r.status]},
            "dcat:distribution": _distribution(r, iri, base),
            "dct:conformsTo": [
                {"@id": element_iri(e), "@type": "dct:Standard"}
                for e in dict.fromkeys(i.element for i in r.items + r.parameters)
            ],
            "dcat:keyword": [{"@value": k, "@language": "zh"} for k in r.keywords],
            "dct:relation": [{"@id": related(r.provider, rel)} for rel in r.related],
        }
        if r.published_on:
            doc["dct:issued"] = {"@value": r.published_on.isoformat(), "@type": "xsd:date"}
        if r.version:
            doc["dcat:version"] = str(r.version)
        return doc

    return {
        "@context": CONTEXT,
        "@id": f"{api}",
        "@type": "dcat:Catalog",
        "dct:title": _text("政务信息资源目录", "Government information resource catalog"),
        "dct:description": _text(
            "经 Qiao 数据交换平台共享的政务信息资源。",
            "Government information resources shared through the Qiao exchange.",
        ),
        "dcat:themeTaxonomy": {
            "@id": themes,
            "@type": "skos:ConceptScheme",
            "skos:prefLabel": _text("政务信息资源分类", "Government information resource classes"),
            "skos:hasTopConcept": [
                {
                    "@id": f"{themes}/{c.value}",
                    "@type": "skos:Concept",
                    "skos:prefLabel": _text(label_zh(c) + "信息资源", CLASSIFICATION_EN[c]),
                    "skos:notation": c.value,
                }
                for c in Classification
            ],
        },
        "dcat:dataset": [dataset(r) for r in catalog.resources],
    }


def _distribution(r: ResourceSpec, iri: str, base: str) -> list[dict[str, Any]]:
    """One distribution per sharing method, each with the data service that serves it."""
    out: list[dict[str, Any]] = []
    media = {"@id": _IANA + r.format} if "/" in r.format else None
    for method in r.sharing_methods:
        if method is SharingMethod.EVENTS:
            endpoint = f"{base}/api/v1/events/{quote(r.provider, safe='')}/{quote(r.code, safe='')}"
        else:
            # Consumers call their own node, which forwards to the provider's: the path is
            # the exchange protocol's, relative to any node (design: /r1/{org}/{resource}).
            endpoint = f"{base}/r1/{quote(r.provider, safe='')}/{quote(r.code, safe='')}"
        dist: dict[str, Any] = {
            "@id": f"{iri}#{method.value}",
            "@type": "dcat:Distribution",
            "dct:title": _text(label_zh(method), _METHOD_EN[method]),
            "dcat:accessURL": {"@id": endpoint},
            "dcat:accessService": {
                "@type": "dcat:DataService",
                "dct:title": _text(f"{r.name}({label_zh(method)})"),
                "dcat:endpointURL": {"@id": endpoint},
                "dcat:servesDataset": {"@id": iri},
            },
        }
        if media:
            dist["dcat:mediaType"] = media
        out.append(dist)
    return out
