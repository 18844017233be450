"""The data standards Qiao ships: common data elements (数据元) and code lists (代码集).

Every city needs the same few dozen elements — a citizen's identity number, a name, a credit
code, a plate — and the same national code lists. Shipping them means departments that never
talked to each other still mean the same thing by ``citizen_id``. A city publishes these first
(``qiao catalog import`` or the demo), then its own resources bind items to them.

Identifiers: data elements are ``DE`` and four digits, stable across releases (a number is
never reused for another meaning); code lists carry the number of the standard they come from
(``GB/T 2261.1``) or ``QIAO-`` for lists Qiao defines itself.

Sensitivity follows GB/T 43697-2024 (数据安全技术 数据分类分级规则): the identity number, as the
key that links a person across every system, is 重要 (important); the rest is 一般 (general).
The ``personal`` flag marks personal information in the sense of the PIPL (个人信息保护法 art. 4),
independently of the level; nodes mask and log by it.
"""

from __future__ import annotations

from functools import cache

from qiao.catalog.spec import (
    Catalog,
    Code,
    CodeList,
    DataElement,
    ElementType,
    Format,
    Sensitivity,
)

__all__ = ["CODE_LISTS", "DATA_ELEMENTS", "standard_catalog"]


def _codes(*rows: tuple[str, str, str]) -> tuple[Code, ...]:
    return tuple(Code(value=v, label=zh, label_en=en) for v, zh, en in rows)


CODE_LISTS: tuple[CodeList, ...] = (
    CodeList(
        identifier="GB/T 2261.1",
        name="人的性别代码",
        name_en="Codes for sexes of human",
        standard="GB/T 2261.1-2003",
        codes=_codes(
            ("0", "未知的性别", "not known"),
            ("1", "男性", "male"),
            ("2", "女性", "female"),
            ("9", "未说明的性别", "not stated"),
        ),
    ),
    CodeList(
        identifier="GA 24.7",
        name="机动车号牌种类代码",
        name_en="Motor vehicle plate types",
        standard="GA 24.7-2005 (号牌种类, 新能源号牌按公安部交通管理局补充代码)",
        codes=_codes(
            ("01", "大型汽车号牌", "large vehicle"),
            ("02", "小型汽车号牌", "small vehicle"),
            ("51", "大型新能源汽车号牌", "large new-energy vehicle"),
            ("52", "小型新能源汽车号牌", "small new-energy vehicle"),
        ),
    ),
    CodeList(
        identifier="QIAO-VIOLATION",
        name="道路交通安全违法行为代码",
        name_en="Road traffic violation codes",
        standard="按公安部交通管理局违法代码结构编制 (演示城市)",
        codes=_codes(
            (
                "1039",
                "机动车违反规定停放、临时停车且驾驶人不在现场",
                "illegal parking, driver absent",
            ),
            ("1344", "机动车违反禁令标志指示", "disobeying a prohibition sign"),
            ("1345", "机动车违反禁止标线指示", "disobeying a prohibition marking"),
            ("1352", "驾驶机动车超过规定时速20%以上未达到50%", "speeding by 20% to 50%"),
            ("1625", "驾驶机动车违反道路交通信号灯通行", "running a traffic light"),
        ),
    ),
    CodeList(
        identifier="QIAO-ACCIDENT-TYPE",
        name="道路交通事故形态代码",
        name_en="Road traffic accident types",
        standard="参照 GA/T 16 道路交通管理信息代码 (事故形态)",
        codes=_codes(
            ("11", "正面相撞", "head-on collision"),
            ("12", "侧面相撞", "side collision"),
            ("13", "追尾碰撞", "rear-end collision"),
            ("21", "刮擦", "scrape"),
            ("31", "碾压", "run over"),
            ("41", "翻车", "rollover"),
            ("51", "撞固定物", "hit a fixed object"),
            ("99", "其他", "other"),
        ),
    ),
    CodeList(
        identifier="QIAO-ACCIDENT-SEVERITY",
        name="道路交通事故等级",
        name_en="Road traffic accident severity",
        standard="《道路交通事故处理程序规定》事故分类",
        codes=_codes(
            ("1", "财产损失事故", "property damage only"),
            ("2", "伤人事故", "injury accident"),
            ("3", "死亡事故", "fatal accident"),
        ),
    ),
    CodeList(
        identifier="QIAO-ENTERPRISE-STATUS",
        name="企业登记状态",
        name_en="Enterprise registration status",
        standard="市场监督管理部门登记状态",
        codes=_codes(
            ("存续", "存续", "subsisting"),
            ("在业", "在业", "in business"),
            ("注销", "注销", "deregistered"),
        ),
    ),
    CodeList(
        identifier="QIAO-CREDIT-RATING",
        name="企业信用风险分类",
        name_en="Enterprise credit risk class",
        standard="《企业信用风险分类管理》A/B/C/D 四类",
        codes=_codes(
            ("A", "信用风险低", "low risk"),
            ("B", "信用风险一般", "moderate risk"),
            ("C", "信用风险较高", "elevated risk"),
            ("D", "信用风险高", "high risk"),
        ),
    ),
)


def _element(
    identifier: str,
    name: str,
    name_en: str,
    definition: str,
    type_: ElementType,
    *,
    format: Format | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    code_list: str | None = None,
    sensitivity: Sensitivity = Sensitivity.GENERAL,
    personal: bool = False,
) -> DataElement:
    return DataElement(
        identifier=identifier,
        name=name,
        name_en=name_en,
        definition=definition,
        type=type_,
        format=format,
        min_length=min_length,
        max_length=max_length,
        pattern=pattern,
        code_list=code_list,
        sensitivity=sensitivity,
        personal=personal,
    )


S, INT, B = ElementType.STRING, ElementType.INTEGER, ElementType.BOOLEAN
D, DT = ElementType.DATE, ElementType.DATETIME

DATA_ELEMENTS: tuple[DataElement, ...] = (
    # --- people ---------------------------------------------------------------------------
    _element(
        "DE0001", "公民身份号码", "Citizen identity number",
        "按 GB 11643-1999 编制的18位公民身份号码,含地址码、出生日期码、顺序码和校验码。",
        S, format=Format.CITIZEN_ID, min_length=18, max_length=18,
        sensitivity=Sensitivity.IMPORTANT, personal=True,
    ),
    _element(
        "DE0002", "姓名", "Name", "自然人在户籍管理部门登记的姓名。",
        S, min_length=1, max_length=50, personal=True,
    ),
    _element(
        "DE0003", "性别代码", "Sex", "人的性别,按 GB/T 2261.1 代码表示。",
        S, code_list="GB/T 2261.1", personal=True,
    ),
    _element("DE0004", "出生日期", "Date of birth", "自然人出生的公历日期。", D, personal=True),
    _element(
        "DE0005", "移动电话号码", "Mobile number", "中国大陆11位移动电话号码。",
        S, format=Format.MOBILE, min_length=11, max_length=11, personal=True,
    ),
    _element(
        "DE0006", "地址", "Address", "住所、经营场所等的详细地址,自省级或市级名称起写。",
        S, min_length=1, max_length=200,
    ),
    _element(
        "DE0007", "行政区划代码", "Administrative division code",
        "按 GB/T 2260 编制的6位县级及以上行政区划代码。",
        S, format=Format.DIVISION, min_length=6, max_length=6,
    ),
    # --- vehicles and traffic -------------------------------------------------------------
    _element(
        "DE0008", "机动车号牌号码", "Plate number",
        "按 GA 36-2018 编制的机动车号牌号码,含新能源号牌,不含分隔符。",
        S, format=Format.PLATE, min_length=7, max_length=8, personal=True,
    ),
    _element(
        "DE0009", "号牌种类代码", "Plate type", "机动车号牌的种类,按 GA 24.7 代码表示。",
        S, code_list="GA 24.7",
    ),
    _element(
        "DE0010", "违法记录编号", "Violation record number",
        "公安交通管理部门为一条交通违法记录分配的唯一编号。",
        S, min_length=1, max_length=32, pattern="^[0-9A-Z]+$",
    ),
    _element(
        "DE0011", "违法行为代码", "Violation code", "道路交通安全违法行为的代码。",
        S, code_list="QIAO-VIOLATION",
    ),
    _element(
        "DE0012", "违法行为描述", "Violation description", "违法行为的文字描述。",
        S, min_length=1, max_length=200,
    ),
    _element(
        "DE0013", "违法时间", "Violation time", "违法行为发生的时间,带时区偏移。", DT,
    ),
    _element(
        "DE0014", "违法地点", "Violation place", "违法行为发生的地点描述。",
        S, min_length=1, max_length=200,
    ),
    _element(
        "DE0015", "罚款金额", "Fine (yuan)", "对违法行为处以的罚款,单位为元。", INT,
    ),
    _element(
        "DE0016", "记分分值", "Penalty points", "按《道路交通安全违法行为记分管理办法》的记分。",
        INT,
    ),
    _element(
        "DE0017", "处理标记", "Handled", "违法记录是否已处理完毕。", B,
    ),
    _element(
        "DE0018", "事故编号", "Accident number", "公安交通管理部门为道路交通事故分配的编号。",
        S, min_length=1, max_length=32, pattern="^[0-9A-Z]+$",
    ),
    _element(
        "DE0019", "事故发生时间", "Accident time", "道路交通事故发生的时间,带时区偏移。", DT,
    ),
    _element(
        "DE0020", "事故地点", "Accident place", "道路交通事故发生的地点描述。",
        S, min_length=1, max_length=200,
    ),
    _element(
        "DE0021", "事故形态代码", "Accident type", "道路交通事故的形态。",
        S, code_list="QIAO-ACCIDENT-TYPE",
    ),
    _element(
        "DE0022", "事故等级代码", "Accident severity", "按人员伤亡和财产损失划分的事故等级。",
        S, code_list="QIAO-ACCIDENT-SEVERITY",
    ),
    _element("DE0023", "死亡人数", "Deaths", "事故造成的死亡人数。", INT),
    _element("DE0024", "受伤人数", "Injured", "事故造成的受伤人数。", INT),
    _element("DE0025", "涉事车辆数", "Vehicles involved", "事故涉及的机动车和非机动车数量。", INT),
    _element(
        "DE0026", "辖区名称", "District", "县级行政区或公安分局辖区的名称。",
        S, min_length=1, max_length=50,
    ),
    # --- enterprises ----------------------------------------------------------------------
    _element(
        "DE0027", "统一社会信用代码", "Unified social credit code",
        "按 GB 32100-2015 编制的18位法人和其他组织统一社会信用代码。",
        S, format=Format.USCC, min_length=18, max_length=18,
    ),
    _element(
        "DE0028", "单位名称", "Organization name", "法人或其他组织在登记机关登记的名称。",
        S, min_length=1, max_length=200,
    ),
    _element(
        "DE0029", "注册资本", "Registered capital (10,000 yuan)", "企业的注册资本,单位为万元。",
        INT,
    ),
    _element("DE0030", "成立日期", "Date of establishment", "企业营业执照签发的成立日期。", D),
    _element(
        "DE0031", "登记状态", "Registration status", "企业在登记机关的当前状态。",
        S, code_list="QIAO-ENTERPRISE-STATUS",
    ),
    _element(
        "DE0032", "信用风险分类", "Credit risk class", "市场监管部门对企业的信用风险分类结果。",
        S, code_list="QIAO-CREDIT-RATING",
    ),
    # --- public bicycles ------------------------------------------------------------------
    _element(
        "DE0033", "站点编号", "Station number", "公共自行车站点的编号。",
        S, min_length=1, max_length=20, pattern="^[A-Z0-9]+$",
    ),
    _element(
        "DE0034", "站点名称", "Station name", "公共自行车站点的名称。",
        S, min_length=1, max_length=100,
    ),
    _element("DE0035", "车位数", "Docks", "站点的锁车桩总数。", INT),
    _element("DE0036", "可借车辆数", "Bikes available", "统计时刻站点可借出的自行车数量。", INT),
    # --- epidemic statistics --------------------------------------------------------------
    _element("DE0037", "统计日期", "Statistics date", "统计数据所属的日期。", D),
    _element("DE0038", "新增确诊病例数", "New cases", "统计日新增报告的确诊病例数。", INT),
    _element("DE0039", "治愈出院人数", "Recovered", "统计日治愈出院的人数。", INT),
    # --- services -------------------------------------------------------------------------
    _element(
        "DE0040", "身份核验结果", "Identity verification result",
        "所提交的公民身份号码与姓名是否与户籍登记一致。", B, personal=True,
    ),
)  # fmt: skip


@cache
def standard_catalog() -> Catalog:
    """Qiao's shipped code lists and data elements, as a catalog bundle to publish."""
    return Catalog(code_lists=CODE_LISTS, data_elements=DATA_ELEMENTS)
