"""The command line: every command explains itself, and admin commands work on a hub's data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from qiao.cli import app
from qiao.demo.processes import write_toml

runner = CliRunner()
ORG = "91350100M000100Y43"


def _subcommands(cmd: Any) -> dict[str, Any]:
    # Typer ships its own fork of click, so its groups are not click.Group instances.
    return dict(getattr(cmd, "commands", {}) or {})


def _all_commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, sub in _subcommands(cmd).items():
        out += _all_commands(sub, (*path, name))
    return out


def test_the_command_tree_is_walked() -> None:
    paths = _all_commands(get_command(app))
    assert ("hub", "org", "add") in paths and ("ledger", "verify") in paths
    assert len(paths) > 30


@pytest.mark.parametrize("path", _all_commands(get_command(app)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    cmd: Any = get_command(app)
    for name in path:
        cmd = _subcommands(cmd)[name]
    assert cmd.help and len(cmd.help.strip()) > 10, f"{' '.join(path)} has no help text"


def test_hub_administration(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "hub.toml", {"data_dir": str(tmp_path), "instance": "CN-T"})
    hub = ["hub", "--config", str(cfg)]
    r = runner.invoke(app, [*hub, "init"])
    assert r.exit_code == 0 and "operator token (shown once): qop_" in r.output
    r = runner.invoke(app, [*hub, "org", "add", ORG[:-1] + "4", "错误代码"])
    assert r.exit_code == 2 and "check character" in r.output
    assert runner.invoke(app, [*hub, "org", "add", ORG, "甲单位"]).exit_code == 0
    assert runner.invoke(app, [*hub, "app", "add", ORG, "portal"]).exit_code == 0
    r = runner.invoke(app, [*hub, "resource", "add", ORG, "records", "--name", "记录"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*hub, "resource", "list"])
    assert "records" in r.output and "记录" in r.output
    r = runner.invoke(app, [*hub, "enroll-token", ORG])
    assert r.exit_code == 0 and r.stdout.strip().startswith("qet_")
    r = runner.invoke(app, [*hub, "enroll-token", "91110000802100433B"])
    assert r.exit_code == 2 and "no organization" in r.output
    r = runner.invoke(app, [*hub, "revoke", "no-such-node"])
    assert r.exit_code == 2
    r = runner.invoke(app, [*hub, "operator-token", "--label", "ci", "--days", "7"])
    assert r.exit_code == 0 and r.stdout.strip().startswith("qop_")
    tokens = json.loads(runner.invoke(app, [*hub, "tokens"]).stdout)
    assert [t["label"] for t in tokens] == ["init", "ci"] and all(t["valid"] for t in tokens)
    r = runner.invoke(app, [*hub, "revoke-token", str(tokens[1]["id"]), "--reason", "rotated"])
    assert r.exit_code == 0, r.output
    tokens = json.loads(runner.invoke(app, [*hub, "tokens"]).stdout)
    assert tokens[1]["revoked_at"] and not tokens[1]["valid"] and tokens[0]["valid"]
    assert runner.invoke(app, [*hub, "revoke-token", "999"]).exit_code == 2


def test_bad_configuration_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('port = "not a port"\n')
    r = runner.invoke(app, ["hub", "--config", str(cfg), "nodes"])
    assert r.exit_code == 1 and "configuration" in r.output
    cfg.write_text("unknown_setting = 1\n")
    r = runner.invoke(app, ["hub", "--config", str(cfg), "nodes"])
    assert r.exit_code == 1 and "unknown_setting" in r.output


def test_node_without_enrollment_says_so(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "node.toml", {"data_dir": str(tmp_path)})
    r = runner.invoke(app, ["node", "--config", str(cfg), "key", "create", "portal"])
    assert r.exit_code != 0
    assert "qiao node enroll" in str(r.exception) + r.output
