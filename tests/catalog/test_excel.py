"""The Excel template: round trips, and every kind of bad workbook reported row by row."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import date
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qiao.catalog import excel
from qiao.catalog.excel import (
    CODE_LISTS,
    ELEMENTS,
    INSTRUCTIONS,
    ITEMS,
    PARAMETERS,
    RESOURCES,
    SHEETS,
    WorkbookError,
    WorkbookErrors,
    read_workbook,
    template,
    write_workbook,
)
from qiao.catalog.spec import (
    Catalog,
    Classification,
    Code,
    CodeList,
    DataElement,
    ElementType,
    Format,
    Item,
    Openness,
    ResourceSpec,
    ResourceStatus,
    Sensitivity,
    SharingMethod,
    SharingType,
    StreamSpec,
    UpdateCycle,
)
from qiao.catalog.standards import standard_catalog
from qiao.catalog.validators import USCC_ALPHABET, uscc_check_char
from qiao.demo.catalog import demo_catalog
from qiao.demo.city import org_codes

STANDARDS = standard_catalog()
DEMO = Catalog(
    code_lists=STANDARDS.code_lists,
    data_elements=STANDARDS.data_elements,
    resources=demo_catalog(org_codes()).resources,
)
DEMO_BYTES = write_workbook(DEMO)


def edited(change: Callable[[Any], None], data: bytes = DEMO_BYTES) -> bytes:
    wb = openpyxl.load_workbook(io.BytesIO(data))
    change(wb)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def errors_of(data: bytes, **known: Any) -> list[WorkbookError]:
    with pytest.raises(WorkbookErrors) as e:
        read_workbook(data, **known)
    assert e.value.errors
    return e.value.errors


def row_of(wb: Any, sheet: str, column: int, value: str) -> int:
    for row in wb[sheet].iter_rows(min_row=3):
        if row[column - 1].value == value:
            return int(row[0].row)
    raise AssertionError(f"{value} not in {sheet}")


# --- round trips -----------------------------------------------------------------------------


def test_the_demo_catalog_round_trips() -> None:
    assert read_workbook(DEMO_BYTES) == DEMO


def test_the_empty_template_reads_as_an_empty_catalog() -> None:
    assert read_workbook(template()) == Catalog()


def test_the_template_has_instructions_headers_keys_and_drop_downs() -> None:
    wb = openpyxl.load_workbook(io.BytesIO(template()))
    assert wb.sheetnames == [INSTRUCTIONS, *SHEETS]
    ws = wb[RESOURCES]
    assert [c.value for c in ws[1]] == [c.header for c in SHEETS[RESOURCES]]
    assert [c.value for c in ws[2]] == [c.key for c in SHEETS[RESOURCES]]
    lists = {str(dv.sqref).split(":")[0]: dv for dv in ws.data_validations.dataValidation}
    sharing = lists["I3"]  # 共享类型
    assert sharing.formula1 == '"无条件共享,有条件共享,不予共享"'
    instructions = "\n".join(
        " ".join(str(v) for v in row if v) for row in wb[INSTRUCTIONS].iter_rows(values_only=True)
    )
    for sheet, columns in SHEETS.items():
        for col in columns:
            assert col.header in instructions and col.key in instructions, (sheet, col.key)


def test_codes_with_leading_zeros_and_formula_like_text_stay_text() -> None:
    tricky = Catalog(
        code_lists=(
            CodeList(
                identifier="T-1",
                name='=HYPERLINK("http://x")',
                codes=(Code(value="01", label="+1"), Code(value="007", label="@x")),
            ),
        )
    )
    data = write_workbook(tricky)
    wb = openpyxl.load_workbook(io.BytesIO(data))
    assert wb[CODE_LISTS]["B3"].data_type == "s"
    assert read_workbook(data) == tricky


def test_numbers_and_dates_typed_as_excel_values_are_understood() -> None:
    def retype(wb: Any) -> None:
        ws = wb[RESOURCES]
        ws.cell(3, 15).value = date(2026, 11, 1)  # 发布日期 as a real date cell
        ws = wb[CODE_LISTS]
        r = row_of(wb, CODE_LISTS, 5, "1")
        ws.cell(r, 5).value = 1  # 代码值 typed as a number

    back = read_workbook(edited(retype))
    assert back.resources[0].published_on == date(2026, 11, 1)
    assert "1" in {c.value for c in back.code_lists[0].codes}


ident = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=1, max_size=10)
field = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
# Text a steward types: CJK, Latin and punctuation, but no list separators (；;) or newlines,
# and no control characters (which .xlsx cannot hold).
words = (
    st.text(
        st.characters(
            whitelist_categories=("Lo", "Lu", "Ll", "Nd", "Zs", "Pd", "Ps", "Pe"),
            max_codepoint=0x9FFF,
        ),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)
optional = st.one_of(st.just(""), words)
usccs = st.text(USCC_ALPHABET, min_size=17, max_size=17).map(lambda s: s + uscc_check_char(s))


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    list_ids = draw(st.lists(ident.map(lambda s: "L-" + s), max_size=3, unique=True))
    lists = tuple(
        CodeList(
            identifier=i,
            name=draw(words),
            name_en=draw(optional),
            standard=draw(optional),
            codes=tuple(
                Code(value=v, label=draw(words), label_en=draw(optional))
                for v in draw(st.lists(ident, min_size=1, max_size=4, unique=True))
            ),
        )
        for i in list_ids
    )
    element_ids = draw(st.lists(ident.map(lambda s: "DE" + s), min_size=1, max_size=5, unique=True))
    elements = []
    for i in element_ids:
        type_ = draw(st.sampled_from(ElementType))
        string = type_ is ElementType.STRING
        elements.append(
            DataElement(
                identifier=i,
                name=draw(words),
                name_en=draw(optional),
                definition=draw(words),
                type=type_,
                format=draw(st.sampled_from([None, *Format])) if string else None,
                max_length=draw(st.one_of(st.none(), st.integers(1, 999))) if string else None,
                code_list=draw(st.sampled_from([None, *list_ids])) if string else None,
                sensitivity=draw(st.sampled_from(Sensitivity)),
                personal=draw(st.booleans()),
            )
        )
    codes = draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), max_size=3, unique=True)
    )
    resources = []
    for code in codes:
        sharing = draw(st.sampled_from(SharingType))
        items = tuple(
            Item(
                field=f,
                name=draw(words),
                element=draw(st.sampled_from(element_ids)),
                required=draw(st.booleans()),
                description=draw(optional),
            )
            for f in draw(st.lists(field, min_size=1, max_size=4, unique=True))
        )
        params = tuple(
            Item(field=f, name=draw(words), element=draw(st.sampled_from(element_ids)))
            for f in draw(st.lists(field, max_size=2, unique=True))
        )
        methods = tuple(
            draw(st.lists(st.sampled_from(SharingMethod), min_size=1, max_size=3, unique=True))
        )
        # Shared as events: the stream is keyed by a required item (one is made required).
        stream = None
        if SharingMethod.EVENTS in methods:
            items = (items[0].model_copy(update={"required": True}), *items[1:])
            stream = StreamSpec(
                partition_key=items[0].field, retention_hours=draw(st.integers(1, 24 * 366))
            )
        resources.append(
            ResourceSpec(
                code=code,
                name=draw(words),
                name_en=draw(optional),
                provider=draw(usccs),
                abstract=draw(words),
                classification=draw(st.sampled_from(Classification)),
                items=items,
                parameters=params,
                records_at=draw(st.sampled_from(["", "/records", "/data/items"])),
                sharing_type=sharing,
                sharing_conditions=draw(words) if sharing is SharingType.CONDITIONAL else "",
                legal_basis=draw(words) if sharing is not SharingType.UNCONDITIONAL else "",
                sharing_methods=methods,
                stream=stream,
                openness=draw(st.sampled_from(Openness)),
                update_cycle=draw(st.sampled_from(UpdateCycle)),
                published_on=draw(st.one_of(st.none(), st.dates(date(2000, 1, 1)))),
                related=tuple(draw(st.lists(st.sampled_from(codes), max_size=2, unique=True))),
                keywords=tuple(draw(st.lists(words, max_size=3))),
                version=draw(st.integers(0, 50)),
                status=draw(st.sampled_from(ResourceStatus)),
            )
        )
    return Catalog(code_lists=lists, data_elements=tuple(elements), resources=tuple(resources))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs())
def test_generated_catalogs_round_trip(catalog: Catalog) -> None:
    assert read_workbook(write_workbook(catalog)) == catalog


# --- not a workbook, too big -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"PK\x03\x04 broken zip", "代码集,数据元\n".encode()],
    ids=["empty", "text", "broken-zip", "csv"],
)
def test_not_an_xlsx_at_all(data: bytes) -> None:
    [error] = errors_of(data)
    assert "not an Excel workbook" in error.problem and error.row == 0


def test_a_zip_without_a_workbook() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("hello.txt", "hi")
    [error] = errors_of(out.getvalue())
    assert "zip without a workbook" in error.problem


def test_an_oversized_file_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "MAX_BYTES", 1000)
    [error] = errors_of(DEMO_BYTES)
    assert "limit is 1000 bytes" in error.problem


def test_a_zip_bomb_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "MAX_UNZIPPED_BYTES", 10_000)
    [error] = errors_of(DEMO_BYTES)
    assert "unpacks to" in error.problem


def test_too_many_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "MAX_ROWS", 10)
    errors = errors_of(DEMO_BYTES)
    assert any(e.sheet == ELEMENTS and "more than 10 rows" in e.problem for e in errors)


# --- sheets and headers ----------------------------------------------------------------------


def test_renamed_header_is_named_by_column() -> None:
    def rename(wb: Any) -> None:
        wb[ELEMENTS]["A1"] = "标识"

    # Only the header: the items' elements are not reported unknown because of it.
    [error] = errors_of(edited(rename))
    assert error == WorkbookError(
        ELEMENTS, 1, "A 数据元标识", "column A must be headed '数据元标识'; found '标识'"
    )


def test_missing_key_row_and_extra_column() -> None:
    def change(wb: Any) -> None:
        wb[RESOURCES]["B2"] = None
        wb[ITEMS]["G1"] = "备注"

    errors = errors_of(edited(change))
    assert (
        WorkbookError(
            RESOURCES, 2, "B 资源名称", "row 2 of column B must hold the key 'name'; it is empty"
        )
        in errors
    )
    assert any(
        e.sheet == ITEMS and e.column == "G 备注" and "unknown column" in e.problem for e in errors
    )


def test_a_missing_column_shifts_every_header_after_it() -> None:
    def drop(wb: Any) -> None:
        wb[CODE_LISTS].delete_cols(3)

    errors = errors_of(edited(drop))
    assert {e.column for e in errors if e.row == 1} >= {"C 英文名称", "D 来源标准", "G 英文含义"}


def test_missing_and_unknown_sheets() -> None:
    def change(wb: Any) -> None:
        wb[ELEMENTS].title = "数据元素"

    errors = errors_of(edited(change))
    assert WorkbookError(ELEMENTS, 0, "", "sheet '数据元' is missing") in errors
    assert any(e.sheet == "数据元素" and "unknown sheet" in e.problem for e in errors)


def test_a_workbook_without_parameters_sheet_is_fine() -> None:
    def drop(wb: Any) -> None:
        del wb[PARAMETERS]

    only_items = Catalog(
        code_lists=DEMO.code_lists,
        data_elements=DEMO.data_elements,
        resources=tuple(r for r in DEMO.resources if not r.parameters),
    )
    assert read_workbook(edited(drop, write_workbook(only_items))) == only_items


def test_merged_cells() -> None:
    def merge(wb: Any) -> None:
        wb[RESOURCES].merge_cells("E3:E4")

    errors = errors_of(edited(merge))
    assert (
        WorkbookError(
            RESOURCES, 3, "E 资源摘要", "merged cells E3:E4: unmerge them and fill in every cell"
        )
        in errors
    )


# --- cells -----------------------------------------------------------------------------------


def test_empty_required_cells_are_each_reported() -> None:
    def blank(wb: Any) -> None:
        wb[ELEMENTS]["D5"] = None  # 定义
        wb[RESOURCES]["B4"] = "   "  # 资源名称, only spaces
        wb[ITEMS]["D3"] = None  # 数据元标识

    errors = errors_of(edited(blank))
    assert WorkbookError(ELEMENTS, 5, "D 定义", "定义 is required") in errors
    assert WorkbookError(RESOURCES, 4, "B 资源名称", "资源名称 is required") in errors
    assert WorkbookError(ITEMS, 3, "D 数据元标识", "数据元标识 is required") in errors


def test_duplicated_identifiers_and_codes() -> None:
    def dup(wb: Any) -> None:
        wb[ELEMENTS]["A4"] = wb[ELEMENTS]["A3"].value
        wb[RESOURCES]["A4"] = wb[RESOURCES]["A3"].value
        cl = wb[CODE_LISTS]
        cl["E4"] = cl["E3"].value  # a second 0 in GB/T 2261.1

    errors = errors_of(edited(dup))
    assert (
        WorkbookError(
            ELEMENTS, 4, "A 数据元标识", "data element 'DE0001' is already defined at row 3"
        )
        in errors
    )
    assert (
        WorkbookError(
            RESOURCES,
            4,
            "A 资源代码",
            f"resource {DEMO.resources[0].code!r} is already defined at row 3",
        )
        in errors
    )
    assert (
        WorkbookError(CODE_LISTS, 4, "E 代码值", "code '0' is already in this code list at row 3")
        in errors
    )


def test_a_code_list_split_in_two_blocks_is_a_duplicate() -> None:
    def split(wb: Any) -> None:
        ws = wb[CODE_LISTS]
        last = ws.max_row + 1
        ws.cell(last, 1, "GB/T 2261.1")
        ws.cell(last, 2, "人的性别代码")
        ws.cell(last, 5, "5")
        ws.cell(last, 6, "其他")

    errors = errors_of(edited(split))
    assert [e.problem for e in errors] == [
        "code list 'GB/T 2261.1' is already defined from row 3; keep its rows together"
    ]


def test_unknown_data_elements_and_code_lists() -> None:
    def unknown(wb: Any) -> None:
        wb[ITEMS]["D3"] = "DE9999"
        wb[ELEMENTS]["J5"] = "NO-SUCH-LIST"

    errors = errors_of(edited(unknown))
    assert (
        WorkbookError(
            ITEMS,
            3,
            "D 数据元标识",
            "unknown data element 'DE9999': define it in sheet 数据元 or publish it first",
        )
        in errors
    )
    assert any(
        e.sheet == ELEMENTS
        and e.row == 5
        and e.column == "J 代码集"
        and "unknown code list 'NO-SUCH-LIST'" in e.problem
        for e in errors
    )


def test_elements_and_lists_known_to_the_catalog_count() -> None:
    resources_only = Catalog(resources=DEMO.resources)
    data = write_workbook(resources_only)
    errors = errors_of(data)
    assert len(errors) == sum(len(r.items) + len(r.parameters) for r in DEMO.resources)
    assert all("unknown data element" in e.problem for e in errors)
    known = {e.identifier for e in DEMO.data_elements}
    assert read_workbook(data, known_elements=known) == resources_only


def test_invalid_choices_name_what_is_allowed() -> None:
    def bad(wb: Any) -> None:
        wb[RESOURCES]["I3"] = "部分共享"  # 共享类型
        wb[RESOURCES]["L4"] = "接口调用；邮寄光盘"  # 共享方式
        wb[ELEMENTS]["E3"] = "文本"  # 数据类型
        wb[ITEMS]["E3"] = "也许"  # 必填

    errors = errors_of(edited(bad))
    assert (
        WorkbookError(
            RESOURCES, 3, "I 共享类型", "'部分共享' is not one of: 无条件共享、有条件共享、不予共享"
        )
        in errors
    )
    assert (
        WorkbookError(
            RESOURCES, 4, "L 共享方式", "'邮寄光盘' is not one of: 接口调用、事件订阅、数据集"
        )
        in errors
    )
    assert any(e.sheet == ELEMENTS and e.column == "E 数据类型" for e in errors)
    assert WorkbookError(ITEMS, 3, "E 必填", "'也许' must be 是 or 否") in errors


def test_choices_are_accepted_as_codes_too() -> None:
    def codes(wb: Any) -> None:
        wb[RESOURCES]["I4"] = "unconditional"
        wb[RESOURCES]["L4"] = "service;dataset"

    back = read_workbook(edited(codes))
    assert back.resources[1].sharing_type is SharingType.UNCONDITIONAL
    assert back.resources[1].sharing_methods == (SharingMethod.SERVICE, SharingMethod.DATASET)


def test_conditional_or_unshared_resource_without_legal_basis() -> None:
    codes = [r.code for r in DEMO.resources]
    vv, ta, iv = (
        3 + codes.index(c)
        for c in ("vehicle-violations", "traffic-accidents", "identity-verification")
    )

    def strip(wb: Any) -> None:
        ws = wb[RESOURCES]
        ws[f"K{vv}"] = None  # vehicle-violations is conditional: legal basis removed
        ws[f"I{ta}"] = "不予共享"  # traffic-accidents becomes not shared, without legal basis
        ws[f"J{iv}"] = None  # identity-verification: conditions removed

    errors = errors_of(edited(strip))
    assert (
        WorkbookError(
            RESOURCES, vv, "K 共享依据", "a 有条件共享 resource needs its legal basis (legal_basis)"
        )
        in errors
    )
    assert (
        WorkbookError(
            RESOURCES, ta, "K 共享依据", "a 不予共享 resource needs its legal basis (legal_basis)"
        )
        in errors
    )
    assert (
        WorkbookError(
            RESOURCES, iv, "J 共享条件", "a 有条件共享 resource needs its sharing conditions"
        )
        in errors
    )


def test_provider_with_a_wrong_check_character() -> None:
    good = DEMO.resources[0].provider
    wrong = good[:17] + ("0" if good[17] != "0" else "1")

    def corrupt(wb: Any) -> None:
        wb[RESOURCES]["D3"] = wrong

    [error] = errors_of(edited(corrupt))
    assert error.sheet == RESOURCES and error.row == 3 and error.column == "D 提供方代码"
    assert "check character should be" in error.problem


def test_items_of_unknown_resources_and_resources_without_items() -> None:
    def orphan(wb: Any) -> None:
        ws = wb[ITEMS]
        for row in ws.iter_rows(min_row=3):
            if row[0].value == "bike-stations":
                row[0].value = "bike-station"

    errors = errors_of(edited(orphan))
    assert any(e.sheet == ITEMS and "no resource 'bike-station'" in e.problem for e in errors)
    assert any(
        e.sheet == RESOURCES
        and e.column == "A 资源代码"
        and "has no rows in sheet 信息项" in e.problem
        for e in errors
    )


def test_bad_values_caught_by_the_spec_name_their_column() -> None:
    def bad(wb: Any) -> None:
        wb[RESOURCES]["A3"] = "Vehicle Violations"  # not a resource code
        wb[ITEMS]["B4"] = "Plate-No"  # not a field name
        wb[RESOURCES]["O4"] = "2026-02-30"  # not a date
        wb[ELEMENTS]["G4"] = "seven"  # min length

    errors = errors_of(edited(bad))
    cols = {(e.sheet, e.row, e.column) for e in errors}
    assert (RESOURCES, 3, "A 资源代码") in cols
    assert (ITEMS, 4, "B 字段名") in cols
    assert (RESOURCES, 4, "O 发布日期") in cols
    assert (ELEMENTS, 4, "G 最小长度") in cols


def test_all_errors_are_collected_in_one_pass() -> None:
    def many(wb: Any) -> None:
        wb[PARAMETERS]["A1"] = "x"  # headers of one sheet
        wb[RESOURCES]["D3"] = "123"  # a provider
        wb[ITEMS]["D5"] = "DE9999"  # an item
        wb[CODE_LISTS]["F3"] = None  # a code's label

    sheets = {e.sheet for e in errors_of(edited(many))}
    assert sheets >= {PARAMETERS, RESOURCES, ITEMS, CODE_LISTS}


def test_error_report_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "MAX_ERRORS", 3)

    def blank(wb: Any) -> None:
        for row in wb[ELEMENTS].iter_rows(min_row=3):
            row[3].value = None

    errors = errors_of(edited(blank))
    assert len(errors) == 4 and errors[-1].problem.endswith("more errors not listed")


def test_the_documentation_describes_every_column() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "catalog-template.md").read_text("utf-8")
    for sheet, columns in SHEETS.items():
        assert f"### {sheet}" in doc
        for col in columns:
            assert f"| {col.header} | `{col.key}` |" in doc, (sheet, col.key)


def test_an_entity_expansion_bomb_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + ']><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        "<sheets><sheet name='&lol9;' sheetId='1'/></sheets></workbook>"
    )
    src = zipfile.ZipFile(io.BytesIO(DEMO_BYTES))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            body = bomb.encode() if info.filename == "xl/workbook.xml" else src.read(info)
            zf.writestr(info.filename, body)
    [error] = errors_of(out.getvalue())
    assert error.problem.startswith("the workbook cannot be read")


def test_an_overlong_cell_is_reported() -> None:
    def long(wb: Any) -> None:
        wb[RESOURCES]["E3"] = "长" * (excel.MAX_CELL_CHARS + 1)

    errors = errors_of(edited(long))
    assert WorkbookError(RESOURCES, 3, "E 资源摘要", "longer than 4000 characters") in errors
