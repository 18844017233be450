"""Catalog search at city-catalog scale: 100,000 resources on SQLite and on PostgreSQL.

Generates a fictional catalog (fixed seed; Chinese names, abstracts and items drawn from the
vocabulary of government information resource catalogs), loads it with bulk inserts through
the real migrations and indexes, then runs a mix of queries — 1-, 2- and 3+-character text,
with filters, deep pages, no match — through ``qiao.catalog.search`` and prints p50/p95/p99
per backend and per query kind as JSON. The target is p95 < 50 ms on both.

    .venv/bin/python bench/catalog_search.py [--resources 100000] [--repeat 30]
        [--pg postgresql://postgres@127.0.0.1:5432/test] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.catalog.models import CatalogResource
from qiao.catalog.search import SearchQuery, search, search_text, short_grams
from qiao.catalog.spec import Classification, SharingMethod, SharingType
from qiao.db import make_engine, migrate, session_factory
from qiao.demo.people import make_uscc
from qiao.registry.models import Organization, Resource

SEED = 20261129
AREAS = ["市", "区", "县", "街道", "乡镇", "开发区", "新区", "自贸区"]
DEPARTMENTS = [
    "公安局",
    "交通运输局",
    "市场监督管理局",
    "民政局",
    "人力资源和社会保障局",
    "自然资源局",
    "住房和城乡建设局",
    "卫生健康委员会",
    "教育局",
    "税务局",
    "医疗保障局",
    "生态环境局",
    "应急管理局",
    "农业农村局",
    "水务局",
    "商务局",
    "文化广电旅游局",
    "退役军人事务局",
    "司法局",
    "财政局",
    "统计局",
    "审计局",
    "城市管理局",
    "住房公积金管理中心",
    "残疾人联合会",
    "不动产登记中心",
    "政务服务数据管理局",
    "气象局",
    "消防救援支队",
    "海关",
]
SUBJECTS = [
    "机动车",
    "驾驶人",
    "企业",
    "个体工商户",
    "社会组织",
    "户籍人口",
    "流动人口",
    "学生",
    "教师",
    "医疗机构",
    "药品",
    "食品生产企业",
    "建设工程",
    "不动产",
    "房屋",
    "土地",
    "林地",
    "河道",
    "排污单位",
    "危险化学品",
    "特种设备",
    "道路",
    "公交线路",
    "出租汽车",
    "网约车",
    "养老机构",
    "低保对象",
    "残疾人",
    "退役军人",
    "参保人员",
    "纳税人",
    "律师",
    "公证机构",
    "旅游景区",
    "文物",
    "公共自行车",
    "停车场",
    "农产品",
    "渔船",
    "气象站点",
]
RECORDS = [
    "登记信息",
    "许可信息",
    "违法记录",
    "处罚信息",
    "年报信息",
    "缴存信息",
    "备案信息",
    "检查结果",
    "抽检结果",
    "信用评价",
    "基本信息",
    "变更记录",
    "注销信息",
    "统计数据",
    "监测数据",
    "资质信息",
    "补贴发放记录",
    "核验结果",
    "证照信息",
    "投诉举报记录",
]
PHRASES = [
    "数据来源于业务系统实时归集",
    "按日更新并经质量校验",
    "仅限依法履职使用",
    "包含统一社会信用代码和名称",
    "覆盖全市范围",
    "支持按证件号码精确查询",
    "可用于行政审批和监管核查",
    "含办理时间、地点和状态",
    "历史数据自二〇一五年起",
    "涉及个人信息的字段已分级",
    "用于一网通办材料免提交",
    "与省级平台同步",
    "经部门数据管理员审核发布",
    "用于双随机一公开监管",
    "支持批量数据集下载",
]
ITEMS = [
    "统一社会信用代码",
    "单位名称",
    "法定代表人",
    "公民身份号码",
    "姓名",
    "性别",
    "出生日期",
    "联系电话",
    "住址",
    "登记日期",
    "有效期至",
    "许可证编号",
    "违法行为代码",
    "处罚决定书文号",
    "罚款金额",
    "号牌号码",
    "号牌种类",
    "车辆识别代号",
    "经营范围",
    "注册资本",
    "行政区划代码",
    "不动产单元号",
    "建筑面积",
    "缴存基数",
    "缴存比例",
    "参保状态",
    "检查结论",
    "抽检项目",
    "信用等级",
    "办理状态",
    "经度",
    "纬度",
    "监测时间",
    "监测值",
    "备注",
]
KEYWORDS = ["监管", "审批", "民生", "信用", "交通", "医疗", "教育", "社保", "税务", "环境"]

QUERIES: dict[str, list[SearchQuery]] = {
    "1-char": [SearchQuery(t) for t in ("证", "车", "税", "鱼", "码")],
    "2-char": [SearchQuery(t) for t in ("违法", "企业", "户籍", "抽检", "渔船")],
    "3+char": [
        SearchQuery(t) for t in ("营业执照", "不动产登记", "公积金", "机动车违法记录", "危险化学品")
    ],
    "filtered": [
        SearchQuery("违法", sharing_type=SharingType.CONDITIONAL),
        SearchQuery("信息", classification=Classification.BASIC),
        SearchQuery("登记信息", sharing_method=SharingMethod.DATASET),
        SearchQuery("", sharing_type=SharingType.NONE, classification=Classification.THEMATIC),
    ],
    "provider": [],  # filled in once the organizations exist
    "paged": [
        SearchQuery("信息", offset=500),
        SearchQuery("车", offset=960, limit=40),
        SearchQuery("", offset=980),
        SearchQuery("监测数据", offset=200),
    ],
    "no-match": [SearchQuery(t) for t in ("不存在的资源名称", "乾", "'; DROP TABLE x; --")],
}


def generate(url: str, n: int) -> tuple[list[str], float]:
    """Create the schema and load ``n`` resources; returns (org codes, seconds)."""
    rng = random.Random(SEED)
    started = time.perf_counter()
    migrate("hub", url)
    engine = make_engine(url)
    orgs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for area in AREAS[:3]:
        for dept in DEPARTMENTS:
            code = make_uscc(rng, "1", "1", "440300")
            while code in seen:
                code = make_uscc(rng, "1", "1", "440300")
            seen.add(code)
            orgs.append((code, f"桥城{area}{dept}"))
    with engine.begin() as c:
        c.execute(insert(Organization), [{"code": o, "name": name} for o, name in orgs])
    sharing = [t.value for t in SharingType]
    classes = [k.value for k in Classification]
    batch = 5000
    for start in range(0, n, batch):
        res_rows, cat_rows = [], []
        for i in range(start, min(n, start + batch)):
            org, org_name = orgs[rng.randrange(len(orgs))]
            name = f"{rng.choice(AREAS)}{rng.choice(SUBJECTS)}{rng.choice(RECORDS)}"
            abstract = "，".join(rng.sample(PHRASES, 3)) + "。"
            items = rng.sample(ITEMS, rng.randint(5, 12))
            methods = rng.sample([m.value for m in SharingMethod], rng.randint(1, 2))
            code = f"r{i:06d}"
            res_rows.append({"id": i + 1, "org_code": org, "code": code, "name": name})
            cat_rows.append(
                {
                    "resource_id": i + 1,
                    "org_code": org,
                    "code": code,
                    "name": name,
                    "provider_name": org_name,
                    "sharing_type": rng.choice(sharing),
                    "classification": rng.choice(classes),
                    "sharing_methods": "," + ",".join(methods) + ",",
                    "status": "published" if rng.random() < 0.95 else "deprecated",
                    "latest_version": rng.randint(1, 4),
                    "short_grams": "",
                    "search_text": search_text(
                        name=name,
                        name_en="",
                        abstract=abstract,
                        keywords=tuple(rng.sample(KEYWORDS, 2)),
                        provider_name=org_name,
                        item_names=items,
                        element_names=items,
                    ),
                }
            )
        for row in cat_rows:
            row["short_grams"] = short_grams(row["search_text"])
        with engine.begin() as c:
            c.execute(insert(Resource), res_rows)
            c.execute(insert(CatalogResource), cat_rows)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(text("SELECT setval('resources_id_seq', (SELECT max(id) FROM resources))"))
            c.execute(text("ANALYZE"))
        else:
            c.execute(text("ANALYZE"))
    engine.dispose()
    return [o for o, _ in orgs], time.perf_counter() - started


def run(url: str, n: int, repeat: int) -> dict[str, Any]:
    orgs, load_seconds = generate(url, n)
    QUERIES["provider"] = [
        SearchQuery("信息", provider=orgs[0]),
        SearchQuery("", provider=orgs[5], limit=50),
        SearchQuery("违法", provider=orgs[7]),
    ]
    engine = make_engine(url)
    sessions = session_factory(engine)
    out: dict[str, Any] = {"resources": n, "load_seconds": round(load_seconds, 1), "kinds": {}}
    with sessions() as s:
        assert s.scalar(select(CatalogResource.id).limit(1)) is not None
        for q in (q for qs in QUERIES.values() for q in qs):  # warm caches once
            search(s, q)
        for kind, queries in QUERIES.items():
            times: list[float] = []
            totals = []
            slowest: dict[str, float] = {}
            for _ in range(repeat):
                for q in queries:
                    t0 = time.perf_counter()
                    page = search(s, q)
                    ms = (time.perf_counter() - t0) * 1000
                    times.append(ms)
                    totals.append(page.total)
                    label = f"{q.text!r} offset={q.offset}"
                    slowest[label] = max(slowest.get(label, 0.0), ms)
            times.sort()
            out["kinds"][kind] = {
                "queries": len(times),
                "p50_ms": round(statistics.median(times), 2),
                "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
                "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2),
                "matches": sorted(set(totals))[:3] + ["…"] * (len(set(totals)) > 3),
                "slowest": max(slowest, key=lambda k: slowest[k]),
            }
    engine.dispose()
    all_p95 = max(k["p95_ms"] for k in out["kinds"].values())
    out["worst_p95_ms"] = all_p95
    out["target_met"] = all_p95 < 50
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    result: dict[str, Any] = {}
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = run(f"sqlite:///{tmp}/bench.db", args.resources, args.repeat)
    if args.only in (None, "postgres"):
        import psycopg

        name = f"qiao_bench_{uuid.uuid4().hex[:8]}"
        admin = args.pg
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = admin.rsplit("/", 1)[0] + "/" + name
            result["postgres"] = run(url, args.resources, args.repeat)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
