"""The demo city's resources (信息资源), as its data stewards would catalog them.

Each resource's items describe exactly what the department's demo backend
(``qiao.demo.backends``) returns — the same field names, types and formats, with the records
at ``records_at`` — because provider nodes validate every response against the JSON Schema
derived from these items and refuse what the catalog does not describe. The data elements and
code lists they bind to are Qiao's shipped standards (``qiao.catalog.standards``), published
before these resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from qiao.catalog.spec import (
    Catalog,
    Classification,
    Item,
    Openness,
    ResourceSpec,
    SharingMethod,
    SharingType,
    StreamSpec,
    UpdateCycle,
)

__all__ = ["demo_catalog"]

PUBLISHED = date(2026, 11, 1)


def _item(field: str, name: str, element: str, required: bool = True, desc: str = "") -> Item:
    return Item(field=field, name=name, element=element, required=required, description=desc)


def demo_catalog(codes: Mapping[str, str]) -> Catalog:
    """The resources of 桥城's departments; ``codes`` maps department keys (``police``,
    ``transport``, ``market``, ``health``) to their unified social credit codes."""
    police, transport = codes["police"], codes["transport"]
    market, health = codes["market"], codes["health"]
    # Listed so that a resource comes after those it relates to: the hub checks that related
    # resources exist when it publishes.
    resources = (
        ResourceSpec(
            code="traffic-accidents",
            name="道路交通事故信息",
            name_en="Road traffic accidents",
            provider=police,
            abstract=(
                "本市道路交通事故的基本信息:事故编号、发生时间、辖区、地点、事故形态、事故等级、"
                "伤亡人数和涉事车辆数,可按辖区和日期查询;实时推送的事故信息另含第一当事方的"
                "车辆号牌和公民身份号码,按共享协议脱敏后提供。"
            ),
            classification=Classification.THEMATIC,
            items=(
                _item("accident_id", "事故编号", "DE0018"),
                _item("occurred_at", "发生时间", "DE0019"),
                _item("district", "辖区", "DE0026"),
                _item("location", "事故地点", "DE0020"),
                _item("accident_type", "事故形态", "DE0021"),
                _item("severity", "事故等级", "DE0022"),
                _item("deaths", "死亡人数", "DE0023"),
                _item("injuries", "受伤人数", "DE0024"),
                _item("vehicles", "涉事车辆数", "DE0025"),
                # Known once officers reach the scene; personal, so masked by default.
                _item("party_plate", "第一当事方车辆号牌", "DE0008", required=False),
                _item("party_citizen_id", "第一当事人公民身份号码", "DE0001", required=False),
            ),
            records_at="/accidents",
            sharing_type=SharingType.UNCONDITIONAL,
            sharing_methods=(SharingMethod.SERVICE, SharingMethod.EVENTS, SharingMethod.DATASET),
            # Published to transport as they happen (issue 7): one accident's updates in order.
            stream=StreamSpec(partition_key="accident_id", retention_hours=72),
            openness=Openness.CONDITIONAL,
            update_cycle=UpdateCycle.DAILY,
            published_on=PUBLISHED,
            keywords=("交通事故", "道路安全", "伤亡"),
        ),
        ResourceSpec(
            code="vehicle-violations",
            name="机动车违法记录查询",
            name_en="Motor vehicle violation records",
            provider=police,
            abstract=(
                "按机动车号牌号码查询该车在本市的道路交通安全违法记录,包括违法代码、时间、地点、"
                "罚款金额、记分和处理状态。供交通运输、保险理赔等部门核查车辆违法情况。"
            ),
            classification=Classification.THEMATIC,
            items=(
                _item("record_id", "违法记录编号", "DE0010"),
                _item("plate", "号牌号码", "DE0008"),
                _item("code", "违法代码", "DE0011"),
                _item("description", "违法行为", "DE0012"),
                _item("occurred_at", "违法时间", "DE0013"),
                _item("location", "违法地点", "DE0014"),
                _item("fine_yuan", "罚款金额(元)", "DE0015"),
                _item("points", "记分", "DE0016"),
                _item("handled", "是否已处理", "DE0017"),
            ),
            records_at="/violations",
            sharing_type=SharingType.CONDITIONAL,
            sharing_conditions="仅限履行交通运输执法、营运车辆监管职责时按号牌逐一查询,不得批量下载。",
            legal_basis="《中华人民共和国道路交通安全法》第一百零八条;《政务数据共享条例》",
            sharing_methods=(SharingMethod.SERVICE,),
            openness=Openness.CLOSED,
            update_cycle=UpdateCycle.REALTIME,
            published_on=PUBLISHED,
            related=("traffic-accidents",),
            keywords=("交通违法", "机动车", "号牌", "罚款"),
        ),
        ResourceSpec(
            code="identity-verification",
            name="身份核验",
            name_en="Identity verification",
            provider=police,
            abstract=(
                "核验公民身份号码与姓名是否一致,只返回一致与否,不返回任何户籍信息。"
                "用于办理政务服务、开立账户等需要实名核验的场景。"
            ),
            classification=Classification.BASIC,
            items=(_item("match", "核验结果", "DE0040", desc="身份号码与姓名一致时为 true"),),
            parameters=(
                _item("citizen_id", "公民身份号码", "DE0001"),
                _item("name", "姓名", "DE0002"),
            ),
            sharing_type=SharingType.CONDITIONAL,
            sharing_conditions=(
                "经本人授权或依法履职需要,逐人核验;申请方须说明业务场景并留存授权凭证。"
            ),
            legal_basis=(
                "《中华人民共和国居民身份证法》第十三条、第十九条;"
                "《中华人民共和国个人信息保护法》第十三条"
            ),
            sharing_methods=(SharingMethod.SERVICE,),
            openness=Openness.CLOSED,
            update_cycle=UpdateCycle.REALTIME,
            published_on=PUBLISHED,
            keywords=("身份核验", "实名认证", "居民身份证"),
        ),
        ResourceSpec(
            code="bike-stations",
            name="公共自行车站点状态",
            name_en="Public bicycle stations",
            provider=transport,
            abstract="全市公共自行车站点的编号、名称、锁车桩数量和实时可借车辆数。",
            classification=Classification.DEPARTMENTAL,
            items=(
                _item("station_id", "站点编号", "DE0033"),
                _item("name", "站点名称", "DE0034"),
                _item("capacity", "车位数", "DE0035"),
                _item("bikes_available", "可借车辆数", "DE0036"),
            ),
            records_at="/stations",
            sharing_type=SharingType.UNCONDITIONAL,
            sharing_methods=(SharingMethod.SERVICE, SharingMethod.EVENTS),
            stream=StreamSpec(partition_key="station_id", retention_hours=24),
            openness=Openness.OPEN,
            update_cycle=UpdateCycle.REALTIME,
            published_on=PUBLISHED,
            keywords=("公共自行车", "绿色出行", "站点"),
        ),
        ResourceSpec(
            code="enterprise-credit",
            name="企业登记与信用信息",
            name_en="Enterprise registration and credit",
            provider=market,
            abstract=(
                "按统一社会信用代码查询企业的登记信息(名称、法定代表人、注册资本、成立日期、"
                "登记状态、住所)和信用风险分类结果。"
            ),
            classification=Classification.BASIC,
            items=(
                _item("uscc", "统一社会信用代码", "DE0027"),
                _item("name", "企业名称", "DE0028"),
                _item("legal_representative", "法定代表人", "DE0002"),
                _item("registered_capital_wan_yuan", "注册资本(万元)", "DE0029"),
                _item("established", "成立日期", "DE0030"),
                _item("status", "登记状态", "DE0031"),
                _item("credit_rating", "信用风险分类", "DE0032"),
                _item("address", "住所", "DE0006"),
            ),
            sharing_type=SharingType.UNCONDITIONAL,
            sharing_methods=(SharingMethod.SERVICE,),
            openness=Openness.OPEN,
            update_cycle=UpdateCycle.DAILY,
            published_on=PUBLISHED,
            keywords=("企业", "信用", "营业执照", "统一社会信用代码"),
        ),
        ResourceSpec(
            code="epidemic-daily",
            name="每日疫情统计",
            name_en="Daily epidemic statistics",
            provider=health,
            abstract=(
                "本市法定传染病每日新增确诊病例数和治愈出院人数的汇总统计,不含个案信息。"
                "突发公共卫生事件期间按应急共享机制向相关部门提供。"
            ),
            classification=Classification.THEMATIC,
            items=(
                _item("date", "统计日期", "DE0037"),
                _item("new_cases", "新增确诊病例数", "DE0038"),
                _item("recovered", "治愈出院人数", "DE0039"),
            ),
            records_at="/days",
            sharing_type=SharingType.CONDITIONAL,
            sharing_conditions="用于疫情防控、应急处置和公共卫生决策,不得用于其他目的。",
            legal_basis=(
                "《中华人民共和国传染病防治法》第三十八条;《突发公共卫生事件应急条例》第二十五条"
            ),
            sharing_methods=(SharingMethod.SERVICE, SharingMethod.DATASET),
            openness=Openness.CONDITIONAL,
            update_cycle=UpdateCycle.DAILY,
            published_on=PUBLISHED,
            keywords=("疫情", "传染病", "统计", "应急"),
        ),
    )
    return Catalog(resources=resources)
