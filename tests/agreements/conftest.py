"""A hub with three fictional organizations and a catalog of one conditional (有条件共享), one
unconditional (无条件共享) and one non-shared (不予共享) resource, plus one registered resource
the catalog does not describe; for the hub-side agreement tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qiao.agreements.service import AgreementService, Application
from qiao.catalog.service import CatalogService
from qiao.catalog.spec import ResourceSpec, SharingType
from qiao.identity.roles import CLI, Principal, Role
from qiao.registry.services import RegistryService
from tests.catalog.violations import violation_catalog

POLICE = "91350100M000100Y43"  # 市公安局: provides violations, case files, accident maps
MARKET = "12350100MB00010016"  # 市市场监督管理局: a consumer
TRANSPORT = "11350100MB0002000D"  # 市交通运输局: another consumer
CONDITIONAL = "vehicle-violations"
UNCONDITIONAL = "accident-blackspots"
NOT_SHARED = "case-files"
UNCATALOGUED = "plate-lookup"
# Monday 2026-11-30 10:00 CST: 10 working days later is Monday 2026-12-14 (no holidays).
MONDAY = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def user(org: str | None, *roles: Role, name: str = "") -> Principal:
    """A signed-in person of ``org`` holding ``roles``."""
    label = name or f"{(org or 'platform')[:6]}-{'-'.join(r.value for r in roles)}"
    return Principal(f"user:{label}", frozenset(roles), org=org, kind="user")


def specs() -> tuple[list[ResourceSpec], Any, Any]:
    """The three catalogued resources of the police and the vocabulary they use."""
    spec, elements, code_lists = violation_catalog()
    base = spec.model_dump(mode="json", exclude={"version", "status"})
    conditional = ResourceSpec.model_validate(base)
    unconditional = ResourceSpec.model_validate(
        {
            **base,
            "code": UNCONDITIONAL,
            "name": "交通事故多发路段",
            "sharing_type": SharingType.UNCONDITIONAL.value,
            "sharing_conditions": "",
        }
    )
    not_shared = ResourceSpec.model_validate(
        {
            **base,
            "code": NOT_SHARED,
            "name": "刑事案件卷宗",
            "sharing_type": SharingType.NONE.value,
            "sharing_conditions": "",
            "legal_basis": "《刑事诉讼法》第一百五十二条",
        }
    )
    return [conditional, unconditional, not_shared], elements, code_lists


def populate(registry: RegistryService) -> CatalogService:
    registry.add_organization(POLICE, "市公安局")
    registry.add_organization(MARKET, "市市场监督管理局")
    registry.add_organization(TRANSPORT, "市交通运输局")
    registry.add_app(MARKET, "credit-check")
    registry.add_app(MARKET, "licensing")
    registry.add_resource(POLICE, UNCATALOGUED, "号牌查询（未编目）")
    catalog = CatalogService(registry)
    resources, elements, code_lists = specs()
    for cl in code_lists.values():
        catalog.publish_code_list(CLI, cl)
    for el in elements.values():
        catalog.publish_element(CLI, el)
    for spec in resources:
        catalog.publish(CLI, spec)
    return catalog


def application(**over: Any) -> Application:
    base: dict[str, Any] = {
        "purposes": ["market-supervision"],
        "purpose_text": "核查申请营业执照的运输企业车辆违法情况",
        "legal_basis": "《道路运输条例》第二十二条",
        "fields": ["plate", "code", "occurred_at", "driver_mobile"],
        "methods": ["GET"],
        "paths": ["", "*"],
        "apps": ["credit-check"],
        "valid_days": 180,
        "daily_quota": 5000,
        "rate_limit": {"requests": 20, "per_seconds": 1},
    }
    base.update(over)
    return Application.model_validate(base)


@dataclass
class World:
    registry: RegistryService
    service: AgreementService
    data_dir: Path

    # The cast: each holds one role in one organization.
    approver = user(POLICE, Role.APPROVER, name="police-approver")
    police_admin = user(POLICE, Role.ORG_ADMIN, name="police-admin")
    police_auditor = user(POLICE, Role.AUDITOR, name="police-auditor")
    applicant = user(MARKET, Role.APP_DEVELOPER, name="market-developer")
    market_admin = user(MARKET, Role.ORG_ADMIN, name="market-admin")
    market_approver = user(MARKET, Role.APPROVER, name="market-approver")
    market_security = user(MARKET, Role.SECURITY_OFFICER, name="market-security")
    transport_admin = user(TRANSPORT, Role.ORG_ADMIN, name="transport-admin")
    platform = CLI


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> World:
    from qiao.db import make_engine, migrate, session_factory
    from qiao.registry.services import HubKeys

    migrate("hub", db_url)
    keys = HubKeys.load_or_create(tmp_path / "keys", "CN-T")
    registry = RegistryService(session_factory(make_engine(db_url)), keys, instance="CN-T")
    populate(registry)
    return World(registry, AgreementService(registry), tmp_path / "keys")
