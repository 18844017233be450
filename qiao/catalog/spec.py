"""The catalog's vocabulary: data elements, code lists and resources, as documents.

These are the shapes every part of the catalog shares — the hub's tables and API, the Excel
template, the DCAT export and the JSON Schema the nodes validate with. They follow the
national catalog guideline for government information resources (《政务信息资源目录编制指南》)
and the data element standards (GB/T 19488 for the structure of a data element).

Codes in English in documents and APIs; the Chinese terms users know are in ``LABELS_ZH``
and accepted wherever a person types them (``parse_choice``).
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A field name in a payload: what apps and the JSON Schema see.
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Identifiers of data elements and code lists, e.g. "DE0001", "GB/T 2261.1", "QIAO-VIOLATION".
IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9 ._/:-]{0,63}$"
# A resource code: it is also the path segment in /r1/{org}/{resource}/...
RESOURCE_CODE = r"^[a-z0-9][a-z0-9-]{0,63}$"


class Sensitivity(StrEnum):
    """Data level (数据分级) per GB/T 43697-2024 §5: general, important, core."""

    GENERAL = "general"
    IMPORTANT = "important"
    CORE = "core"


class ElementType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"  # ISO 8601 / RFC 3339 full-date
    DATETIME = "datetime"  # RFC 3339 date-time
    TIME = "time"  # RFC 3339 partial-time


class Format(StrEnum):
    """Named formats backed by Qiao's validators (``qiao.catalog.validators``)."""

    CITIZEN_ID = "citizen-id"  # GB 11643
    USCC = "uscc"  # GB 32100
    PLATE = "plate"  # GA 36
    MOBILE = "mobile"  # mainland mobile number
    DIVISION = "division"  # GB/T 2260 administrative division code


class SharingType(StrEnum):
    """共享类型 (国务院令第809号, 政务信息资源目录编制指南)."""

    UNCONDITIONAL = "unconditional"  # 无条件共享
    CONDITIONAL = "conditional"  # 有条件共享
    NONE = "none"  # 不予共享


class Classification(StrEnum):
    """资源分类: base resources, thematic resources, department resources."""

    BASIC = "basic"  # 基础信息资源
    THEMATIC = "thematic"  # 主题信息资源
    DEPARTMENTAL = "departmental"  # 部门信息资源


class SharingMethod(StrEnum):
    SERVICE = "service"  # 接口调用
    EVENTS = "events"  # 事件订阅
    DATASET = "dataset"  # 数据集 (file/bulk)


class Openness(StrEnum):
    """开放属性: whether the resource may also be opened to the public."""

    OPEN = "open"  # 无条件开放
    CONDITIONAL = "conditional"  # 有条件开放
    CLOSED = "closed"  # 不予开放


class UpdateCycle(StrEnum):
    REALTIME = "realtime"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"
    IRREGULAR = "irregular"


E = TypeVar("E", bound=StrEnum)


class ResourceStatus(StrEnum):
    PUBLISHED = "published"
    DEPRECATED = "deprecated"


# Keyed by enum class first: several enums share a value ("conditional"), and StrEnum
# members that are equal strings are the same dictionary key.
LABELS_ZH: dict[type[StrEnum], dict[str, str]] = {
    Sensitivity: {"general": "一般", "important": "重要", "core": "核心"},
    SharingType: {"unconditional": "无条件共享", "conditional": "有条件共享", "none": "不予共享"},
    Classification: {"basic": "基础", "thematic": "主题", "departmental": "部门"},
    SharingMethod: {"service": "接口调用", "events": "事件订阅", "dataset": "数据集"},
    Openness: {"open": "无条件开放", "conditional": "有条件开放", "closed": "不予开放"},
    UpdateCycle: {
        "realtime": "实时",
        "daily": "每日",
        "weekly": "每周",
        "monthly": "每月",
        "quarterly": "每季度",
        "yearly": "每年",
        "irregular": "不定期",
    },
}


def label_zh(value: StrEnum) -> str:
    """The Chinese label of a choice, e.g. ``SharingType.CONDITIONAL`` -> 有条件共享."""
    return LABELS_ZH[type(value)][value.value]


def parse_choice(kind: type[E], text: str) -> E:
    """A choice from its code or its Chinese label; ``ValueError`` lists what is allowed."""
    text = text.strip()
    labels = LABELS_ZH.get(kind, {})
    for member in kind:
        if text in (member.value, labels.get(member.value)):
            return member
    allowed = ", ".join(f"{m.value} ({labels.get(m.value, '')})" for m in kind)
    raise ValueError(f"{text!r} is not one of: {allowed}")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Code(_Doc):
    value: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)  # Chinese
    label_en: str = ""


class CodeList(_Doc):
    """代码集: the allowed values of a coded data element, e.g. sex per GB/T 2261.1."""

    identifier: str = Field(pattern=IDENTIFIER)
    name: str = Field(min_length=1, max_length=200)
    name_en: str = ""
    standard: str = ""  # where it comes from, e.g. "GB/T 2261.1-2003"
    codes: tuple[Code, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_values(self) -> Self:
        seen: set[str] = set()
        for c in self.codes:
            if c.value in seen:
                raise ValueError(f"code {c.value!r} appears twice in code list {self.identifier}")
            seen.add(c.value)
        return self


class DataElement(_Doc):
    """数据元 (GB/T 19488.1): a unit of data with a definition, a type and a representation."""

    identifier: str = Field(pattern=IDENTIFIER)
    name: str = Field(min_length=1, max_length=200)  # Chinese name
    name_en: str = ""
    definition: str = Field(min_length=1, max_length=2000)
    type: ElementType
    format: Format | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=1)
    pattern: str | None = None  # an ECMA-262 regular expression, for formats without a name
    code_list: str | None = None  # identifier of a CodeList
    sensitivity: Sensitivity = Sensitivity.GENERAL
    personal: bool = False  # personal information (个人信息, PIPL art. 4)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        string_like = self.type is ElementType.STRING
        if not string_like and (self.format or self.pattern or self.min_length or self.max_length):
            raise ValueError("format, pattern and lengths apply to string data elements only")
        if self.min_length and self.max_length and self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a regular expression: {exc}") from None
        return self


class Item(_Doc):
    """信息项: one field of a resource's records, bound to a data element."""

    field: str = Field(pattern=FIELD_NAME.pattern)  # the key in a JSON record
    name: str = Field(min_length=1, max_length=200)  # Chinese name of the item
    element: str = Field(pattern=IDENTIFIER)  # DataElement.identifier
    required: bool = True
    description: str = ""


class StreamSpec(_Doc):
    """事件流: how a resource offered as events (``SharingMethod.EVENTS``) is published. Each
    event is one record of the resource (its items); order is kept per partition key (an
    accident's updates stay in order, accidents among themselves need not), and events stay
    replayable for the retention period."""

    partition_key: str = Field(pattern=FIELD_NAME.pattern)  # a required item's field
    retention_hours: int = Field(168, ge=1, le=24 * 366)


class ResourceSpec(_Doc):
    """信息资源: what a provider publishes. The hub assigns ``version`` and ``status``."""

    code: str = Field(pattern=RESOURCE_CODE)
    name: str = Field(min_length=1, max_length=200)
    name_en: str = ""
    provider: str = Field(min_length=18, max_length=18)  # the organization's USCC
    abstract: str = Field(min_length=1, max_length=4000)
    classification: Classification
    format: str = "application/json"  # media type of the records
    items: tuple[Item, ...] = Field(min_length=1)
    # Where the records are in a response body, as a JSON Pointer (RFC 6901): "" when the
    # body is a record or an array of records, "/violations" when that member holds them.
    records_at: str = Field("", pattern=r"^(/[^/]+)*$", max_length=200)
    # 请求参数: what a request body carries (e.g. identity verification's citizen ID and
    # name), each bound to a data element like an item. Empty for plain queries.
    parameters: tuple[Item, ...] = ()
    sharing_type: SharingType
    sharing_conditions: str = ""  # required when conditional
    legal_basis: str = ""  # required unless unconditional
    sharing_methods: tuple[SharingMethod, ...] = (SharingMethod.SERVICE,)
    openness: Openness = Openness.CLOSED
    update_cycle: UpdateCycle = UpdateCycle.IRREGULAR
    published_on: date | None = None
    related: tuple[str, ...] = ()  # codes of related resources ("{org}/{code}" or "{code}")
    keywords: tuple[str, ...] = ()
    # Set when the resource is also offered as an event stream (sharing method "events").
    stream: StreamSpec | None = None
    version: int = Field(0, ge=0)  # 0 until the hub publishes it
    status: ResourceStatus = ResourceStatus.PUBLISHED

    @model_validator(mode="after")
    def _rules(self) -> Self:
        # 国务院令第809号 and the catalog guideline: a conditional resource states its
        # conditions, and conditional or non-shared resources state their legal basis.
        if self.sharing_type is not SharingType.UNCONDITIONAL and not self.legal_basis:
            raise ValueError(
                f"a {label_zh(self.sharing_type)} resource needs its legal basis (legal_basis)"
            )
        if self.sharing_type is SharingType.CONDITIONAL and not self.sharing_conditions:
            raise ValueError("a 有条件共享 resource needs its sharing conditions")
        for what, group in (("item", self.items), ("parameter", self.parameters)):
            fields = [i.field for i in group]
            if len(fields) != len(set(fields)):
                dup = next(f for f in fields if fields.count(f) > 1)
                raise ValueError(f"{what} field {dup!r} appears twice")
        if not self.sharing_methods:
            raise ValueError("a resource needs at least one sharing method")
        events = SharingMethod.EVENTS in self.sharing_methods
        if events and self.stream is None:
            raise ValueError("a resource shared as events (事件订阅) declares its stream")
        if self.stream is not None:
            if not events:
                raise ValueError("a stream is declared only with the sharing method events")
            key = next((i for i in self.items if i.field == self.stream.partition_key), None)
            if key is None or not key.required:
                raise ValueError(
                    f"the stream's partition key {self.stream.partition_key!r} must be a "
                    "required item of the resource"
                )
        return self


class Catalog(_Doc):
    """A bundle of catalog entries, as imported from or exported to a file."""

    code_lists: tuple[CodeList, ...] = ()
    data_elements: tuple[DataElement, ...] = ()
    resources: tuple[ResourceSpec, ...] = ()
