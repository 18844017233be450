"""``qiao emergency``: declare, confirm, end and review emergencies on the hub.

The commands work on the hub's database directly (``--config HUB.toml``). ``--as USER``
names the hub user who acts, and that user's roles are checked as the API would check them.
But ``--as`` is not authenticated: no password or second factor is asked, so whoever runs
these commands can name any user, and could as well write the database directly. The console
is trusted like the database access it stands on; the two-administrator rule is enforced by
the API, for people who sign in (docs/agreements.md, "Emergency mode"). At the console it
records which administrators were named, and guards against mistakes, not against the
operator. Without ``--as`` a command acts as ``qiao.identity.roles.CLI``: one platform
administrator, whoever runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

emergency_app = typer.Typer(
    help="Emergency mode (应急): two platform administrators open emergency agreements.",
    no_args_is_help=True,
)

AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="The hub user who acts (their roles are checked, but the console does not "
        "authenticate them); without it, the local operator acts as one platform "
        "administrator.",
    ),
]


@emergency_app.callback()
def emergency(
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
    """Work on the hub's emergencies (reads the hub's configuration)."""
    from qiao.cli import _fail
    from qiao.config import HubSettings

    try:
        ctx.obj = {"settings": HubSettings.load(config)}
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc


def _service(ctx: typer.Context) -> Any:
    from qiao.agreements.emergencies import EmergencyService
    from qiao.cli import _registry

    settings = ctx.obj["settings"]
    return EmergencyService(
        _registry(ctx),
        max_hours=settings.emergency_max_hours,
        confirm_seconds=settings.emergency_confirm_seconds,
    )


def _who(ctx: typer.Context, username: str | None) -> Any:
    """The principal a command acts as: the named user with their stored roles (as a
    signed-in session would carry them), or the local operator."""
    from qiao.cli import _fail, _registry
    from qiao.identity.roles import CLI, Principal
    from qiao.identity.service import IdentityService
    from qiao.problems import Problem

    if username is None:
        return CLI
    identity = IdentityService(_registry(ctx), ctx.obj["settings"])
    try:
        user = identity.get_user(CLI, username)
    except Problem as p:
        raise _fail(f"--as {username}: {p.detail or p.kind.title}", 2) from p
    if user.disabled:
        raise _fail(f"--as {username}: the user is disabled", 2)
    return Principal(f"user:{user.username}", user.roles, org=user.org, kind="user")


def _run(fn: Any) -> Any:
    from qiao.cli import _fail
    from qiao.problems import Problem

    try:
        return fn()
    except Problem as p:
        raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p


def _print(data: Any) -> None:
    from qiao.cli import console

    text = json.dumps(data, ensure_ascii=False, indent=2)
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@emergency_app.command("declare")
def declare(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (shown to every department).")],
    hours: Annotated[int, typer.Option(help="How long it lasts once confirmed.")],
    resource: Annotated[
        list[str] | None,
        typer.Option("--resource", help="A resource in scope, ORG/CODE (repeat; at least one)."),
    ] = None,
    org: Annotated[
        list[str] | None,
        typer.Option("--org", help="A consumer organization in scope, USCC (repeat; none = all)."),
    ] = None,
    as_: AsOpt = None,
) -> None:
    """Propose an emergency; another platform administrator confirms it."""
    from qiao.cli import console

    who = _who(ctx, as_)
    e = _run(
        lambda: _service(ctx).declare(
            who,
            resources=resource or [],
            organizations=org or [],
            reason=reason,
            duration_hours=hours,
        )
    )
    console.print(
        f"declared {e.id}: waiting for another platform administrator to confirm before "
        f"{e.confirm_before.isoformat()}"
    )
    console.print(e.id, markup=False, highlight=False)


@emergency_app.command("confirm")
def confirm(
    ctx: typer.Context,
    emergency_id: Annotated[str, typer.Argument(metavar="ID", help="The emergency, em-...")],
    as_: AsOpt = None,
) -> None:
    """Confirm an emergency another platform administrator declared: it starts now."""
    from qiao.cli import console

    who = _who(ctx, as_)
    e = _run(lambda: _service(ctx).confirm(who, emergency_id))
    assert e.expires_at is not None
    console.print(f"emergency {e.id} is active until {e.expires_at.isoformat()}")


@emergency_app.command("end")
def end(
    ctx: typer.Context,
    emergency_id: Annotated[str, typer.Argument(metavar="ID", help="The emergency, em-...")],
    reason: Annotated[str, typer.Option(help="Why it ends now.")],
    as_: AsOpt = None,
) -> None:
    """End an active emergency, or withdraw a proposal."""
    from qiao.cli import console

    who = _who(ctx, as_)
    e = _run(lambda: _service(ctx).end(who, emergency_id, reason))
    console.print(f"emergency {e.id} ended")


@emergency_app.command("list")
def list_(ctx: typer.Context, as_: AsOpt = None) -> None:
    """List emergencies, newest first."""
    from rich.table import Column, Table

    from qiao.cli import console

    who = _who(ctx, as_)
    rows = _run(lambda: _service(ctx).list(who))
    t = Table(
        Column("id", no_wrap=True),
        Column("status", no_wrap=True),
        "reason",
        "scope",
        "declared by",
        "confirmed by",
        "expires at",
    )
    for e in rows:
        scope = ", ".join([*e.resources, *e.organizations]) or "everything"
        t.add_row(
            e.id,
            e.status.value,
            e.reason,
            scope,
            e.declared_by,
            e.confirmed_by or "",
            e.expires_at.isoformat() if e.expires_at else "",
        )
    console.print(t)


@emergency_app.command("show")
def show(
    ctx: typer.Context,
    emergency_id: Annotated[str, typer.Argument(metavar="ID", help="The emergency, em-...")],
    as_: AsOpt = None,
) -> None:
    """Print an emergency (JSON)."""
    who = _who(ctx, as_)
    _print(_run(lambda: _service(ctx).get(who, emergency_id)).to_json())


@emergency_app.command("accesses")
def accesses(
    ctx: typer.Context,
    emergency_id: Annotated[str, typer.Argument(metavar="ID", help="The emergency, em-...")],
    unreviewed: Annotated[bool, typer.Option(help="Only those not yet reviewed.")] = False,
    as_: AsOpt = None,
) -> None:
    """Print the exchanges made under an emergency (JSON), with their reviews."""
    who = _who(ctx, as_)
    rows = _run(lambda: _service(ctx).accesses(who, emergency_id, unreviewed))
    _print([a.to_json() for a in rows])


def register(app: typer.Typer) -> None:
    """Add the emergency commands to the ``qiao`` command."""
    app.add_typer(emergency_app, name="emergency")
