"""``qiao request``, ``approve``, ``refuse``, ``requests`` and ``agreements`` end to end, against
a hub's data directory, with ``--as`` checked as the API checks it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from qiao.cli import app
from qiao.config import HubSettings
from qiao.demo.processes import write_toml
from qiao.hub.app import open_registry
from qiao.identity.roles import CLI, Role
from qiao.identity.service import IdentityService
from qiao.registry.models import AdminEvent
from qiao.registry.services import RegistryService
from tests.agreements.conftest import (
    CONDITIONAL,
    MARKET,
    NOT_SHARED,
    POLICE,
    TRANSPORT,
    UNCONDITIONAL,
    populate,
)

runner = CliRunner()


@dataclass
class Hub:
    config: str
    registry: RegistryService


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as their content, so that ids are not wrapped across lines."""
    import qiao.cli

    monkeypatch.setattr(qiao.cli.console, "width", 240)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    cfg = write_toml(
        tmp_path / "hub.toml",
        {
            "data_dir": str(tmp_path),
            "instance": "CN-T",
            "argon2_memory_kib": 8,
            "argon2_time_cost": 1,
            "argon2_parallelism": 1,
        },
    )
    settings = HubSettings.load(cfg)
    registry = open_registry(settings)
    populate(registry)
    identity = IdentityService(registry, settings)
    for username, org, role in (
        ("market-dev", MARKET, Role.APP_DEVELOPER),
        ("market-approver", MARKET, Role.APPROVER),
        ("market-admin", MARKET, Role.ORG_ADMIN),
        ("police-approver", POLICE, Role.APPROVER),
        ("transport-admin", TRANSPORT, Role.ORG_ADMIN),
    ):
        identity.add_user(
            CLI, username, org=org, roles=frozenset({role}), password="Bridge-pass-123"
        )
    return Hub(str(cfg), registry)


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


def _request(hub: Hub) -> str:
    code, out = _run(
        "request", POLICE, CONDITIONAL, "--config", hub.config, "--as", "market-dev",
        "--purpose", "market-supervision", "--purpose-text", "核查运输企业车辆违法情况",
        "--legal-basis", "《道路运输条例》第二十二条", "--field", "plate", "--field", "code",
        "--field", "driver_mobile", "--days", "180", "--quota", "5000",
    )  # fmt: skip
    assert code == 0, out
    assert "working day(s) left" in out
    match = re.search(r"submitted (req-[0-9a-z]+)", out)
    assert match, out
    return match.group(1)


def test_request_approve_and_manage_the_agreement(hub: Hub) -> None:
    req = _request(hub)
    base = ["--config", hub.config]
    code, out = _run("requests", *base, "list", "--inbox", "--as", "police-approver")
    assert code == 0 and req in out and "1 request(s)" in out
    code, out = _run("requests", *base, "list", "--inbox", "--as", "market-dev")
    assert code == 0 and req not in out and "0 request(s)" in out
    # An approver of the applying organization: refused, as the API refuses it.
    code, out = _run("approve", req, *base, "--as", "market-approver")
    assert code == 1 and "error" in out and POLICE in out
    code, out = _run("approve", req, *base, "--as", "police-approver", "--field", "fine")
    assert code == 1 and "field 'fine'" in out
    # A path under an item is not an item: it would escape the item's default masking.
    code, out = _run(
        "approve", req, *base, "--as", "police-approver", "--mask", "driver_mobile[]=suppress"
    )
    assert code == 1 and "driver_mobile[]" in out and "plate" in out
    # Without --as, the platform administrator does not decide for the provider.
    for args in (("approve", req), ("refuse", req, "--reason", "不符")):
        code, out = _run(*args, *base)
        assert code == 1 and POLICE in out and "--as USER" in out, out
    code, out = _run(
        "approve", req, *base, "--as", "police-approver", "--field", "plate",
        "--field", "driver_mobile", "--mask", "plate=plate", "--days", "90",
    )  # fmt: skip
    assert code == 0, out
    match = re.search(r"agreement (agr-[0-9a-z]+)", out)
    assert match, out
    agr = match.group(1)
    assert "driver_mobile=mobile" in out and "plate=plate" in out
    code, out = _run("approve", req, *base, "--as", "police-approver")
    assert code == 1 and "already approved" in out
    with hub.registry._sessions() as s:
        actors = {
            e.action: e.actor
            for e in s.scalars(select(AdminEvent).where(AdminEvent.action.like("%.%")))
        }
    assert actors["request.submit"] == "user:market-dev"
    assert actors["agreement.create"] == "user:police-approver"

    code, out = _run("agreements", *base, "list", "--as", "market-dev")
    assert code == 0 and agr in out and "1 agreement(s)" in out
    code, out = _run("agreements", *base, "list", "--as", "transport-admin")
    assert code == 0 and "0 agreement(s)" in out
    code, out = _run("agreements", *base, "show", agr, "--as", "transport-admin")
    assert code == 1 and "parties" in out
    code, shown = _run("agreements", *base, "show", agr, "--json")
    assert code == 0
    sha = json.loads(shown)["sha256"]
    r = runner.invoke(app, ["agreements", *base, "export", agr, "--as", "market-dev"])
    assert r.exit_code == 0 and hashlib.sha256(r.stdout_bytes).hexdigest() == sha
    r = runner.invoke(app, ["agreements", *base, "export", agr, "--odrl"])
    assert r.exit_code == 0, r.output
    assert "@context" in json.loads(r.stdout)

    code, out = _run("agreements", *base, "suspend", agr, "--as", "police-approver", "--reason", "")
    assert code == 1 and "reason" in out
    code, out = _run(
        "agreements", *base, "suspend", agr, "--as", "market-admin", "--reason", "暂停"
    )
    assert code == 1
    code, out = _run(
        "agreements", *base, "suspend", agr, "--as", "police-approver", "--reason", "核查"
    )
    assert code == 0 and "now suspended" in out
    code, out = _run("agreements", *base, "resume", agr, "--as", "police-approver")
    assert code == 0 and "now active" in out
    # The platform administrator suspends and resumes (to stop sharing), never renews.
    code, out = _run("agreements", *base, "suspend", agr, "--reason", "运维核查")
    assert code == 0 and "now suspended" in out
    code, out = _run("agreements", *base, "resume", agr)
    assert code == 0 and "now active" in out
    code, out = _run("agreements", *base, "renew", agr, "--days", "30")
    assert code == 1 and "--as USER" in out
    code, out = _run("agreements", *base, "renew", agr, "--as", "police-approver", "--days", "30")
    assert code == 0 and f"renewed {agr}" in out
    # Asked for longer than the original's 90 days, a renewal lasts 90.
    code, out = _run("agreements", *base, "renew", agr, "--as", "police-approver", "--days", "400")
    assert code == 0, out
    renewal = re.search(r"renewed \S+: agreement (agr-[0-9a-z]+)", out)
    assert renewal, out
    code, shown = _run("agreements", *base, "show", renewal.group(1), "--json")
    assert code == 0
    doc = json.loads(shown)["document"]
    length = datetime.fromisoformat(doc["valid_until"]) - datetime.fromisoformat(doc["valid_from"])
    assert length.days == 90
    code, out = _run(
        "agreements", *base, "revoke", agr, "--as", "market-admin", "--reason", "业务终止"
    )
    assert code == 0 and "now revoked" in out
    code, out = _run("agreements", *base, "resume", agr, "--as", "police-approver")
    assert code == 1 and "revoked" in out
    code, out = _run("agreements", *base, "list", "--state", "revoked")
    assert code == 0 and agr in out and "1 agreement(s)" in out


def test_refuse_needs_a_reason(hub: Hub) -> None:
    req = _request(hub)
    base = ["--config", hub.config]
    code, out = _run("refuse", req, *base, "--as", "police-approver", "--reason", " ")
    assert code == 1 and "reason" in out
    code, out = _run("refuse", req, *base, "--as", "police-approver", "--reason", "用途不符")
    assert code == 0 and f"refused {req}" in out
    code, out = _run("requests", *base, "list", "--mine", "--as", "market-dev")
    assert code == 0 and "refused" in out
    code, out = _run("requests", *base, "show", req, "--as", "market-dev")
    assert code == 0 and json.loads(out)["reason"] == "用途不符"


def test_subscribe_non_shared_and_bad_input(hub: Hub) -> None:
    base = ["--config", hub.config]
    code, out = _run(
        "request", POLICE, UNCONDITIONAL, *base, "--as", "market-dev",
        "--purpose", "road-safety", "--subscribe",
    )  # fmt: skip
    assert code == 0 and "subscribed: agreement agr-" in out
    code, out = _run(
        "request", POLICE, NOT_SHARED, *base, "--as", "market-dev", "--purpose", "x",
        "--purpose-text", "查询", "--legal-basis", "无",
    )  # fmt: skip
    assert code == 1 and "不予共享" in out
    code, out = _run("request", POLICE, CONDITIONAL, *base, "--as", "nobody", "--purpose", "x")
    assert code == 1 and "nobody" in out
    # Without --as the command is the platform administrator, who does not act for an
    # organization: applying and subscribing need a person of the consumer, named by --as.
    code, out = _run(
        "request", POLICE, CONDITIONAL, *base, "--purpose", "x",
        "--purpose-text", "查询", "--legal-basis", "《条例》",
    )  # fmt: skip
    assert code == 1 and "consuming organization" in out and "--as USER" in out
    code, out = _run("request", POLICE, UNCONDITIONAL, *base, "--purpose", "x", "--subscribe")
    assert code == 1 and "--as USER" in out
    # --consumer is gone: a person applies for their own organization only.
    code, out = _run(
        "request", POLICE, CONDITIONAL, *base, "--as", "transport-admin", "--purpose", "x",
        "--consumer", MARKET, "--purpose-text", "查询", "--legal-basis", "《条例》",
    )  # fmt: skip
    assert code == 2 and "--consumer" in out
    code, out = _run(
        "request", POLICE, CONDITIONAL, *base, "--as", "transport-admin", "--purpose", "x",
        "--purpose-text", "查询", "--legal-basis", "《条例》",
    )  # fmt: skip
    assert code == 0 and "submitted req-" in out and TRANSPORT in out
    req = re.search(r"(req-[0-9a-z]+)", out)
    assert req
    code, out = _run("approve", req.group(1), *base, "--mask", "plate")
    assert code == 1 and "FIELD=RULE" in out
    code, out = _run("approve", req.group(1), *base, "--mask", "plate=blur")
    assert code == 1 and "citizen-id" in out
    code, out = _run("requests", *base, "list", "--inbox", "--mine")
    assert code == 1
    code, out = _run("requests", *base, "withdraw", req.group(1), "--as", "market-dev")
    assert code == 1
    code, out = _run("requests", *base, "withdraw", req.group(1), "--as", "transport-admin")
    assert code == 0 and "withdrew" in out
