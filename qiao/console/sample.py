"""A masked sample for a resource's page: one fictional record, as an agreement delivers it.

A person deciding whether to apply for a resource wants to see what a record looks like, and
what of it is hidden. ``sample_record`` makes one record from the catalog alone — a value per
item from its data element's named format, type, code list, lengths and pattern — and
``masked_sample`` passes it through the masking an agreement gets by default
(``qiao.agreements.service.default_masking``, the same selection the hub uses when it makes an
agreement) and the node's masking engine (``qiao.agreements.masking``).

Every value is fixed and obviously fictional (张三, 13800000000, zhang.san@example.cn), never
drawn from a backend: the page shows the shape of the data, and no person's data. Identifiers
with check characters are built so that they pass the catalog's own validators (GB 11643,
GB 32100, GA 36), so the record validates against the resource's derived response schema
(tests/console/test_sample.py checks this for every resource of the demo catalog).

Records are flat (an item's field is one JSON member, ``spec.FIELD_NAME``), so a sample has
no nested objects or arrays. A string element with a ``pattern`` gets the first of a few
fixed candidates that matches it (the catalog's patterns are identifier alphabets such as
``^[0-9A-Z]+$``); Qiao does not generate strings from arbitrary regular expressions, so for
a pattern none of them matches the sample keeps the item's name and does not validate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from qiao.agreements.masking import compile_masking
from qiao.agreements.service import default_masking
from qiao.catalog.spec import CodeList, DataElement, ElementType, Format, Item, ResourceSpec
from qiao.catalog.validators import citizen_id_check_char, org_code_check_char, uscc_check_char

__all__ = ["SAMPLE_REGION", "masked_fields", "masked_sample", "sample_record"]

# The demo city's GB/T 2260 code (qiao.demo.city.REGION; a test keeps them equal), so the
# sample's identifiers look like the demo's own records.
SAMPLE_REGION: Final = "440300"
# Fixed, so the page shows the same pseudonyms every time; no agreement uses this key, so a
# sample's pseudonym never equals one a consumer receives.
SAMPLE_PSEUDONYM_KEY: Final = b"qiao-console-masked-sample/1"

_NAME: Final = "张三"
_ADDRESS: Final = "桥城市鼓楼区示例路1号"
_EMAIL: Final = "zhang.san@example.cn"
_BANK_CARD: Final = "6222020000000000000"


def _citizen_id() -> str:
    # GB 11643-1999: region, birth date 1990-01-01, sequence 123 (odd: male, §4.3), then the
    # ISO 7064 MOD 11-2 check character.
    first17 = f"{SAMPLE_REGION}19900101123"
    return first17 + citizen_id_check_char(first17)


def _uscc() -> str:
    # GB 32100-2015: 9 (market regulation) 1 (enterprise), region, a GB 11714 organization
    # code with its own check character, then the code's check character.
    body = "MA000000"
    first17 = f"91{SAMPLE_REGION}{body}{org_code_check_char(body)}"
    return first17 + uscc_check_char(first17)


_BY_FORMAT: Final[dict[Format, str]] = {
    Format.CITIZEN_ID: _citizen_id(),
    Format.USCC: _uscc(),
    # GA 36: 粤B, the issuing authority of the demo region's plates (桥 is no province
    # abbreviation, so a 桥A plate would fail the plate format).
    Format.PLATE: "粤B12345",
    Format.MOBILE: "13800000000",
    Format.DIVISION: SAMPLE_REGION,
}
# Strings without a named format whose data element is known by its name (GB/T 19488 names
# are the catalog's vocabulary): the element's name contains the key.
_BY_ELEMENT_NAME: Final[tuple[tuple[str, str], ...]] = (
    ("姓名", _NAME),
    ("地址", _ADDRESS),
    ("住所", _ADDRESS),
    ("电子邮件", _EMAIL),
    ("电子邮箱", _EMAIL),
    ("银行卡", _BANK_CARD),
    ("银行账号", _BANK_CARD),
)
# Tried, in order, for a pattern the item's name does not match: the identifier shapes the
# catalog's patterns describe (digits, upper-case letters and digits, lower-case words).
_PATTERN_CANDIDATES: Final = ("20261101000001", "A0001", "sample", "SAMPLE", "0")

_BY_TYPE: Final[dict[ElementType, Any]] = {
    ElementType.INTEGER: 1,
    ElementType.NUMBER: 1.5,
    ElementType.BOOLEAN: True,
    ElementType.DATE: "2026-11-01",  # RFC 3339 full-date
    ElementType.DATETIME: "2026-11-01T09:30:00+08:00",  # RFC 3339 date-time, China time
    # JSON Schema's "time" is RFC 3339 full-time, which carries the offset (§5.6).
    ElementType.TIME: "09:30:00+08:00",
}


def _fits(value: str, element: DataElement) -> bool:
    if element.min_length is not None and len(value) < element.min_length:
        return False
    if element.max_length is not None and len(value) > element.max_length:
        return False
    # JSON Schema's pattern is not anchored (draft 2020-12 validation §6.3.3): search.
    return element.pattern is None or re.search(element.pattern, value) is not None


def _string(item: Item, element: DataElement) -> str:
    if element.format is not None:
        return _BY_FORMAT[element.format]
    known = [value for key, value in _BY_ELEMENT_NAME if key in element.name]
    named = f"示例{item.name}"
    # Last resort for lengths the others miss: the name cut or padded to fit.
    fitted = named[: element.max_length].ljust(element.min_length or 0, "〇")
    for candidate in (*known, named, *_PATTERN_CANDIDATES, fitted):
        if _fits(candidate, element):
            return candidate
    return named


def _value(item: Item, element: DataElement, lists: Mapping[str, CodeList]) -> Any:
    if element.code_list is not None:
        codes = lists.get(element.code_list)
        if codes is None:
            raise ValueError(
                f"data element {element.identifier} names unknown code list {element.code_list!r}"
            )
        first = codes.codes[0].value
        # As the derived schema compares them: a numeric element's codes are numbers.
        if element.type is ElementType.INTEGER:
            return int(first)
        if element.type is ElementType.NUMBER:
            return float(first)
        return first
    if element.type is ElementType.STRING:
        return _string(item, element)
    return _BY_TYPE[element.type]


def sample_record(
    spec: ResourceSpec, elements: Mapping[str, DataElement], lists: Mapping[str, CodeList]
) -> dict[str, Any]:
    """One fictional record of ``spec``: a value for every item, optional ones included, so
    the sample shows every field. Raises ``ValueError``, as ``derive_schemas`` does, when an
    item binds an unknown data element or code list: there is no type to make a value of."""
    record: dict[str, Any] = {}
    for item in spec.items:
        element = elements.get(item.element)
        if element is None:
            raise ValueError(f"item {item.field!r} binds unknown data element {item.element!r}")
        record[item.field] = _value(item, element, lists)
    return record


def masked_sample(
    spec: ResourceSpec, elements: Mapping[str, DataElement], lists: Mapping[str, CodeList]
) -> dict[str, Any]:
    """The sample record as an agreement with the default masking delivers it: every field
    (no projection), personal items masked by the rule of their format."""
    masker = compile_masking(None, default_masking(spec.items, elements), SAMPLE_PSEUDONYM_KEY)
    masked: dict[str, Any] = masker.apply(sample_record(spec, elements, lists))
    return masked


def masked_fields(spec: ResourceSpec, elements: Mapping[str, DataElement]) -> tuple[str, ...]:
    """The fields the default masking masks, in the order of the items."""
    return tuple(default_masking(spec.items, elements))
