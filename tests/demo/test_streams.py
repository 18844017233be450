"""The demo's streams: what the feeds publish, the subscriber nodes' webhook settings, and the
judges ``qiao demo --check`` applies to what the receivers got."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from qiao.agreements.masking import mask_citizen_id, mask_plate
from qiao.catalog.schema import compile_schema, derive_schemas
from qiao.catalog.standards import standard_catalog
from qiao.catalog.validators import validate_citizen_id, validate_plate
from qiao.config import NodeSettings
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import DEPARTMENTS, org_codes
from qiao.demo.people import CST, build_city
from qiao.demo.processes import write_toml
from qiao.demo.streams import (
    ACCIDENTS,
    FEEDS,
    STATIONS,
    AccidentReports,
    Published,
    StationStatus,
    duplicates,
    masking_problems,
    missing,
    order_problems,
    webhook_settings,
)

CITY = build_city()
T0 = datetime(2026, 11, 29, 20, 0, tzinfo=CST)


def _event_schemas() -> dict[str, Any]:
    standards = standard_catalog()
    elements = {e.identifier: e for e in standards.data_elements}
    code_lists = {c.identifier: c for c in standards.code_lists}
    return {
        r.code: compile_schema(derive_schemas(r, elements, code_lists)["event"])
        for r in demo_catalog(org_codes()).resources
        if r.stream is not None
    }


def _accidents(n: int, run: str = "r1") -> list[dict[str, Any]]:
    feed = AccidentReports(CITY, run)
    return [feed.next(T0) for _ in range(n)]


def test_feeds_are_seeded_and_event_ids_unique_per_run() -> None:
    assert _accidents(30) == _accidents(30)
    ids = [e["event_id"] for e in _accidents(200)]
    assert len(set(ids)) == len(ids)
    assert {e["event_id"] for e in _accidents(5, "r2")}.isdisjoint(ids)
    stations = StationStatus("r1")
    batches = [stations.next() for _ in range(50)]
    again = StationStatus("r1")
    assert [again.next() for _ in range(50)] == batches
    sids = [e["event_id"] for b in batches for e in b]
    assert len(set(sids)) == len(sids)


def test_published_events_pass_the_catalog_s_event_schema() -> None:
    """The provider node refuses a whole batch if one event breaks the schema."""
    schemas = _event_schemas()
    assert set(schemas) == {f.stream for f in FEEDS}
    stations = StationStatus("r1")
    published = [(ACCIDENTS.stream, e) for e in _accidents(200)]
    published += [(STATIONS.stream, e) for _ in range(50) for e in stations.next()]
    for stream, event in published:
        record = {k: v for k, v in event.items() if k != "event_id"}
        assert schemas[stream].errors(record) == [], (stream, record)
    for _, event in published[:200]:
        validate_plate(event["party_plate"])
        validate_citizen_id(event["party_citizen_id"])


def test_accidents_are_updated_in_place_with_severity_following_casualties() -> None:
    events = _accidents(300)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_id.setdefault(e["accident_id"], []).append(e)
    updated = [chain for chain in by_id.values() if len(chain) > 1]
    assert updated and max(len(c) for c in updated) == 4  # a report and three updates at most
    for chain in by_id.values():
        assert [e["event_id"].rsplit("-", 1)[1] for e in chain] == [
            str(i) for i in range(len(chain))
        ]
        # An update never loses casualties and never changes what does not change.
        injuries = [e["injuries"] for e in chain]
        assert injuries == sorted(injuries)
        assert len({(e["occurred_at"], e["location"], e["party_plate"]) for e in chain}) == 1
        for e in chain:
            assert e["severity"] == ("3" if e["deaths"] else "2" if e["injuries"] else "1")


def test_station_status_stays_within_capacity_and_revisits_busy_stations() -> None:
    stations = StationStatus("r1")
    events = [e for _ in range(20) for e in stations.next()]
    assert all(0 <= e["bikes_available"] <= e["capacity"] for e in events)
    per_station: dict[str, int] = {}
    for e in events:
        per_station[e["station_id"]] = per_station.get(e["station_id"], 0) + 1
    assert len(per_station) <= StationStatus.BUSY and max(per_station.values()) > 1


def test_subscriber_nodes_get_webhook_tables_the_node_accepts(tmp_path: Path) -> None:
    codes = org_codes()
    assert {f.subscriber for f in FEEDS} | {f.provider for f in FEEDS} <= {
        d.key for d in DEPARTMENTS
    }
    district = next(d for d in DEPARTMENTS if d.key == "district")
    assert district.apps == (STATIONS.app,) and district.kind == "government"
    tables = [webhook_settings(f, codes[f.provider], "http://127.0.0.1:9") for f in FEEDS]
    path = write_toml(tmp_path / "node.toml", {"data_dir": str(tmp_path), "webhooks": tables})
    assert len(tomllib.loads(path.read_text())["webhooks"]) == 2
    settings = NodeSettings.load(path)
    got = {w.name: w for w in settings.webhooks}
    assert got["traffic-accidents"].provider == codes["police"]
    assert got["traffic-accidents"].url == "http://127.0.0.1:9/events/traffic-accidents"
    assert got["bike-stations"].purpose == "bike-dispatch"
    assert got["bike-stations"].secret_file == "webhook-bike-stations.secret"


# --- the judges ---------------------------------------------------------------------------
def _p(event_id: str, key: str, **record: Any) -> Published:
    return Published("f", event_id, key, {"id": key, **record}, 0.0)


def _r(event_id: str, **event: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event": event}


def test_missing_and_duplicates() -> None:
    published = [_p("a1", "a"), _p("a2", "a"), _p("b1", "b")]
    assert missing(published, [_r("a1"), _r("b1")]) == ["a2"]
    assert missing(published, [_r("b1"), _r("a2"), _r("a1")]) == []
    assert duplicates([_r("a1"), _r("b1"), _r("a1")]) == ["a1"]
    assert duplicates([_r("a1"), _r("b1")]) == []


def test_order_is_judged_per_partition_key() -> None:
    published = [_p("a1", "a"), _p("b1", "b"), _p("a2", "a"), _p("a3", "a"), _p("b2", "b")]
    # Keys interleave freely; within a key the published order holds.
    assert order_problems(published, [_r("b1"), _r("a1"), _r("b2"), _r("a2"), _r("a3")]) == (
        2,
        [],
    )
    assert order_problems(published, [_r("a2"), _r("a1"), _r("b1")]) == (1, ["a"])
    # Something still on its way is not disorder; a gap that is filled later is.
    assert order_problems(published, [_r("a1"), _r("a2")]) == (1, [])
    assert order_problems(published, [_r("a1"), _r("a3"), _r("a2")]) == (1, ["a"])
    # Events published before this journal began are not judged.
    assert order_problems(published, [_r("zz"), _r("a1")]) == (0, [])


def test_masking_is_judged_field_by_field() -> None:
    plate, cid = "粤BD12345", "440305199001011234"
    published = [_p("e1", "k", plate=plate, cid=cid, n=1)]
    rules = {"plate": mask_plate, "cid": mask_citizen_id}
    good = _r("e1", id="k", plate=mask_plate(plate), cid=mask_citizen_id(cid), n=1)
    assert masking_problems(published, [good], rules) == []
    assert masking_problems(
        published, [{**good, "event": {**good["event"], "plate": plate}}], rules
    ) == ["e1/plate"]
    # Anything else changed or added is also a difference.
    assert masking_problems(published, [_r("e1", **{**good["event"], "n": 2})], rules) == ["e1/n"]
    assert masking_problems(published, [_r("e1", **{**good["event"], "x": 1})], rules) == ["e1/x"]
    # A keyed pseudonym cannot be recomputed: it only has to differ from the clear value.
    assert masking_problems(published, [good], {"plate": None, "cid": mask_citizen_id}) == []
    clear = _r("e1", **{**good["event"], "plate": plate})
    assert masking_problems(published, [clear], {"plate": None, "cid": mask_citizen_id}) == [
        "e1/plate"
    ]
    # Suppressed: absent.
    suppressed = {k: v for k, v in good["event"].items() if k != "cid"}
    suppress = {"plate": mask_plate, "cid": lambda _v: None}
    assert masking_problems(published, [_r("e1", **suppressed)], suppress) == []
