"""Qiao's shipped data standards are consistent and say what the national standards say."""

from __future__ import annotations

import re

from qiao.catalog.spec import Catalog, ElementType, Format, Sensitivity
from qiao.catalog.standards import CODE_LISTS, DATA_ELEMENTS, standard_catalog

ELEMENTS = {e.identifier: e for e in DATA_ELEMENTS}
LISTS = {c.identifier: c for c in CODE_LISTS}


def test_the_bundle_is_a_valid_catalog_with_unique_identifiers() -> None:
    bundle = standard_catalog()
    assert isinstance(bundle, Catalog) and bundle is standard_catalog()
    assert len(ELEMENTS) == len(DATA_ELEMENTS) and len(LISTS) == len(CODE_LISTS)
    assert all(re.fullmatch(r"DE\d{4}", i) for i in ELEMENTS)
    # Numbers are handed out in order and never skipped (a gap would be a removed meaning).
    assert sorted(ELEMENTS) == [f"DE{n:04d}" for n in range(1, len(ELEMENTS) + 1)]


def test_every_code_list_an_element_names_is_shipped() -> None:
    for e in DATA_ELEMENTS:
        assert e.code_list is None or e.code_list in LISTS, e.identifier


def test_sex_codes_are_gbt_2261_1() -> None:
    sex = LISTS["GB/T 2261.1"]
    assert {c.value: c.label for c in sex.codes} == {
        "0": "未知的性别",
        "1": "男性",
        "2": "女性",
        "9": "未说明的性别",
    }


def test_formatted_elements_have_the_lengths_of_their_standard() -> None:
    lengths = {
        Format.CITIZEN_ID: (18, 18),
        Format.USCC: (18, 18),
        Format.MOBILE: (11, 11),
        Format.DIVISION: (6, 6),
        Format.PLATE: (7, 8),
    }
    seen = set()
    for e in DATA_ELEMENTS:
        if e.format:
            assert (e.min_length, e.max_length) == lengths[e.format], e.identifier
            assert e.type is ElementType.STRING
            seen.add(e.format)
    assert seen == set(Format)


def test_sensitivity_and_personal_information() -> None:
    citizen_id = next(e for e in DATA_ELEMENTS if e.format is Format.CITIZEN_ID)
    assert citizen_id.sensitivity is Sensitivity.IMPORTANT and citizen_id.personal
    for name in ("姓名", "出生日期", "移动电话号码", "机动车号牌号码", "身份核验结果"):
        assert next(e for e in DATA_ELEMENTS if e.name == name).personal, name
    for name in ("统一社会信用代码", "单位名称", "新增确诊病例数", "站点编号"):
        assert not next(e for e in DATA_ELEMENTS if e.name == name).personal, name


def test_every_element_has_names_in_both_languages_and_a_definition() -> None:
    for e in DATA_ELEMENTS:
        assert e.name and e.name_en and e.definition.endswith("。"), e.identifier
