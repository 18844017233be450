"""App credentials at a node: scoped, expiring, rotatable, revocable API keys, and the
``qiao apps key`` commands."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from qiao.db import make_engine, migrate, utcnow
from qiao.exchange.keys import (
    ApiKeyService,
    KeyPolicyError,
    parse_scopes,
    scope_allows,
)
from qiao.exchange.models import ApiKey

APP = "CN-DEMO/91350100M000100Y43/estate"
POLICE = "11350100MB0001234X"


def _service(url: str, **kw: timedelta) -> ApiKeyService:
    migrate("node", url)
    return ApiKeyService(make_engine(url), **kw)


def test_scopes_parse_and_match() -> None:
    assert parse_scopes(["*"]) == ("*",)
    assert parse_scopes([f"{POLICE}/vehicles, {POLICE}/vehicles", "X/*"]) == (
        f"{POLICE}/vehicles",
        "X/*",
    )
    for bad in ([""], ["vehicles"], ["/vehicles"], [f"{POLICE}/"], [f"{POLICE}/a/b"], []):
        with pytest.raises(KeyPolicyError):
            parse_scopes(bad)
    assert scope_allows(["*"], POLICE, "anything")
    assert scope_allows([f"{POLICE}/*"], POLICE, "vehicles")
    assert scope_allows([f"{POLICE}/vehicles"], POLICE, "vehicles")
    assert not scope_allows([f"{POLICE}/vehicles"], POLICE, "persons")
    assert not scope_allows([f"{POLICE}/*"], "OTHER", "vehicles")


def test_scoped_key_lifecycle(db_url: str) -> None:
    keys = _service(db_url)
    issued = keys.create(APP, scopes=[f"{POLICE}/vehicles"], ttl=timedelta(days=30))
    grant = keys.check(issued.secret)
    assert grant is not None and grant.client == APP
    assert grant.allows(POLICE, "vehicles") and not grant.allows(POLICE, "persons")
    # stored hashed, never the secret
    row = keys.list(APP)[0]
    assert issued.secret.split("_", 2)[2] not in row.secret_hash and row.scopes == issued.scopes[0]
    assert keys.revoke(issued.key_id)
    assert keys.check(issued.secret) is None


def test_every_key_expires_within_the_maximum(db_url: str) -> None:
    keys = _service(db_url, max_ttl=timedelta(days=180))
    default = keys.create(APP)
    assert default.expires_at is not None
    assert timedelta(days=89) < default.expires_at - utcnow() <= timedelta(days=90)
    with pytest.raises(KeyPolicyError):
        keys.create(APP, ttl=timedelta(days=181))
    expired = keys.create(APP, ttl=timedelta(seconds=-1))
    assert keys.check(expired.secret) is None


def test_rotation_keeps_the_old_key_for_the_grace_period(db_url: str) -> None:
    keys = _service(db_url)
    old = keys.create(APP, scopes=[f"{POLICE}/*"], label="estate-prod")
    new = keys.rotate(old.key_id, grace=timedelta(hours=1))
    assert new.secret != old.secret and new.scopes == (f"{POLICE}/*",)
    assert keys.check(old.secret) is not None and keys.check(new.secret) is not None
    rows = {k.key_id: k for k in keys.list()}
    assert rows[old.key_id].replaced_by == new.key_id
    assert rows[old.key_id].expires_at is not None
    assert rows[old.key_id].expires_at <= utcnow() + timedelta(hours=1)
    # once the grace period is over, only the new key works
    with make_engine(db_url).begin() as conn:
        conn.execute(
            update(ApiKey)
            .where(ApiKey.key_id == old.key_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    keys2 = ApiKeyService(make_engine(db_url))
    assert keys2.check(old.secret) is None and keys2.check(new.secret) is not None
    with pytest.raises(KeyError):
        keys2.rotate(old.key_id)  # an expired key cannot be rotated
    with pytest.raises(KeyError):
        keys2.rotate("nope")


def test_malformed_and_oversized_keys_are_refused(tmp_path: Path) -> None:
    keys = _service(f"sqlite:///{tmp_path / 'n.db'}")
    issued = keys.create(APP)
    for bad in ("", "qk_", "qk__x", "qk_x_", "x" * 10_000, issued.secret + "x", "qk_" + "a" * 5000):
        assert keys.check(bad) is None


def _node_config(tmp_path: Path) -> Path:
    """A node's configuration and the identity file enrollment leaves behind (the enrollment
    itself is covered by the node's tests; these commands read only the identity)."""
    import json

    from qiao.node.identity import IDENTITY_FILE

    (tmp_path / IDENTITY_FILE).write_text(
        json.dumps(
            {
                "name": "n1",
                "org": "91350100M000100Y43",
                "instance": "CN-DEMO",
                "configuration_key": "",
                "fingerprint": "",
            }
        )
    )
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n')
    return cfg


def test_apps_key_commands(tmp_path: Path) -> None:
    from qiao.cli import app

    cfg = _node_config(tmp_path)
    run = CliRunner().invoke
    r = run(
        app,
        [
            "apps",
            "key",
            "-c",
            str(cfg),
            "create",
            "--app",
            "estate",
            "--scope",
            f"{POLICE}/vehicles",
            "--expires-in",
            "30d",
        ],
    )
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[0]
    assert secret.startswith("qk_")
    key_id = secret.split("_")[1]
    r = run(app, ["apps", "key", "-c", str(cfg), "list"])
    assert r.exit_code == 0 and key_id in r.stdout and secret not in r.stdout
    r = run(app, ["apps", "key", "-c", str(cfg), "rotate", key_id, "--grace", "1h"])
    assert r.exit_code == 0, r.output
    r = run(app, ["apps", "key", "-c", str(cfg), "revoke", key_id])
    assert r.exit_code == 0 and "revoked" in r.stdout
    r = run(app, ["apps", "key", "-c", str(cfg), "revoke", key_id])
    assert r.exit_code != 0
    for bad in (["--expires-in", "forever"], ["--expires-in", "9999d"], ["--scope", "nope"]):
        args = ["apps", "key", "-c", str(cfg), "create", "--app", "estate", "--scope", "*"]
        r = run(app, [*args, *bad])
        assert r.exit_code != 0, bad
