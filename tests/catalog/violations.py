"""The vehicle-violation resource as a catalog entry, for schema, exchange and bench tests
(the demo city's catalog describes the same resource)."""

from __future__ import annotations

from typing import Any

from qiao.catalog.spec import (
    Code,
    CodeList,
    DataElement,
    ElementType,
    Format,
    Item,
    ResourceSpec,
    SharingType,
)
from qiao.catalog.validators import citizen_id_check_char

PROVIDER = "91350100M000100Y43"  # the city's public security bureau
CIVIL_ID = "35010219900307123" + citizen_id_check_char("35010219900307123")

VALID_RECORD: dict[str, Any] = {
    "plate": "闽A12345",
    "plate_type": "02",
    "code": "1625",
    "occurred_at": "2026-11-20T08:31:00+08:00",
    "at": "闽江路与五四路交叉口",
    "division": "350102",
    "fine": 200,
    "points": 6,
    "handled": False,
    "driver_mobile": "13800138000",
}


def violation_catalog() -> tuple[ResourceSpec, dict[str, DataElement], dict[str, CodeList]]:
    code_lists = [
        CodeList(
            identifier="GA 24.7",
            name="机动车号牌种类",
            standard="GA 24.7-2005",
            codes=(Code(value="01", label="大型汽车"), Code(value="02", label="小型汽车")),
        ),
        CodeList(
            identifier="QIAO-VIOLATION",
            name="交通违法行为代码",
            codes=(
                Code(value="1625", label="驾驶机动车违反道路交通信号灯通行"),
                Code(value="1352", label="超过规定时速50%以下"),
                Code(value="1039", label="机动车违反规定停放"),
            ),
        ),
    ]
    elements = [
        DataElement(identifier="DE-PLATE", name="机动车号牌号码", definition="号牌号码",
                    type=ElementType.STRING, format=Format.PLATE, max_length=9),
        DataElement(identifier="DE-PLATE-TYPE", name="号牌种类", definition="号牌种类",
                    type=ElementType.STRING, code_list="GA 24.7"),
        DataElement(identifier="DE-VIOLATION", name="违法行为代码", definition="违法行为",
                    type=ElementType.STRING, code_list="QIAO-VIOLATION"),
        DataElement(identifier="DE-TIME", name="违法时间", definition="时间",
                    type=ElementType.DATETIME),
        DataElement(identifier="DE-PLACE", name="违法地点", definition="地点",
                    type=ElementType.STRING, min_length=1, max_length=128),
        DataElement(identifier="DE-DIVISION", name="行政区划代码", definition="GB/T 2260",
                    type=ElementType.STRING, format=Format.DIVISION),
        DataElement(identifier="DE-FINE", name="罚款金额", definition="元",
                    type=ElementType.INTEGER),
        DataElement(identifier="DE-POINTS", name="记分", definition="分",
                    type=ElementType.INTEGER),
        DataElement(identifier="DE-HANDLED", name="是否处理", definition="是否",
                    type=ElementType.BOOLEAN),
        DataElement(identifier="DE-MOBILE", name="手机号码", definition="手机",
                    type=ElementType.STRING, format=Format.MOBILE, personal=True),
        DataElement(identifier="DE-CITIZEN-ID", name="公民身份号码", definition="GB 11643",
                    type=ElementType.STRING, format=Format.CITIZEN_ID, personal=True),
    ]  # fmt: skip
    items = (
        Item(field="plate", name="号牌号码", element="DE-PLATE"),
        Item(field="plate_type", name="号牌种类", element="DE-PLATE-TYPE"),
        Item(field="code", name="违法行为", element="DE-VIOLATION"),
        Item(field="occurred_at", name="违法时间", element="DE-TIME"),
        Item(field="at", name="违法地点", element="DE-PLACE"),
        Item(field="division", name="行政区划", element="DE-DIVISION"),
        Item(field="fine", name="罚款金额", element="DE-FINE", required=False),
        Item(field="points", name="记分", element="DE-POINTS", required=False),
        Item(field="handled", name="是否处理", element="DE-HANDLED"),
        Item(field="driver_mobile", name="驾驶人手机", element="DE-MOBILE", required=False),
    )
    spec = ResourceSpec(
        code="vehicle-violations",
        name="机动车交通违法记录",
        provider=PROVIDER,
        abstract="按公民身份号码查询名下机动车的交通违法记录",
        classification="thematic",
        items=items,
        records_at="/violations",
        parameters=(Item(field="citizen_id", name="公民身份号码", element="DE-CITIZEN-ID"),),
        sharing_type=SharingType.CONDITIONAL,
        sharing_conditions="用于行政执法",
        legal_basis="《道路交通安全法》第一百零五条",
        version=3,
    )
    return (
        spec,
        {e.identifier: e for e in elements},
        {c.identifier: c for c in code_lists},
    )
