"""``qiao users`` and ``qiao apps``: people, their roles and MFA; apps and their credentials."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

users_app = typer.Typer(
    help="People who sign in to the hub, and their roles.", no_args_is_help=True
)
apps_app = typer.Typer(help="Apps and their credentials (API keys).", no_args_is_help=True)


# --- qiao users ... (hub side: people, their roles and MFA) --------------------------------
@users_app.callback()
def users(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The hub's TOML configuration file (or set QIAO_CONFIG).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Manage the people who sign in to the hub (run on the hub's machine, as its
    platform administrator)."""
    from qiao.cli import _fail
    from qiao.config import HubSettings

    try:
        ctx.obj = {"settings": HubSettings.load(config)}
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc


def _identity(ctx: typer.Context) -> Any:
    from qiao.cli import _hub_settings, _registry
    from qiao.identity.service import IdentityService

    return IdentityService(_registry(ctx), _hub_settings(ctx))


def _users_guard(fn: Any) -> Any:
    """A Problem from the identity service becomes a one-line error and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from qiao.cli import _fail
        from qiao.problems import Problem

        try:
            return fn(*args, **kwargs)
        except Problem as p:
            raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p

    return wrapper


def _parse_roles(text: str) -> Any:
    from qiao.cli import _fail
    from qiao.identity.roles import parse_roles

    try:
        return parse_roles(text)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


@users_app.command("add")
@_users_guard
def users_add(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Sign-in name: a-z, 0-9, '.', '_', '-'.")],
    roles: Annotated[str, typer.Option(help="Comma-separated roles, e.g. data-steward,approver.")],
    org: Annotated[
        str | None, typer.Option(help="Organization (USCC); omit for a platform administrator.")
    ] = None,
    name: Annotated[str, typer.Option(help="The person's name, e.g. 张三.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the initial password from stdin.")
    ] = False,
) -> None:
    """Create a user; prints a generated initial password once (or takes one from stdin)."""
    import sys

    from qiao.cli import console, err
    from qiao.identity.roles import CLI

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    view, generated = _identity(ctx).add_user(
        CLI, username, org=org, roles=_parse_roles(roles), name=name, password=password
    )
    where = view.org or "the platform"
    err.print(f"user {view.username} of {where}, roles {','.join(sorted(view.roles))}")
    if generated:
        console.print(generated, soft_wrap=True)
        err.print("initial password shown only this once; the user changes it after signing in")
    if view.needs_mfa:
        err.print("these roles need TOTP: the user enrolls at the first sign-in")


@users_app.command("list")
@_users_guard
def users_list(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Only this organization's users.")] = None,
) -> None:
    """List users, their roles and MFA state."""
    from rich.table import Table

    from qiao.cli import console
    from qiao.identity.roles import CLI

    t = Table("user", "name", "organization", "roles", "MFA", "state", "last sign-in")
    for u in _identity(ctx).list_users(CLI, org):
        mfa = "enrolled" if u.mfa_enrolled else ("REQUIRED" if u.needs_mfa else "-")
        t.add_row(
            u.username,
            u.name,
            u.org or "(platform)",
            ",".join(sorted(u.roles)),
            mfa,
            "disabled" if u.disabled else "active",
            u.last_login_at.isoformat(timespec="minutes") if u.last_login_at else "never",
        )
    console.print(t)


@users_app.command("disable")
@_users_guard
def users_disable(ctx: typer.Context, username: str) -> None:
    """Disable USERNAME: their sessions end at once and they cannot sign in."""
    from qiao.cli import console
    from qiao.identity.roles import CLI

    _identity(ctx).set_disabled(CLI, username, True)
    console.print(f"disabled {username}")


@users_app.command("enable")
@_users_guard
def users_enable(ctx: typer.Context, username: str) -> None:
    """Enable USERNAME again."""
    from qiao.cli import console
    from qiao.identity.roles import CLI

    _identity(ctx).set_disabled(CLI, username, False)
    console.print(f"enabled {username}")


@users_app.command("roles")
@_users_guard
def users_roles(
    ctx: typer.Context,
    username: str,
    roles: Annotated[str, typer.Argument(help="The new comma-separated roles (replace the old).")],
) -> None:
    """Replace USERNAME's roles."""
    from qiao.cli import console
    from qiao.identity.roles import CLI

    view = _identity(ctx).set_roles(CLI, username, _parse_roles(roles))
    console.print(f"{view.username}: {','.join(sorted(view.roles)) or '(no roles)'}")


@users_app.command("reset-mfa")
@_users_guard
def users_reset_mfa(
    ctx: typer.Context,
    username: str,
    approved_by: Annotated[
        str, typer.Option("--approved-by", help="A second administrator who manages USERNAME.")
    ],
    approver_code: Annotated[
        str | None,
        typer.Option(help="The approver's current TOTP code (asked for when not given)."),
    ] = None,
) -> None:
    """Reset USERNAME's TOTP and recovery codes; a second administrator approves with their
    current TOTP code. The user's sessions end and they enroll again at the next sign-in."""
    from qiao.cli import console
    from qiao.identity.roles import CLI

    code = approver_code or typer.prompt(f"{approved_by}'s current TOTP code", hide_input=True)
    _identity(ctx).reset_mfa_with_approver(CLI, username, approved_by, code)
    console.print(f"MFA of {username} reset, approved by {approved_by}")


# --- qiao apps key ... (node side: an app's API keys at its organization's node) ----------
apps_key_app = typer.Typer(
    help="API keys of this organization's apps at this node: scoped, expiring, rotatable.",
    no_args_is_help=True,
)
apps_app.add_typer(apps_key_app, name="key")


def _duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` -> a timedelta."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*([mhdw])\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 2w")
    n, unit = int(m.group(1)), m.group(2)
    return {
        "m": timedelta(minutes=n),
        "h": timedelta(hours=n),
        "d": timedelta(days=n),
        "w": timedelta(weeks=n),
    }[unit]


@apps_key_app.callback()
def apps_key(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The node's TOML configuration file (or set QIAO_CONFIG).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Manage the API keys apps use to call this node (run on the node's machine)."""
    from qiao.cli import _fail
    from qiao.config import NodeSettings

    try:
        settings = NodeSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc
    ctx.obj = {"settings": settings}


def _keys(ctx: typer.Context) -> Any:
    from qiao.db import make_engine, migrate
    from qiao.exchange.keys import ApiKeyService

    s = ctx.obj["settings"]
    migrate("node", s.database_url)
    return ApiKeyService(make_engine(s.database_url), max_ttl=timedelta(days=s.api_key_max_days))


def _client(ctx: typer.Context, app_code: str) -> str:
    from qiao.cli import _fail
    from qiao.node.identity import NodeIdentity

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", app_code):
        raise _fail(f"{app_code!r} is not an app code")
    try:
        ident = NodeIdentity.load(ctx.obj["settings"].data_dir)
    except FileNotFoundError as exc:
        raise _fail(f"this node is not enrolled yet ({exc})") from exc
    return f"{ident.client_id_prefix}{app_code}"


@apps_key_app.command("create")
def apps_key_create(
    ctx: typer.Context,
    app_code: Annotated[str, typer.Option("--app", help="The app's code, e.g. estate-registry.")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="A resource the key may call: {provider org}/{resource}, {provider org}/* or *."
            " Repeat for several."
        ),
    ],
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Lifetime, e.g. 30d, 12h, 2w (default 90d).")
    ] = "90d",
    label: Annotated[str, typer.Option(help="A note for the key list.")] = "",
) -> None:
    """Create an API key for one of this organization's apps; the key is shown once."""
    from qiao.cli import _fail, console, err
    from qiao.exchange.keys import KeyPolicyError

    try:
        issued = _keys(ctx).create(
            _client(ctx, app_code), label=label, ttl=_duration(expires_in), scopes=scope
        )
    except KeyPolicyError as exc:
        raise _fail(str(exc)) from exc
    console.print(issued.secret, soft_wrap=True)
    err.print(
        f"key {issued.key_id} for {issued.client}, scopes {' '.join(issued.scopes)}; "
        f"expires {issued.expires_at.isoformat() if issued.expires_at else 'never'}. "
        "It is shown only this once."
    )


@apps_key_app.command("rotate")
def apps_key_rotate(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after qk_).")],
    grace: Annotated[
        str, typer.Option(help="How long the old key keeps working, e.g. 24h, 7d.")
    ] = "24h",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Lifetime of the new key (default 90d).")
    ] = "90d",
) -> None:
    """Replace a key: print a new one with the same app and scopes; the old one keeps
    working for the grace period, then expires."""
    from qiao.cli import _fail, console, err
    from qiao.exchange.keys import KeyPolicyError

    try:
        issued = _keys(ctx).rotate(key_id, grace=_duration(grace), ttl=_duration(expires_in))
    except KeyError:
        raise _fail(f"no active key {key_id}") from None
    except KeyPolicyError as exc:
        raise _fail(str(exc)) from exc
    console.print(issued.secret, soft_wrap=True)
    err.print(f"key {issued.key_id} replaces {key_id}, which stops working in {grace}")


@apps_key_app.command("revoke")
def apps_key_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after qk_).")],
) -> None:
    """Revoke a key at once (within seconds on a running node)."""
    from qiao.cli import _fail, console

    if not _keys(ctx).revoke(key_id):
        raise _fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")


@apps_key_app.command("list")
def apps_key_list(
    ctx: typer.Context,
    app_code: Annotated[str | None, typer.Option("--app", help="Only this app's keys.")] = None,
) -> None:
    """List the node's API keys (never their secrets)."""
    from rich.table import Column, Table

    from qiao.cli import console
    from qiao.db import utcnow

    now = utcnow()
    t = Table("client", "scopes", "label", "expires", "state")
    t.columns.insert(0, Column("key id", no_wrap=True, min_width=16))
    client = _client(ctx, app_code) if app_code else None
    for k in _keys(ctx).list(client):
        if k.revoked_at is not None:
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}"
        elif k.expires_at is not None and k.expires_at <= now:
            state = "expired"
        elif k.replaced_by:
            state = f"rotated to {k.replaced_by}"
        else:
            state = "active"
        t.add_row(
            k.key_id,
            k.client,
            k.scopes,
            k.label,
            k.expires_at.isoformat(timespec="minutes") if k.expires_at else "never",
            state,
        )
    console.print(t)
