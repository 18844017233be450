"""The Excel catalog template (目录编制模板): read, write, and the empty template.

Catalogs in Chinese government are compiled in Excel, sheet by sheet, by data stewards who
are not programmers. So the reader is strict and helpful at once: it checks every sheet, row
and cell, collects *every* problem with the sheet, the row number Excel shows and the column
("C 数据元标识"), and raises them together, so a steward fixes a file in one pass; it never
returns part of a catalog. The template is described column by column in
docs/catalog-template.md; the same definitions below also write the template's 填写说明 sheet.

Layout of each data sheet: row 1 the Chinese headers, row 2 the English keys (grey), data
from row 3. Choices are written with their Chinese labels (有条件共享) and accepted as labels
or codes (``spec.parse_choice``).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import openpyxl
from openpyxl.comments import Comment
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet
from pydantic import ValidationError

from qiao.catalog import validators
from qiao.catalog.spec import (
    LABELS_ZH,
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
    UpdateCycle,
    parse_choice,
)

__all__ = [
    "MAX_BYTES",
    "MAX_ROWS",
    "SHEETS",
    "Column",
    "WorkbookError",
    "WorkbookErrors",
    "read_workbook",
    "template",
    "write_workbook",
]

# Limits: a city's whole catalog is a few thousand rows; these leave room for a province
# and keep a hostile upload from exhausting the hub (an .xlsx is a zip: its members are
# checked before anything is parsed).
MAX_BYTES = 10 * 1024 * 1024
MAX_UNZIPPED_BYTES = 100 * 1024 * 1024
MAX_ROWS = 50_000  # data rows per sheet
MAX_ERRORS = 500  # a report longer than this is not read; say so instead
MAX_CELL_CHARS = 4000

FIRST_DATA_ROW = 3
SEPARATORS = re.compile(r"[;；\n]")

# Chinese labels for choices that spec.LABELS_ZH does not name.
TYPE_LABELS = {
    ElementType.STRING: "字符型",
    ElementType.INTEGER: "整数型",
    ElementType.NUMBER: "数值型",
    ElementType.BOOLEAN: "布尔型",
    ElementType.DATE: "日期型",
    ElementType.DATETIME: "日期时间型",
    ElementType.TIME: "时间型",
}
FORMAT_LABELS = {
    Format.CITIZEN_ID: "公民身份号码",
    Format.USCC: "统一社会信用代码",
    Format.PLATE: "机动车号牌号码",
    Format.MOBILE: "移动电话号码",
    Format.DIVISION: "行政区划代码",
}
STATUS_LABELS = {ResourceStatus.PUBLISHED: "已发布", ResourceStatus.DEPRECATED: "已废止"}
YES, NO = "是", "否"
_TRUE = {"是", "true", "yes", "y", "1", "必填"}
_FALSE = {"否", "false", "no", "n", "0", "选填"}


@dataclass(frozen=True)
class WorkbookError:
    """One problem in a workbook: where (as Excel shows it) and what, in a sentence."""

    sheet: str
    row: int  # 0 when the problem is the sheet itself
    column: str  # e.g. "C 数据元标识"; "" for a whole row or sheet
    problem: str


class WorkbookErrors(ValueError):
    """A workbook that cannot be imported; ``errors`` lists every problem found."""

    def __init__(self, errors: list[WorkbookError]) -> None:
        self.errors = errors
        where = ""
        if errors:
            e = errors[0]
            where = f" (first: {e.sheet} row {e.row} {e.column}: {e.problem})"
        super().__init__(f"{len(errors)} error(s) in the workbook{where}")


@dataclass(frozen=True)
class Column:
    key: str  # the English key (row 2) and the field in spec
    header: str  # the Chinese header (row 1)
    required: bool
    description: str
    example: str = ""
    choices: tuple[str, ...] = ()  # Chinese labels offered in the drop-down
    width: int = 16
    # Added to the template after its first release: a workbook made from an earlier template
    # may lack the column (only at the end of its sheet), and reads as if it were empty.
    since_v2: bool = False


def _labels(kind: type[StrEnum]) -> tuple[str, ...]:
    return tuple(LABELS_ZH[kind][m.value] for m in kind)


CODE_LISTS = "代码集"
ELEMENTS = "数据元"
RESOURCES = "信息资源"
ITEMS = "信息项"
PARAMETERS = "请求参数"
INSTRUCTIONS = "填写说明"

_ITEM_COLUMNS = (
    Column("resource", "资源代码", True, "所属信息资源的资源代码", "vehicle-violations", width=22),
    Column("field", "字段名", True, "记录中的字段名:小写字母开头,字母、数字、下划线", "plate"),
    Column("name", "信息项名称", True, "信息项的中文名称", "号牌号码"),
    Column("element", "数据元标识", True, "绑定的数据元标识(本文件或目录中已有)", "DE0008"),
    Column("required", "必填", True, "是否必有此字段", YES, (YES, NO), width=8),
    Column("description", "说明", False, "补充说明", "", width=30),
)

SHEETS: dict[str, tuple[Column, ...]] = {
    CODE_LISTS: (
        Column("identifier", "代码集标识", True, "代码集的标识,每行一个代码值", "GB/T 2261.1"),
        Column("name", "代码集名称", True, "首行必填,同一代码集的后续行可留空", "人的性别代码"),
        Column("name_en", "英文名称", False, "代码集的英文名称", "Codes for sexes of human"),
        Column("standard", "来源标准", False, "代码集依据的标准编号", "GB/T 2261.1-2003"),
        Column("value", "代码值", True, "代码值(文本,保留前导零)", "1"),
        Column("label", "代码含义", True, "代码值的中文含义", "男性"),
        Column("label_en", "英文含义", False, "代码值的英文含义", "male"),
    ),
    ELEMENTS: (
        Column("identifier", "数据元标识", True, "数据元的唯一标识", "DE0008"),
        Column("name", "中文名称", True, "数据元的中文名称", "机动车号牌号码"),
        Column("name_en", "英文名称", False, "数据元的英文名称", "Plate number"),
        Column(
            "definition",
            "定义",
            True,
            "数据元的定义(GB/T 19488.1)",
            "按 GA 36 编制的号牌号码",
            width=40,
        ),
        Column("type", "数据类型", True, "数据元的值的类型", "字符型", tuple(TYPE_LABELS.values())),
        Column(
            "format",
            "表示格式",
            False,
            "由 Qiao 校验的格式(仅字符型)",
            "机动车号牌号码",
            tuple(FORMAT_LABELS.values()),
        ),
        Column("min_length", "最小长度", False, "字符个数下限(仅字符型)", "7", width=10),
        Column("max_length", "最大长度", False, "字符个数上限(仅字符型)", "8", width=10),
        Column("pattern", "正则表达式", False, "ECMA-262 正则表达式(仅字符型)", "^[0-9A-Z]+$"),
        Column("code_list", "代码集", False, "值域所用代码集的标识", "GA 24.7"),
        Column(
            "sensitivity",
            "数据分级",
            True,
            "GB/T 43697-2024 数据级别",
            "一般",
            _labels(Sensitivity),
            width=10,
        ),
        Column("personal", "个人信息", True, "是否属于个人信息", YES, (YES, NO), width=10),
    ),
    RESOURCES: (
        Column(
            "code",
            "资源代码",
            True,
            "小写字母、数字和连字符;也是交换路径的一段",
            "vehicle-violations",
            width=22,
        ),
        Column("name", "资源名称", True, "信息资源名称", "机动车违法记录查询", width=24),
        Column("name_en", "英文名称", False, "信息资源英文名称", "Vehicle violations"),
        Column(
            "provider",
            "提供方代码",
            True,
            "提供部门的18位统一社会信用代码",
            "11440300MB2C92050A",
            width=22,
        ),
        Column(
            "abstract", "资源摘要", True, "资源内容的简要说明", "按号牌查询交通违法记录", width=40
        ),
        Column(
            "classification",
            "资源分类",
            True,
            "基础、主题或部门信息资源",
            "主题",
            _labels(Classification),
            width=10,
        ),
        Column("format", "资源格式", True, "记录的媒体类型", "application/json", width=18),
        Column(
            "records_at",
            "记录位置",
            False,
            "响应中记录所在位置(JSON Pointer),整体为记录时留空",
            "/violations",
        ),
        Column(
            "sharing_type",
            "共享类型",
            True,
            "无条件共享、有条件共享或不予共享",
            "有条件共享",
            _labels(SharingType),
            width=12,
        ),
        Column(
            "sharing_conditions", "共享条件", False, "有条件共享时必填", "仅限执法核查", width=30
        ),
        Column(
            "legal_basis",
            "共享依据",
            False,
            "有条件共享、不予共享时必填:法律法规依据",
            "《中华人民共和国道路交通安全法》",
            width=30,
        ),
        Column(
            "sharing_methods",
            "共享方式",
            True,
            "接口调用、事件订阅、数据集,多个以分号分隔",
            "接口调用",
            width=14,
        ),
        Column(
            "openness",
            "开放属性",
            True,
            "向社会开放的属性",
            "不予开放",
            _labels(Openness),
            width=12,
        ),
        Column(
            "update_cycle",
            "更新周期",
            True,
            "数据更新的频率",
            "实时",
            _labels(UpdateCycle),
            width=10,
        ),
        Column("published_on", "发布日期", False, "YYYY-MM-DD", "2026-11-01", width=12),
        Column("related", "关联资源", False, "关联资源代码,多个以分号分隔", "traffic-accidents"),
        Column("keywords", "关键词", False, "多个以分号分隔", "交通违法;机动车"),
        Column("version", "版本", False, "导出时由平台填写;新增资源留空", "", width=8),
        Column(
            "status",
            "状态",
            False,
            "已发布或已废止;留空为已发布",
            "",
            tuple(STATUS_LABELS.values()),
            width=10,
        ),
        Column(
            "stream_partition_key",
            "事件分区键",
            False,
            "共享方式含事件订阅时必填:保持事件顺序的信息项字段,如事故编号",
            "",
            width=14,
            since_v2=True,
        ),
        Column(
            "stream_retention_hours",
            "事件保留时长(小时)",
            False,
            "事件可重放的时长,留空为 168(7 天)",
            "",
            width=12,
            since_v2=True,
        ),
    ),
    ITEMS: _ITEM_COLUMNS,
    PARAMETERS: _ITEM_COLUMNS,
}
# Sheets a workbook must have; 请求参数 may be left out by resources that take none.
REQUIRED_SHEETS = (CODE_LISTS, ELEMENTS, RESOURCES, ITEMS)


# --- reading ---------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.errors: list[WorkbookError] = []

    def add(self, sheet: str, row: int, column: str, problem: str) -> None:
        self.errors.append(WorkbookError(sheet, row, column, problem))


@dataclass
class _Row:
    sheet: str
    number: int
    values: dict[str, str]
    raw: dict[str, Any]
    labels: dict[str, str]  # key -> "C 数据元标识"
    errors: _Collector
    failed: set[str] = field(default_factory=set)  # keys with a problem already reported

    def fail(self, key: str, problem: str) -> None:
        self.failed.add(key)
        self.errors.add(self.sheet, self.number, self.labels.get(key, ""), problem)

    def text(self, key: str) -> str:
        return self.values.get(key, "")


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _open(data: bytes, errors: _Collector) -> Any:
    if len(data) > MAX_BYTES:
        errors.add("", 0, "", f"the file is {len(data)} bytes; the limit is {MAX_BYTES} bytes")
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            unzipped = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile:
        errors.add("", 0, "", "not an Excel workbook (.xlsx); save the file as .xlsx and retry")
        return None
    if "xl/workbook.xml" not in names:
        errors.add("", 0, "", "not an Excel workbook (.xlsx): it is a zip without a workbook")
        return None
    if unzipped > MAX_UNZIPPED_BYTES:
        errors.add(
            "",
            0,
            "",
            f"the workbook unpacks to {unzipped} bytes; the limit is {MAX_UNZIPPED_BYTES}",
        )
        return None
    # The XML parts are parsed by the standard library's expat (2.4 and later refuse
    # entity-expansion bombs, and external entities are never fetched); data_only reads
    # formulas' cached values, never evaluates them.
    try:
        return openpyxl.load_workbook(io.BytesIO(data), data_only=True, read_only=False)
    except Exception as exc:  # openpyxl raises many kinds on malformed parts
        errors.add("", 0, "", f"the workbook cannot be read: {type(exc).__name__}")
        return None


def _rows(ws: Worksheet, sheet: str, errors: _Collector) -> list[_Row] | None:
    """The data rows of a sheet after checking its headers; None when the headers are wrong."""
    columns = SHEETS[sheet]
    ok = True
    for i, col in enumerate(columns, start=1):
        letter = get_column_letter(i)
        header = _cell_text(ws.cell(1, i).value)
        key = _cell_text(ws.cell(2, i).value)
        if col.since_v2 and not header and not key:
            continue  # an earlier template's workbook: the column reads as empty
        if header != col.header:
            found = f"found {header!r}" if header else "it is empty"
            errors.add(
                sheet,
                1,
                f"{letter} {col.header}",
                f"column {letter} must be headed {col.header!r}; {found}",
            )
            ok = False
        if key != col.key:
            found = f"found {key!r}" if key else "it is empty"
            errors.add(
                sheet,
                2,
                f"{letter} {col.header}",
                f"row 2 of column {letter} must hold the key {col.key!r}; {found}",
            )
            ok = False
    for j in range(len(columns) + 1, (ws.max_column or 0) + 1):
        extra = _cell_text(ws.cell(1, j).value) or _cell_text(ws.cell(2, j).value)
        if extra:
            letter = get_column_letter(j)
            errors.add(
                sheet,
                1,
                f"{letter} {extra}",
                f"unknown column {extra!r}; the template has {len(columns)} columns",
            )
            ok = False
    for merged in ws.merged_cells.ranges:
        header = columns[merged.min_col - 1].header if merged.min_col <= len(columns) else ""
        errors.add(
            sheet,
            merged.min_row,
            f"{get_column_letter(merged.min_col)} {header}".strip(),
            f"merged cells {merged.coord}: unmerge them and fill in every cell",
        )
        ok = False
    if not ok:
        return None
    labels = {c.key: f"{get_column_letter(i)} {c.header}" for i, c in enumerate(columns, 1)}
    rows: list[_Row] = []
    width = len(columns)
    for number, cells in enumerate(
        ws.iter_rows(min_row=FIRST_DATA_ROW, max_col=width, values_only=True), FIRST_DATA_ROW
    ):
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in cells):
            continue
        if len(rows) >= MAX_ROWS:
            errors.add(
                sheet,
                number,
                "",
                f"more than {MAX_ROWS} rows; split the catalog into several files",
            )
            return None
        raw = {c.key: v for c, v in zip(columns, cells, strict=False)}
        row = _Row(sheet, number, {k: _cell_text(v) for k, v in raw.items()}, raw, labels, errors)
        for c in columns:
            text = row.text(c.key)
            if c.required and not text and not (sheet == CODE_LISTS and c.key == "name"):
                row.fail(c.key, f"{c.header} is required")
            if len(text) > MAX_CELL_CHARS:
                row.fail(c.key, f"longer than {MAX_CELL_CHARS} characters")
        rows.append(row)
    return rows


def _choice(row: _Row, key: str, kind: type[Any], labels: Mapping[Any, str] | None = None) -> Any:
    text = row.text(key)
    if not text:
        return None
    if labels is not None:
        for member, label in labels.items():
            if text in (label, member.value):
                return member
        allowed = "、".join(labels.values())
        row.fail(key, f"{text!r} is not one of: {allowed}")
        return None
    try:
        return parse_choice(kind, text)
    except ValueError:
        row.fail(key, f"{text!r} is not one of: {'、'.join(_labels(kind))}")
        return None


def _flag(row: _Row, key: str) -> bool | None:
    raw, text = row.raw.get(key), row.text(key).lower()
    if isinstance(raw, bool):
        return raw
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text:
        row.fail(key, f"{row.text(key)!r} must be 是 or 否")
    return None


def _int(row: _Row, key: str) -> int | None:
    text = row.text(key)
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", text):
        row.fail(key, f"{text!r} is not a whole number")
        return None
    return int(text)


def _date(row: _Row, key: str) -> date | None:
    text = row.text(key)
    if not text:
        return None
    try:
        return date.fromisoformat(validators.validate_date(text))
    except validators.InvalidCode as exc:
        row.fail(key, f"{text!r}: {exc.message}")
        return None


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in SEPARATORS.split(text) if p.strip())


def _pydantic(row: _Row, exc: ValidationError, default_key: str) -> None:
    """Map a model's validation errors to the row's columns by their field names."""
    for e in exc.errors():
        key = str(e["loc"][0]) if e["loc"] else default_key
        message = str(e["msg"]).removeprefix("Value error, ")
        if not e["loc"]:
            # Whole-model rules (spec.ResourceSpec._rules) name the field they need.
            if "legal_basis" in message or "legal basis" in message:
                key = "legal_basis"
            elif "sharing conditions" in message:
                key = "sharing_conditions"
        key = key if key in row.labels else default_key
        if key not in row.failed:  # one problem per cell: "required" says it already
            row.fail(key, message)


def _first_rows(rows: Iterable[_Row], key: str) -> Callable[[_Row], int | None]:
    """A duplicate check: returns the row where a value was first seen, or None."""
    seen: dict[str, int] = {}

    def check(row: _Row) -> int | None:
        value = row.text(key)
        if value in seen:
            return seen[value]
        seen[value] = row.number
        return None

    return check


def _read_code_lists(rows: list[_Row]) -> list[CodeList]:
    groups: dict[str, list[_Row]] = {}
    order: list[str] = []
    last = ""
    for row in rows:
        ident = row.text("identifier")
        if not ident:
            continue
        if ident in groups and ident != last:
            first = groups[ident][0].number
            row.fail(
                "identifier",
                f"code list {ident!r} is already defined from row {first}; keep its rows together",
            )
            continue
        if ident not in groups:
            groups[ident] = []
            order.append(ident)
        groups[ident].append(row)
        last = ident
    lists: list[CodeList] = []
    for ident in order:
        group = groups[ident]
        head = group[0]
        ok = True
        if not head.text("name"):
            head.fail("name", "代码集名称 is required on the first row of each code list")
            ok = False
        for row in group[1:]:
            for key in ("name", "name_en", "standard"):
                if row.text(key) and row.text(key) != head.text(key):
                    row.fail(key, f"differs from row {head.number} of the same code list")
                    ok = False
        seen: dict[str, int] = {}
        codes: list[Code] = []
        for row in group:
            value = row.text("value")
            if value in seen:
                row.fail(
                    "value", f"code {value!r} is already in this code list at row {seen[value]}"
                )
                ok = False
                continue
            seen[value] = row.number
            try:
                codes.append(
                    Code(value=value, label=row.text("label"), label_en=row.text("label_en"))
                )
            except ValidationError as exc:
                _pydantic(row, exc, "value")
                ok = False
        if not ok:
            continue
        try:
            lists.append(
                CodeList(
                    identifier=ident,
                    name=head.text("name"),
                    name_en=head.text("name_en"),
                    standard=head.text("standard"),
                    codes=tuple(codes),
                )
            )
        except ValidationError as exc:
            _pydantic(head, exc, "identifier")
    return lists


def _read_elements(rows: list[_Row], known_lists: set[str] | None) -> list[DataElement]:
    first = _first_rows(rows, "identifier")
    elements: list[DataElement] = []
    for row in rows:
        if (at := first(row)) is not None:
            row.fail(
                "identifier",
                f"data element {row.text('identifier')!r} is already defined at row {at}",
            )
            continue
        before = len(row.errors.errors)
        type_ = _choice(row, "type", ElementType, TYPE_LABELS)
        fmt = _choice(row, "format", Format, FORMAT_LABELS)
        sensitivity = _choice(row, "sensitivity", Sensitivity)
        personal = _flag(row, "personal")
        lo, hi = _int(row, "min_length"), _int(row, "max_length")
        code_list = row.text("code_list") or None
        if code_list and known_lists is not None and code_list not in known_lists:
            row.fail(
                "code_list",
                f"unknown code list {code_list!r}: define it in sheet "
                f"{CODE_LISTS} or publish it first",
            )
        if len(row.errors.errors) > before or type_ is None:
            continue
        try:
            elements.append(
                DataElement(
                    identifier=row.text("identifier"),
                    name=row.text("name"),
                    name_en=row.text("name_en"),
                    definition=row.text("definition"),
                    type=type_,
                    format=fmt,
                    min_length=lo,
                    max_length=hi,
                    pattern=row.text("pattern") or None,
                    code_list=code_list,
                    sensitivity=sensitivity or Sensitivity.GENERAL,
                    personal=bool(personal),
                )
            )
        except ValidationError as exc:
            _pydantic(row, exc, "type")
    return elements


def _read_items(
    rows: list[_Row], resources: set[str] | None, known: set[str] | None
) -> dict[str, list[Item]]:
    """Items by resource code. ``None`` for ``resources`` or ``known`` (elements) means the
    sheet that defines them could not be read: its errors are reported already, and checking
    against it would only bury them under one follow-on error per row."""
    by_resource: dict[str, list[Item]] = {}
    fields: dict[tuple[str, str], int] = {}
    for row in rows:
        code, field_name = row.text("resource"), row.text("field")
        before = len(row.errors.errors)
        if code and resources is not None and code not in resources:
            row.fail("resource", f"no resource {code!r} in sheet {RESOURCES}")
        if (code, field_name) in fields:
            at = fields[(code, field_name)]
            row.fail("field", f"field {field_name!r} of {code!r} is already at row {at}")
        fields.setdefault((code, field_name), row.number)
        element = row.text("element")
        if element and known is not None and element not in known:
            row.fail(
                "element",
                f"unknown data element {element!r}: define it in sheet "
                f"{ELEMENTS} or publish it first",
            )
        required = _flag(row, "required")
        try:
            item = Item(
                field=field_name,
                name=row.text("name"),
                element=element or "-",
                required=bool(required),
                description=row.text("description"),
            )
        except ValidationError as exc:
            _pydantic(row, exc, "field")
            continue
        if len(row.errors.errors) > before:
            continue
        by_resource.setdefault(code, []).append(item)
    return by_resource


def _read_resources(
    rows: list[_Row],
    items: Mapping[str, list[Item]],
    parameters: Mapping[str, list[Item]],
    with_rows: set[str] | None,
) -> list[ResourceSpec]:
    """Resources with their items; ``with_rows`` holds the codes that have any row in the
    items sheet (None if it could not be read), so a resource whose item rows all have
    errors is not reported again as having none."""
    first = _first_rows(rows, "code")
    resources: list[ResourceSpec] = []
    for row in rows:
        if (at := first(row)) is not None:
            row.fail("code", f"resource {row.text('code')!r} is already defined at row {at}")
            continue
        before = len(row.errors.errors)
        provider = row.text("provider")
        if provider:
            try:
                validators.validate_uscc(provider)
            except validators.InvalidCode as exc:
                row.fail(
                    "provider", f"{provider!r} is not a unified social credit code: {exc.message}"
                )
        values: dict[str, Any] = {
            "classification": _choice(row, "classification", Classification),
            "sharing_type": _choice(row, "sharing_type", SharingType),
            "openness": _choice(row, "openness", Openness),
            "update_cycle": _choice(row, "update_cycle", UpdateCycle),
            "status": _choice(row, "status", ResourceStatus, STATUS_LABELS),
            "published_on": _date(row, "published_on"),
            "version": _int(row, "version"),
        }
        methods: list[SharingMethod] = []
        for part in _split(row.text("sharing_methods")):
            try:
                methods.append(parse_choice(SharingMethod, part))
            except ValueError:
                row.fail(
                    "sharing_methods",
                    f"{part!r} is not one of: {'、'.join(_labels(SharingMethod))}",
                )
        code = row.text("code")
        if code and with_rows is not None and code not in with_rows:
            row.fail("code", f"resource {code!r} has no rows in sheet {ITEMS}")
        if len(row.errors.errors) > before or not items.get(code):
            continue  # (no items: their rows had errors, reported on the items sheet)
        try:
            resources.append(
                ResourceSpec(
                    code=code,
                    name=row.text("name"),
                    name_en=row.text("name_en"),
                    provider=provider,
                    abstract=row.text("abstract"),
                    format=row.text("format") or "application/json",
                    items=tuple(items.get(code, ())),
                    records_at=row.text("records_at"),
                    parameters=tuple(parameters.get(code, ())),
                    sharing_conditions=row.text("sharing_conditions"),
                    legal_basis=row.text("legal_basis"),
                    sharing_methods=tuple(methods),
                    related=_split(row.text("related")),
                    keywords=_split(row.text("keywords")),
                    stream=_stream(row),
                    **{k: v for k, v in values.items() if v is not None},
                )
            )
        except ValidationError as exc:
            _pydantic(row, exc, "code")
    return resources


def _stream(row: _Row) -> dict[str, Any] | None:
    """The stream of a resource shared as events (its partition key, its retention)."""
    key = row.text("stream_partition_key")
    hours = _int(row, "stream_retention_hours")
    if not key and hours is None:
        return None
    return {"partition_key": key, **({"retention_hours": hours} if hours is not None else {})}


def read_workbook(
    data: bytes,
    *,
    known_elements: set[str] | frozenset[str] = frozenset(),
    known_code_lists: set[str] | frozenset[str] = frozenset(),
) -> Catalog:
    """Read a catalog workbook in the template's layout.

    ``known_elements`` and ``known_code_lists`` are identifiers already in the catalog; those
    defined in the same file count as known too. Raises :class:`WorkbookErrors` with every
    problem found, or returns the whole catalog.
    """
    errors = _Collector()
    wb = _open(data, errors)
    if wb is None:
        raise WorkbookErrors(errors.errors)
    for name in wb.sheetnames:
        if name not in SHEETS and name != INSTRUCTIONS:
            errors.add(
                name,
                0,
                "",
                f"unknown sheet {name!r}; the template's sheets are {'、'.join(SHEETS)}",
            )
    rows: dict[str, list[_Row] | None] = {}
    for name in SHEETS:
        if name not in wb.sheetnames:
            if name in REQUIRED_SHEETS:
                errors.add(name, 0, "", f"sheet {name!r} is missing")
                rows[name] = None
            else:
                rows[name] = []
            continue
        rows[name] = _rows(wb[name], name, errors)
    wb.close()

    def ids(sheet: str, key: str, known: Iterable[str] = ()) -> set[str] | None:
        read = rows[sheet]
        return None if read is None else set(known) | {r.text(key) for r in read}

    lists = _read_code_lists(rows[CODE_LISTS] or [])
    elements = _read_elements(rows[ELEMENTS] or [], ids(CODE_LISTS, "identifier", known_code_lists))
    element_ids = ids(ELEMENTS, "identifier", known_elements)
    resource_codes = ids(RESOURCES, "code")
    items = _read_items(rows[ITEMS] or [], resource_codes, element_ids)
    parameters = _read_items(rows[PARAMETERS] or [], resource_codes, element_ids)
    resources = _read_resources(rows[RESOURCES] or [], items, parameters, ids(ITEMS, "resource"))

    if errors.errors:
        found = errors.errors
        if len(found) > MAX_ERRORS:
            more = WorkbookError("", 0, "", f"{len(found) - MAX_ERRORS} more errors not listed")
            found = [*found[:MAX_ERRORS], more]
        raise WorkbookErrors(found)
    return Catalog(
        code_lists=tuple(lists), data_elements=tuple(elements), resources=tuple(resources)
    )


# --- writing ---------------------------------------------------------------------------------

_HEADER_FONT = Font(bold=True)
_REQUIRED_FONT = Font(bold=True, color="C00000")
_KEY_FONT = Font(italic=True, color="808080")
_HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")


def _sheet(wb: Any, name: str) -> Worksheet:
    ws: Worksheet = wb.create_sheet(name)
    for i, col in enumerate(SHEETS[name], start=1):
        letter = get_column_letter(i)
        head = ws.cell(1, i, col.header)
        head.font = _REQUIRED_FONT if col.required else _HEADER_FONT
        head.fill = _HEADER_FILL
        head.comment = Comment(
            f"{col.key}{'(必填)' if col.required else ''}:{col.description}", "Qiao"
        )
        ws.cell(2, i, col.key).font = _KEY_FONT
        ws.column_dimensions[letter].width = col.width
        # Text format keeps leading zeros in codes ("01") and stops Excel turning
        # "1-2" into a date.
        ws.column_dimensions[letter].number_format = "@"
        if col.choices:
            dv = DataValidation(
                type="list",
                formula1='"' + ",".join(col.choices) + '"',
                allow_blank=not col.required,
                showErrorMessage=True,
                errorTitle="不在可选范围内",
                error=f"{col.header} 只能填写:{'、'.join(col.choices)}",
            )
            dv.add(f"{letter}{FIRST_DATA_ROW}:{letter}{FIRST_DATA_ROW + MAX_ROWS - 1}")
            ws.add_data_validation(dv)
    ws.freeze_panes = f"A{FIRST_DATA_ROW}"
    return ws


class _Rows:
    """Appends data rows to a sheet. Keeps its own count: ``ws.max_row`` scans every row,
    which makes appending quadratic."""

    def __init__(self, ws: Worksheet) -> None:
        self.ws = ws
        self.next = FIRST_DATA_ROW

    def put(self, *values: Any) -> None:
        row, self.next = self.next, self.next + 1
        for i, value in enumerate(values, start=1):
            if value is None or value == "":
                continue
            cell = self.ws.cell(row, i)
            if isinstance(value, int) and not isinstance(value, bool):
                cell.value = value
            else:
                # Always text: a value starting with "=" must never become a formula.
                cell.value = str(value)
                cell.data_type = "s"
                cell.number_format = "@"


def _instructions(wb: Any) -> None:
    ws: Worksheet = wb.create_sheet(INSTRUCTIONS, 0)
    lines = [
        ("Qiao 信息资源目录编制模板", "", "", "", ""),
        (
            "每个工作表第1行为中文表头,第2行为英文键(请勿修改),数据从第3行开始填写。"
            "红色表头为必填列。请勿合并单元格。导入时逐行校验,任何错误都会使整个文件不被导入,"
            "错误报告列出工作表、行号、列和问题。",
            "",
            "",
            "",
            "",
        ),
        ("工作表", "表头", "键", "必填", "说明 / 可选值 / 示例"),
    ]
    for sheet, columns in SHEETS.items():
        for col in columns:
            detail = col.description
            if col.choices:
                detail += f";可选:{'、'.join(col.choices)}"
            if col.example:
                detail += f";示例:{col.example}"
            lines.append((sheet, col.header, col.key, YES if col.required else NO, detail))
    for line in lines:
        ws.append(line)
    ws["A1"].font = Font(bold=True, size=14)
    for cell in ws[3]:
        cell.font = _HEADER_FONT
    ws.merge_cells("A2:E2")  # the instructions sheet is never read back
    ws["A2"].alignment = Alignment(wrap_text=True, vertical="top")
    ws.row_dimensions[2].height = 60
    for letter, width in zip("ABCDE", (12, 14, 20, 6, 80), strict=True):
        ws.column_dimensions[letter].width = width


def _new_workbook() -> Any:
    wb = openpyxl.Workbook()
    for sheet in list(wb.worksheets):
        wb.remove(sheet)
    _instructions(wb)
    for name in SHEETS:
        _sheet(wb, name)
    return wb


def _save(wb: Any) -> bytes:
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def template() -> bytes:
    """The empty template: instructions, headers, keys and drop-downs for every choice."""
    return _save(_new_workbook())


def _label(value: StrEnum) -> str:
    return LABELS_ZH[type(value)][value.value]


def write_workbook(catalog: Catalog) -> bytes:
    """The catalog in the template's layout; :func:`read_workbook` reads it back equal."""
    wb = _new_workbook()
    lists, elements = _Rows(wb[CODE_LISTS]), _Rows(wb[ELEMENTS])
    resources, items, params = _Rows(wb[RESOURCES]), _Rows(wb[ITEMS]), _Rows(wb[PARAMETERS])
    for cl in catalog.code_lists:
        for i, code in enumerate(cl.codes):
            head = (cl.name, cl.name_en, cl.standard) if i == 0 else ("", "", "")
            lists.put(cl.identifier, *head, code.value, code.label, code.label_en)
    for e in catalog.data_elements:
        elements.put(
            e.identifier,
            e.name,
            e.name_en,
            e.definition,
            TYPE_LABELS[e.type],
            FORMAT_LABELS[e.format] if e.format else "",
            e.min_length,
            e.max_length,
            e.pattern,
            e.code_list,
            _label(e.sensitivity),
            YES if e.personal else NO,
        )
    for r in catalog.resources:
        resources.put(
            r.code,
            r.name,
            r.name_en,
            r.provider,
            r.abstract,
            _label(r.classification),
            r.format,
            r.records_at,
            _label(r.sharing_type),
            r.sharing_conditions,
            r.legal_basis,
            "；".join(_label(m) for m in r.sharing_methods),
            _label(r.openness),
            _label(r.update_cycle),
            r.published_on.isoformat() if r.published_on else "",
            "；".join(r.related),
            "；".join(r.keywords),
            r.version or None,
            STATUS_LABELS[r.status],
            r.stream.partition_key if r.stream else "",
            r.stream.retention_hours if r.stream else None,
        )
        for sheet, group in ((items, r.items), (params, r.parameters)):
            for it in group:
                sheet.put(
                    r.code,
                    it.field,
                    it.name,
                    it.element,
                    YES if it.required else NO,
                    it.description,
                )
    return _save(wb)
