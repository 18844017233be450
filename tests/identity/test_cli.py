"""``qiao users ...`` on a hub's data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pyotp
from sqlalchemy import select
from typer.testing import CliRunner

from qiao.cli import app
from qiao.config import HubSettings
from qiao.demo.processes import write_toml
from qiao.hub.app import open_registry
from qiao.identity import mfa
from qiao.identity.service import IdentityService
from qiao.registry.models import AdminEvent

runner = CliRunner()
ORG = "91350100M000100Y43"


def _hub(tmp_path: Path) -> tuple[list[str], HubSettings]:
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
    open_registry(settings).add_organization(ORG, "甲局")
    return ["users", "--config", str(cfg)], settings


def test_users_add_list_disable_enable_roles(tmp_path: Path) -> None:
    users, settings = _hub(tmp_path)
    r = runner.invoke(app, [*users, "add", "zhang.san", "--org", ORG, "--roles", "data-steward",
                            "--name", "张三"])  # fmt: skip
    assert r.exit_code == 0, r.output
    password = r.stdout.strip().splitlines()[-1]
    assert len(password) >= 20
    ident = IdentityService(open_registry(settings), settings)
    assert ident.sign_in("zhang.san", password, client_address="x").user.name == "张三"
    # A password from stdin instead of a generated one.
    r = runner.invoke(
        app,
        [*users, "add", "li.si", "--org", ORG, "--roles", "auditor", "--password-stdin"],
        input="Bridge-over-river-9\n",
    )
    assert r.exit_code == 0, r.output
    assert "Bridge-over-river-9" not in r.output
    assert ident.sign_in("li.si", "Bridge-over-river-9", client_address="x")
    r = runner.invoke(app, [*users, "list"])
    assert r.exit_code == 0 and "zhang.san" in r.output and "li.si" in r.output
    assert runner.invoke(app, [*users, "disable", "li.si"]).exit_code == 0
    assert "disabled" in runner.invoke(app, [*users, "list", "--org", ORG]).output
    assert runner.invoke(app, [*users, "enable", "li.si"]).exit_code == 0
    r = runner.invoke(app, [*users, "roles", "li.si", "auditor,approver"])
    assert r.exit_code == 0 and "approver,auditor" in r.output
    # Bad input: unknown role, weak password, unknown user, unknown organization.
    r = runner.invoke(app, [*users, "add", "x1", "--org", ORG, "--roles", "king"])
    assert r.exit_code == 2 and "unknown role" in r.output
    r = runner.invoke(app, [*users, "add", "x2", "--org", ORG, "--roles", "auditor",
                            "--password-stdin"], input="short\n")  # fmt: skip
    assert r.exit_code == 2 and "weak-password" in r.output
    assert runner.invoke(app, [*users, "disable", "nobody"]).exit_code == 2
    r = runner.invoke(app, [*users, "add", "x3", "--org", "91350100M000100Y44", "--roles",
                            "auditor"])  # fmt: skip
    assert r.exit_code == 2


def test_reset_mfa_needs_a_second_administrator(tmp_path: Path) -> None:
    users, settings = _hub(tmp_path)
    for name, roles in (("approver", "approver"), ("boss", "org-admin")):
        r = runner.invoke(app, [*users, "add", name, "--org", ORG, "--roles", roles])
        assert r.exit_code == 0, r.output
    registry = open_registry(settings)
    ident = IdentityService(registry, settings)
    secrets = {}
    for name in ("approver", "boss"):
        e = ident.start_totp(name)
        ident.confirm_totp(name, mfa.code_at(e.secret, mfa.time_step(ident.clock()) - 1))
        secrets[name] = e.secret
    reset = [*users, "reset-mfa", "approver", "--approved-by", "boss"]
    # Without a valid code of the approver, nothing happens.
    r = runner.invoke(app, [*reset, "--approver-code", "000000"])
    assert r.exit_code == 2
    assert ident.get_user(_cli(), "approver").mfa_enrolled
    # The user cannot approve their own reset.
    r = runner.invoke(app, [*users, "reset-mfa", "approver", "--approved-by", "approver",
                            "--approver-code", pyotp.TOTP(secrets["approver"]).now()])  # fmt: skip
    assert r.exit_code == 2
    # The code may also be typed at the prompt.
    r = runner.invoke(app, reset, input=pyotp.TOTP(secrets["boss"]).now() + "\n")
    assert r.exit_code == 0, r.output
    assert not ident.get_user(_cli(), "approver").mfa_enrolled
    with registry._sessions() as s:
        event = s.scalars(select(AdminEvent).where(AdminEvent.action == "mfa.reset")).one()
    detail = json.loads(event.detail)
    assert detail["approved_by"] == "user:boss" and detail["requested_by"].startswith("cli:")


def _cli():  # type: ignore[no-untyped-def]
    from qiao.identity.roles import CLI

    return CLI
