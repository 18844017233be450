"""The DCAT export is well-formed JSON-LD that a data-space catalog can read (no network)."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from qiao.catalog.dcat import ACCESS_RIGHTS, CONTEXT, FREQUENCIES, to_dcat
from qiao.catalog.spec import (
    Catalog,
    Item,
    ResourceSpec,
    ResourceStatus,
    SharingMethod,
    SharingType,
)
from qiao.catalog.standards import standard_catalog
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import org_codes

CODES = org_codes()
NAMES = {CODES["police"]: "桥城市公安局", CODES["transport"]: "桥城市交通运输局"}
BASE = "https://hub.example.gov.cn/"
DOC = to_dcat(demo_catalog(CODES), base_url=BASE, org_names=NAMES)
DATASETS = {d["dct:identifier"].split("/")[1]: d for d in DOC["dcat:dataset"]}

# Terms each vocabulary defines that the export may use (DCAT 3, DCMI terms, FOAF, vCard,
# ADMS, SKOS): a misspelt term is a silent loss of meaning in JSON-LD, so check them.
TERMS = {
    "dcat": {"Catalog", "Dataset", "Distribution", "DataService", "dataset", "distribution",
             "accessService", "accessURL", "endpointURL", "servesDataset", "mediaType", "theme",
             "themeTaxonomy", "keyword", "contactPoint", "version"},
    "dct": {"title", "description", "identifier", "publisher", "accessRights", "RightsStatement",
            "accrualPeriodicity", "conformsTo", "Standard", "issued", "relation", "creator"},
    "foaf": {"Organization", "name"},
    "vcard": {"Organization", "fn"},
    "adms": {"identifier", "Identifier", "status"},
    "skos": {"ConceptScheme", "Concept", "prefLabel", "notation", "hasTopConcept"},
    "xsd": {"date"},
}  # fmt: skip


def walk(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """Every (path, key, value) in the document."""
    out: list[tuple[str, str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((path, k, v))
            out += walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += walk(v, f"{path}/{i}")
    return out


def expand(term: str) -> str:
    prefix, _, local = term.partition(":")
    assert prefix in CONTEXT, term
    assert local in TERMS[prefix], term
    return CONTEXT[prefix] + local


def is_absolute_iri(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in value


def test_context_declares_the_required_vocabularies() -> None:
    assert set(DOC["@context"]) >= {"dcat", "dct", "foaf", "vcard", "adms", "skos"}
    assert all(is_absolute_iri(v) for v in DOC["@context"].values())
    assert DOC["@type"] == "dcat:Catalog"


def test_every_key_and_type_expands_against_the_context() -> None:
    for _path, key, value in walk({k: v for k, v in DOC.items() if k != "@context"}):
        if key in ("@id",):
            assert is_absolute_iri(value), value
        elif key == "@type":
            expand(value)
        elif key in ("@value", "@language"):
            assert isinstance(value, str)
        else:
            expand(key)


def test_language_tagged_titles_in_chinese_and_english() -> None:
    title = DATASETS["vehicle-violations"]["dct:title"]
    assert {"@value": "机动车违法记录查询", "@language": "zh"} in title
    assert {"@value": "Motor vehicle violation records", "@language": "en"} in title


def test_publisher_carries_the_credit_code() -> None:
    pub = DATASETS["vehicle-violations"]["dct:publisher"]
    assert pub["@type"] == "foaf:Organization"
    assert pub["adms:identifier"]["skos:notation"] == CODES["police"]
    assert pub["foaf:name"] == [{"@value": "桥城市公安局", "@language": "zh"}]
    # An organization without a known name is published under its code.
    market = DATASETS["enterprise-credit"]["dct:publisher"]
    assert market["foaf:name"][0]["@value"] == CODES["market"]


def test_access_rights_frequency_theme_and_conformance() -> None:
    identity = DATASETS["identity-verification"]
    assert identity["dct:accessRights"]["@id"] == ACCESS_RIGHTS[SharingType.CONDITIONAL]
    assert (
        "《中华人民共和国居民身份证法》"
        in identity["dct:accessRights"]["dct:description"][0]["@value"]
    )
    assert identity["dct:accrualPeriodicity"]["@id"].endswith("/frequency/CONT")
    assert identity["dcat:theme"]["@id"].endswith("/themes/basic")
    conforms = [c["@id"] for c in identity["dct:conformsTo"]]
    assert conforms == [
        f"{BASE}api/v1/catalog/data-elements/{e}" for e in ("DE0040", "DE0001", "DE0002")
    ]
    bikes = DATASETS["bike-stations"]
    assert bikes["dct:accessRights"]["@id"].endswith("/access-right/PUBLIC")
    assert "dct:description" not in bikes["dct:accessRights"]
    assert set(FREQUENCIES.values()) <= {
        f"http://publications.europa.eu/resource/authority/frequency/{f}"
        for f in ("CONT", "DAILY", "WEEKLY", "MONTHLY", "QUARTERLY", "ANNUAL", "IRREG")
    }


def test_one_distribution_and_data_service_per_sharing_method() -> None:
    dists = DATASETS["bike-stations"]["dcat:distribution"]
    assert [d["@id"].rsplit("#", 1)[1] for d in dists] == ["service", "events"]
    service = dists[0]["dcat:accessService"]
    assert service["@type"] == "dcat:DataService"
    assert service["dcat:endpointURL"]["@id"] == f"{BASE}r1/{CODES['transport']}/bike-stations"
    assert service["dcat:servesDataset"]["@id"] == DATASETS["bike-stations"]["@id"]
    assert dists[0]["dcat:mediaType"]["@id"].endswith("/application/json")


def test_issued_version_keywords_relations() -> None:
    v = DATASETS["vehicle-violations"]
    assert v["dct:issued"] == {"@value": "2026-11-01", "@type": "xsd:date"}
    assert "dcat:version" not in v  # not yet published by the hub
    assert {"@value": "交通违法", "@language": "zh"} in v["dcat:keyword"]
    assert v["dct:relation"] == [{"@id": DATASETS["traffic-accidents"]["@id"]}]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", v["dct:issued"]["@value"])


def test_versions_status_and_cross_provider_relations() -> None:
    other = standard_catalog()
    r = ResourceSpec(
        code="x",
        name="测试",
        provider=CODES["health"],
        abstract="a",
        classification="departmental",
        items=(Item(field="a", name="a", element=other.data_elements[0].identifier),),
        sharing_type=SharingType.NONE,
        legal_basis="《某法》",
        related=(f"{CODES['police']}/traffic-accidents",),
        version=3,
        status=ResourceStatus.DEPRECATED,
        published_on=date(2026, 1, 1),
    )
    [d] = to_dcat(Catalog(resources=(r,)), base_url=BASE, org_names={})["dcat:dataset"]
    assert d["dcat:version"] == "3"
    assert d["adms:status"]["@id"].endswith("/dataset-status/DEPRECATED")
    assert d["dct:accessRights"]["@id"].endswith("/access-right/NON_PUBLIC")
    assert d["dct:relation"] == [{"@id": DATASETS["traffic-accidents"]["@id"]}]


def test_the_document_is_plain_json_and_identifiers_are_unique() -> None:
    text = json.dumps(DOC, ensure_ascii=False)
    assert json.loads(text) == DOC
    ids = [v for _p, k, v in walk(DOC) if k == "@id"]
    datasets = [d["@id"] for d in DOC["dcat:dataset"]]
    assert len(datasets) == len(set(datasets)) == 6
    assert all(i.startswith("http") for i in ids)


def test_identifiers_with_spaces_and_slashes_are_escaped() -> None:
    r = (
        demo_catalog(CODES)
        .resources[0]
        .model_copy(
            update={
                "items": (Item(field="sex", name="性别", element="GB/T 2261.1"),),
                "sharing_methods": (SharingMethod.SERVICE,),
                "stream": None,
            }
        )
    )
    [d] = to_dcat(Catalog(resources=(r,)), base_url=BASE, org_names={})["dcat:dataset"]
    assert d["dct:conformsTo"][0]["@id"].endswith("/data-elements/GB%2FT%202261.1")
