"""A hub registry with three organizations and a small catalog vocabulary."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from qiao.catalog.service import CatalogService
from qiao.catalog.spec import Code, CodeList, DataElement, ResourceSpec
from qiao.db import make_engine, migrate, session_factory
from qiao.identity.roles import CLI
from qiao.registry.services import HubKeys, RegistryService

A = "91350100M000100Y43"
B = "12350100MB00010016"


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> RegistryService:
    migrate("hub", db_url)
    keys = HubKeys.load_or_create(tmp_path / "keys", "CN-T")
    reg = RegistryService(
        session_factory(make_engine(db_url)), keys, instance="CN-T", token_ttl=timedelta(hours=1)
    )
    reg.add_organization(A, "市公安局")
    reg.add_organization(B, "市市场监督管理局")
    return reg


SEX = CodeList(
    identifier="GB/T 2261.1",
    name="人的性别代码",
    standard="GB/T 2261.1-2003",
    codes=(Code(value="1", label="男性"), Code(value="2", label="女性")),
)
ELEMENTS = (
    DataElement(
        identifier="DE0001",
        name="公民身份号码",
        definition="GB 11643",
        type="string",
        format="citizen-id",
    ),
    DataElement(identifier="DE0002", name="姓名", definition="姓名", type="string", max_length=50),
    DataElement(
        identifier="DE0003",
        name="性别代码",
        definition="性别",
        type="string",
        code_list="GB/T 2261.1",
    ),
    DataElement(identifier="DE0004", name="违法行为代码", definition="违法", type="string"),
    DataElement(
        identifier="DE0005", name="机动车号牌号码", definition="号牌", type="string", format="plate"
    ),
)


def spec(**over: Any) -> ResourceSpec:
    base: dict[str, Any] = {
        "code": "traffic-violations",
        "name": "机动车交通违法记录",
        "provider": A,
        "abstract": "本市机动车道路交通安全违法行为记录，含违法时间、地点和处理状态。",
        "classification": "departmental",
        "items": [
            {"field": "plate", "name": "号牌号码", "element": "DE0005"},
            {"field": "violation", "name": "违法行为", "element": "DE0004"},
        ],
        "sharing_type": "conditional",
        "sharing_conditions": "仅用于行政审批核查",
        "legal_basis": "《中华人民共和国道路交通安全法》第一百零五条",
        "keywords": ["交通", "违法"],
    }
    base.update(over)
    return ResourceSpec.model_validate(base)


@pytest.fixture
def catalog(registry: RegistryService) -> CatalogService:
    svc = CatalogService(registry)
    svc.publish_code_list(CLI, SEX)
    for el in ELEMENTS:
        svc.publish_element(CLI, el)
    return svc
