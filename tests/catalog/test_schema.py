"""JSON Schema derived from the catalog, and the compiled validators the nodes use."""

from __future__ import annotations

import copy
import gzip
import zlib
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao.catalog import schema as s
from qiao.catalog.spec import CodeList, DataElement, ElementType, Item, ResourceSpec
from qiao.catalog.validators import USCC_ALPHABET, uscc_check_char
from tests.catalog.violations import CIVIL_ID, VALID_RECORD, violation_catalog


def _schemas(**change: Any) -> dict[str, Any]:
    spec, elements, code_lists = violation_catalog()
    return s.derive_schemas(spec.model_copy(update=change), elements, code_lists)


def _record_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["$defs"]["record"]  # type: ignore[no-any-return]


def test_record_schema_follows_the_data_elements() -> None:
    doc = _schemas()["response"]
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == "urn:qiao:schema:91350100M000100Y43:vehicle-violations:3:response"
    record = _record_schema(doc)
    props = record["properties"]
    assert props["plate"] == {
        "type": "string",
        "maxLength": 9,
        "format": "plate",
        "x-qiao-element": "DE-PLATE",
        "title": "号牌号码",
    }
    assert props["code"]["enum"] == ["1625", "1352", "1039"]
    assert props["occurred_at"]["format"] == "date-time"
    assert props["at"]["minLength"] == 1 and props["at"]["maxLength"] == 128
    assert props["division"]["format"] == "division"
    assert props["handled"]["type"] == "boolean"
    # Optional items may be absent or null, and still must be right when present.
    assert props["fine"]["type"] == ["integer", "null"]
    assert props["driver_mobile"]["type"] == ["string", "null"]
    assert record["required"] == ["plate", "plate_type", "code", "occurred_at", "at", "division",
                                  "handled"]  # fmt: skip
    assert record["additionalProperties"] is False


def test_dates_times_and_numeric_code_lists() -> None:
    elements = {
        "D": DataElement(identifier="D", name="日", definition="d", type=ElementType.DATE),
        "T": DataElement(identifier="T", name="时", definition="t", type=ElementType.TIME),
        "N": DataElement(
            identifier="N", name="级", definition="n", type=ElementType.INTEGER, code_list="L"
        ),
        "X": DataElement(
            identifier="X", name="码", definition="x", type=ElementType.STRING, pattern="^[A-Z]{2}$"
        ),
    }
    lists = {"L": CodeList(identifier="L", name="级别", codes=({"value": "1", "label": "一级"},))}
    spec = ResourceSpec(
        code="r", name="r", provider="91350100M000100Y43", abstract="a",
        classification="basic", sharing_type="unconditional",
        items=(Item(field="d", name="d", element="D"), Item(field="t", name="t", element="T"),
               Item(field="n", name="n", element="N", required=False),
               Item(field="x", name="x", element="X")),
    )  # fmt: skip
    out = s.derive_schemas(spec, elements, lists)
    assert out["request"] is None
    props = _record_schema(out["response"])["properties"]
    assert props["d"]["format"] == "date" and props["t"]["format"] == "time"
    assert props["n"]["enum"] == [1, None]
    v = s.compile_schema(out["response"])
    ok = {"d": "2026-11-29", "t": "08:30:00+08:00", "n": 1, "x": "AB"}
    assert v.errors(ok) == []
    assert v.errors([ok, {**ok, "n": None}]) == []  # an array of records at the root
    bad = {"d": "2026-02-30", "t": "25:00:00Z", "n": 2, "x": "ab"}
    assert {(e.pointer, e.keyword) for e in v.errors(bad)} == {
        ("/d", "format"), ("/t", "format"), ("/n", "enum"), ("/x", "pattern"),
    }  # fmt: skip


def test_records_at_wraps_the_record_schema() -> None:
    v = s.compile_schema(_schemas()["response"])
    assert v.errors({"violations": [VALID_RECORD, VALID_RECORD], "total": 2, "page": 1}) == []
    assert v.errors({"violations": VALID_RECORD}) == []  # one record, not an array
    assert v.errors({"records": []}) == [s.Violation("/violations", "required")]
    assert v.errors([VALID_RECORD]) == [s.Violation("", "type")]
    nested = s.compile_schema(_schemas(records_at="/data/a~1b")["response"])
    assert nested.errors({"data": {"a/b": [VALID_RECORD]}}) == []
    assert nested.errors({"data": {"a/b": [{**VALID_RECORD, "plate": "x"}]}}) == [
        s.Violation("/data/a~1b/0/plate", "format", "plate.province")
    ]


def test_request_schema_from_parameters() -> None:
    request = _schemas()["request"]
    assert request is not None
    assert request["$id"].endswith(":3:request")
    assert request["required"] == ["citizen_id"] and request["additionalProperties"] is False
    v = s.compile_schema(request)
    assert v.errors({"citizen_id": CIVIL_ID}) == []
    assert v.errors({"citizen_id": CIVIL_ID[:-1]}) == [
        s.Violation("/citizen_id", "format", "citizen-id.length")
    ]
    assert v.errors({"citizen_id": None}) == [s.Violation("/citizen_id", "type")]


def test_derivation_is_deterministic_and_the_hash_is_canonical() -> None:
    a, b = _schemas(), _schemas()
    assert rfc8785.dumps(a) == rfc8785.dumps(b)
    assert s.schema_hash(a["response"]) == s.schema_hash(copy.deepcopy(b["response"]))
    assert s.schema_hash(a["response"]) != s.schema_hash(_schemas(version=4)["response"])
    # Key order does not matter to the hash (RFC 8785 §3.2.3 sorts members).
    shuffled = dict(reversed(list(a["response"].items())))
    assert s.schema_hash(shuffled) == s.schema_hash(a["response"])


def test_unknown_elements_and_code_lists_are_refused() -> None:
    spec, elements, code_lists = violation_catalog()
    with pytest.raises(ValueError, match="unknown data element 'DE-PLATE'"):
        s.derive_schemas(spec, {k: v for k, v in elements.items() if k != "DE-PLATE"}, code_lists)
    with pytest.raises(ValueError, match=r"unknown code list 'GA 24\.7'"):
        s.derive_schemas(spec, elements, {})


def test_compiled_validators_are_cached_by_schema_hash() -> None:
    first = s.compile_schema(_schemas()["response"])
    again = s.compile_schema(copy.deepcopy(_schemas()["response"]))
    assert again is first
    assert s.compile_schema(_schemas(version=9)["response"]) is not first
    with pytest.raises(ValueError, match="does not compile"):
        s.compile_schema({"$schema": s.DIALECT, "type": "no-such-type"})


CORRUPTIONS: list[tuple[str, Any, str, str]] = [
    ("plate", "京O12345", "format", "plate.authority"),
    ("plate", "X A12345", "format", "plate.province"),
    ("plate", "闽A1234", "format", "plate.length"),
    ("at", "路" * 129, "maxLength", ""),
    ("plate_type", "99", "enum", ""),
    ("points", 6.5, "type", ""),
    ("occurred_at", "2026-11-20 08:31", "format", "date-time"),
    ("at", "", "minLength", ""),
    ("division", "990000", "format", "division.unknown"),
    ("fine", "200", "type", ""),
    ("handled", "no", "type", ""),
    ("driver_mobile", "12800138000", "format", "mobile.prefix"),
    ("driver_mobile", "+8613800138000", "format", "mobile.normalized-form"),
]


@pytest.mark.parametrize(("field", "value", "keyword", "rule"), CORRUPTIONS)
def test_each_corruption_names_its_field_and_rule(
    field: str, value: Any, keyword: str, rule: str
) -> None:
    v = s.compile_schema(_schemas()["response"])
    payload = {"violations": [VALID_RECORD] * 3 + [{**VALID_RECORD, field: value}]}
    errors = v.errors(payload)
    assert errors == [s.Violation(f"/violations/3/{field}", keyword, rule)]
    # The reference validator agrees that the record is invalid.
    assert not _reference(_schemas()["response"]).is_valid(payload)


def test_every_named_format_including_citizen_id_and_uscc() -> None:
    checks = s.format_checkers()
    usccs = "91350100M000100Y43", "91110000802100433B"
    assert all(checks["uscc"](c) for c in usccs)
    assert not checks["uscc"]("91350100M000100Y44")
    assert s.format_rule("uscc", "91350100M000100Y44") == "uscc.check-character"
    assert s.format_rule("uscc", "91350100m000100y43") == "uscc.normalized-form"
    assert checks["citizen-id"](CIVIL_ID)
    wrong = CIVIL_ID[:-1] + ("0" if CIVIL_ID[-1] != "0" else "1")
    assert s.format_rule("citizen-id", wrong) == "citizen-id.check-character"
    assert checks["plate"]("粤BD12345") and checks["mobile"]("13800138000")
    assert checks["division"]("350102") and not checks["division"]("35010")


@settings(max_examples=60, deadline=None)
@given(st.text(USCC_ALPHABET, min_size=17, max_size=17), st.integers(0, 16), st.data())
def test_uscc_corruptions_are_caught_as_check_character(
    first17: str, pos: int, data: st.DataObject
) -> None:
    code = first17 + uscc_check_char(first17)
    assert s.format_checkers()["uscc"](code)
    other = data.draw(st.sampled_from([c for c in USCC_ALPHABET if c != code[pos]]))
    corrupted = code[:pos] + other + code[pos + 1 :]
    # One substituted character always changes the check character (GB 32100 §4.2, mod 31).
    assert s.format_rule("uscc", corrupted) == "uscc.check-character"


def test_errors_are_capped_and_never_carry_values() -> None:
    v = s.compile_schema(_schemas()["response"])
    many = {"violations": [{**VALID_RECORD, "plate": "x", "code": "0"}] * 500}
    errors = v.errors(many)
    assert len(errors) == s.MAX_ERRORS
    assert len(v.errors(many, limit=3)) == 3
    assert all("x" not in str(e.to_dict().values()) for e in errors if e.keyword == "enum")
    assert v.check_json(b"{not json") == [s.Violation("", "json", "not-json")]
    assert v.check_json(orjson.dumps({"violations": []})) == []


def test_media_types_and_content_codings() -> None:
    assert s.is_json_media_type("application/json; charset=utf-8")
    assert s.is_json_media_type("application/geo+json")
    assert not s.is_json_media_type("text/json") and not s.is_json_media_type("")
    body = b'{"a": 1}'
    assert s.decoded(gzip.compress(body), "gzip", 100) == body
    assert s.decoded(zlib.compress(body), "deflate", 100) == body
    assert s.decoded(body, "identity", 100) == body
    with pytest.raises(s.Undecodable, match="over the 100-byte"):
        s.decoded(gzip.compress(b" " * 10_000), "gzip", 100)
    with pytest.raises(s.Undecodable, match="corrupt"):
        s.decoded(b"not gzip", "gzip", 100)
    with pytest.raises(s.Undecodable, match="cannot be checked"):
        s.decoded(body, "br", 100)
    # A second gzip member or trailing bytes would reach the client unchecked.
    for smuggled in (
        gzip.compress(b"[]") + gzip.compress(b"NOT CHECKED"),
        gzip.compress(b"[]") + b"x",
    ):
        with pytest.raises(s.Undecodable, match="cannot see"):
            s.decoded(smuggled, "gzip", 100)
    with pytest.raises(s.Undecodable, match="cannot see"):
        s.decoded(gzip.compress(body)[:-4], "gzip", 100)  # truncated: no end of stream


def _reference(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    checker = jsonschema.FormatChecker()
    if "date-time" not in checker.checkers:  # needs rfc3339-validator, which is not installed
        checker.checks("date-time")(_rfc3339)
    for name, fn in s.format_checkers().items():
        checker.checks(name)(fn)
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return value[10:11] in ("T", "t") and parsed.tzinfo is not None


def test_a_stream_has_an_event_schema_that_is_the_record_schema() -> None:
    spec, elements, lists = violation_catalog()
    assert "event" not in s.derive_schemas(spec, elements, lists)
    key = next(i.field for i in spec.items if i.required)
    streamed = ResourceSpec.model_validate(
        {
            **spec.model_dump(),
            "sharing_methods": [*[m.value for m in spec.sharing_methods], "events"],
            "stream": {"partition_key": key},
        }
    )
    schemas = s.derive_schemas(streamed, elements, lists)
    event = schemas["event"]
    assert event["$id"].endswith(":event") and event["title"].endswith("事件")
    record = _record_schema(schemas["response"])
    assert {k: v for k, v in event.items() if k not in ("$id", "$schema", "title")} == {
        k: v for k, v in record.items() if k != "title"
    }
    validator = s.compile_schema(event)
    assert validator.check_json(orjson.dumps(VALID_RECORD)) == []
    assert validator.check_json(orjson.dumps({**VALID_RECORD, "extra": 1}))
