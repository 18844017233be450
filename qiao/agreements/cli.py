"""``qiao request``, ``qiao approve``, ``qiao refuse``, ``qiao requests``, ``qiao agreements``.

The commands work on the hub's database directly (``--config HUB.toml``). ``--as USER``
names the hub user a command acts for: that user's roles and organization are checked
exactly as the API checks them (the same service does it). Without ``--as`` a command acts
as the platform administrator (``roles.CLI``), who may read every request and agreement and
suspend, resume or revoke any agreement, but does not act for an organization: applying,
subscribing, approving, refusing and renewing are done by a person of the organization
concerned, so those commands need ``--as`` (docs/agreements.md, "The workflow").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

requests_app = typer.Typer(help="Sharing requests (共享申请).", no_args_is_help=True)
agreements_app = typer.Typer(help="Sharing agreements (共享协议).", no_args_is_help=True)

Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The hub's TOML configuration file (or set QIAO_CONFIG).",
        exists=True,
        dir_okay=False,
    ),
]
As = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="The hub user to act as (their roles and organization are checked); "
        "default: the platform administrator, who does not apply, approve or refuse.",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded and shown to both parties).")]


@dataclass
class _Hub:
    settings: Any
    service: Any  # AgreementService
    who: Any  # Principal


def _open(config: Path | None, as_user: str | None) -> _Hub:
    from qiao.agreements.service import AgreementService
    from qiao.cli import _fail
    from qiao.config import HubSettings
    from qiao.hub.app import open_registry
    from qiao.identity.roles import CLI, Principal
    from qiao.identity.service import IdentityService

    try:
        settings = HubSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc
    registry = open_registry(settings)
    who = CLI
    if as_user is not None:
        user = IdentityService(registry, settings).get_user(CLI, as_user)
        if user.disabled:
            raise _fail(f"user {as_user} is disabled")
        who = Principal(f"user:{user.username}", user.roles, org=user.org, kind="user")
    return _Hub(settings, AgreementService(registry), who)


@contextmanager
def _acting(hub: _Hub) -> Iterator[None]:
    """Record the user named by --as as the actor of what the command changes. Without
    --as, a refusal says how to act as a person of an organization."""
    from qiao import problems
    from qiao.problems import Problem
    from qiao.registry.services import acting

    if hub.who.kind == "user":
        with acting(hub.who.subject):
            yield
        return
    try:
        yield
    except Problem as p:
        if p.kind is not problems.FORBIDDEN:
            raise
        raise Problem(
            p.kind,
            f"{p.detail}. Without --as this command acts as the platform administrator; "
            "name the person who acts with --as USER",
            p.extra,
        ) from p


def _problems(fn: F) -> F:
    """A Problem from the service becomes one red line with its detail, and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from qiao.cli import _fail
        from qiao.problems import Problem

        try:
            return fn(*args, **kwargs)
        except Problem as p:
            raise _fail(p.detail or p.kind.title, 1) from p

    return wrapper  # type: ignore[return-value]


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


def _show_agreement(view: Any, title: str) -> None:
    from rich.table import Table

    from qiao.cli import console

    doc = view.agreement()
    t = Table(show_header=False, title=title)
    t.add_row("agreement", view.id)
    t.add_row("sha256", view.sha256)
    t.add_row("status", view.status + (f" ({view.reason})" if view.reason else ""))
    t.add_row("provider", f"{doc.provider.org} {doc.provider.name}")
    t.add_row("consumer", f"{doc.consumer.org} {doc.consumer.name}")
    t.add_row("apps", ", ".join(doc.consumer.apps) or "(every app)")
    t.add_row("resource", f"{doc.resource.code} v{doc.resource.version}")
    t.add_row("fields", "(all)" if doc.fields is None else ", ".join(doc.fields))
    t.add_row("masking", ", ".join(f"{k}={v.rule.value}" for k, v in doc.masking.items()) or "-")
    t.add_row("purposes", ", ".join(doc.purposes))
    t.add_row("valid", f"{doc.valid_from.isoformat()} .. {doc.valid_until.isoformat()}")
    t.add_row("daily quota", str(doc.daily_quota or "-"))
    if view.renews:
        t.add_row("renews", view.renews)
    console.print(t)


# --- qiao request / approve / refuse -------------------------------------------------------------
@_problems
def request(
    provider: Annotated[str, typer.Argument(help="The providing organization (USCC).")],
    resource: Annotated[str, typer.Argument(help="The resource's code.")],
    purpose: Annotated[list[str], typer.Option("--purpose", help="A purpose code. Repeatable.")],
    config: Config = None,
    as_user: As = None,
    purpose_text: Annotated[str, typer.Option(help="What the data is needed for.")] = "",
    legal_basis: Annotated[str, typer.Option(help="The law or rule that allows it.")] = "",
    field: Annotated[
        list[str] | None, typer.Option("--field", help="A field wanted. Repeatable; default all.")
    ] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="Repeatable.")] = None,
    path: Annotated[
        list[str] | None, typer.Option("--path", help="Path pattern ('*', '**'). Repeatable.")
    ] = None,
    app: Annotated[
        list[str] | None, typer.Option("--app", help="A calling app. Repeatable; default all.")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity wanted, in days.")] = 365,
    quota: Annotated[int | None, typer.Option(help="Daily quota wanted.")] = None,
    end_user: Annotated[bool, typer.Option(help="Require X-Qiao-User on each call.")] = False,
    subscribe: Annotated[
        bool, typer.Option(help="Subscribe to an unconditional (无条件共享) resource instead.")
    ] = False,
) -> None:
    """Apply for a conditional resource of PROVIDER (or --subscribe to an unconditional one),
    for the organization of the user named by --as."""
    from qiao.agreements.service import Application, parse
    from qiao.cli import console

    hub = _open(config, as_user)
    with _acting(hub):
        if subscribe:
            view = hub.service.subscribe(
                hub.who,
                provider,
                resource,
                purposes=tuple(purpose),
                apps=tuple(app or ()),
                fields=_tuple(field),
                valid_days=days,
                end_user_required=end_user,
            )
            _show_agreement(view, f"subscribed: agreement {view.id}")
            return
        application: dict[str, Any] = {
            "purposes": purpose,
            "purpose_text": purpose_text,
            "legal_basis": legal_basis,
            "fields": field or None,
            "apps": app or [],
            "valid_days": days,
            "daily_quota": quota,
            "end_user_required": end_user,
        }
        if method:
            application["methods"] = method
        if path:
            application["paths"] = path
        req = hub.service.apply(hub.who, provider, resource, parse(Application, application))
    provisional = " (provisional: the official calendar for that year is not out)"
    console.print(
        f"submitted {req.id}: {req.consumer_org} asks {req.provider_org} for {req.resource}; "
        f"reply due by {req.to_json()['deadline'][:10]}, {req.days_left} working day(s) left"
        + (provisional if req.deadline_provisional else "")
    )


def _masks(values: list[str] | None) -> dict[str, Any]:
    from qiao.agreements.document import Masking, MaskRule
    from qiao.cli import _fail

    masks: dict[str, Any] = {}
    for value in values or []:
        name, sep, rule = value.partition("=")
        try:
            masks[name] = Masking(rule=MaskRule(rule))
        except ValueError:
            known = ", ".join(r.value for r in MaskRule)
            if not sep:
                raise _fail(f"--mask {value!r}: write FIELD=RULE") from None
            raise _fail(f"--mask {value!r}: the rules are {known}") from None
    return masks


@_problems
def approve(
    request_id: Annotated[str, typer.Argument(help="The request (req-...).")],
    config: Config = None,
    as_user: As = None,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="Keep only these fields. Repeatable.")
    ] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="Repeatable.")] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="Repeatable.")] = None,
    app: Annotated[list[str] | None, typer.Option("--app", help="Repeatable.")] = None,
    purpose: Annotated[list[str] | None, typer.Option("--purpose", help="Repeatable.")] = None,
    days: Annotated[int | None, typer.Option(help="A shorter validity, in days.")] = None,
    quota: Annotated[int | None, typer.Option(help="A smaller daily quota.")] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option("--mask", help="FIELD=RULE, e.g. plate=plate. Repeatable."),
    ] = None,
    end_user: Annotated[bool, typer.Option(help="Require X-Qiao-User on each call.")] = False,
) -> None:
    """Approve REQUEST_ID, possibly narrowed; the agreement is signed by both organizations."""
    from qiao.agreements.service import Narrowing, parse

    narrowing: Narrowing = parse(
        Narrowing,
        {
            "fields": _tuple(field),
            "methods": _tuple(method),
            "paths": _tuple(path),
            "apps": _tuple(app),
            "purposes": _tuple(purpose),
            "valid_days": days,
            "daily_quota": quota,
            "masking": _masks(mask),
            "end_user_required": end_user,
        },
    )
    hub = _open(config, as_user)
    with _acting(hub):
        _, view = hub.service.approve(hub.who, request_id, narrowing)
    _show_agreement(view, f"approved {request_id}: agreement {view.id}")


@_problems
def refuse(
    request_id: Annotated[str, typer.Argument(help="The request (req-...).")],
    reason: Reason,
    config: Config = None,
    as_user: As = None,
) -> None:
    """Refuse REQUEST_ID; the reason is mandatory (国务院令第809号)."""
    from qiao.cli import console

    hub = _open(config, as_user)
    with _acting(hub):
        req = hub.service.refuse(hub.who, request_id, reason)
    console.print(f"refused {req.id}: {req.reason}")


# --- qiao requests ---------------------------------------------------------------------------
@requests_app.callback()
def requests_group(ctx: typer.Context, config: Config = None) -> None:
    """Sharing requests on the hub (reads the hub's configuration)."""
    ctx.obj = {"config": config}


@requests_app.command("list")
@_problems
def requests_list(
    ctx: typer.Context,
    as_user: As = None,
    inbox: Annotated[bool, typer.Option("--inbox", help="Requests to my organization.")] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Requests from my organization.")] = False,
    status: Annotated[str | None, typer.Option(help="submitted|approved|refused|withdrawn")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue ones.")] = False,
) -> None:
    """List requests with their deadline, working days left and an overdue flag."""
    from rich.table import Table

    from qiao.cli import _fail, console

    if inbox and mine:
        raise _fail("--inbox or --mine, not both")
    hub = _open(ctx.obj["config"], as_user)
    box = "inbox" if inbox else "mine" if mine else None
    rows = hub.service.list_requests(
        hub.who, box=box, status=status, overdue=True if overdue else None
    )
    t = Table("request", "from", "to", "resource", "status", "deadline", "days left", "overdue")
    for r in rows:
        t.add_row(
            r.id,
            r.consumer_org,
            r.provider_org,
            r.resource,
            r.status,
            r.to_json()["deadline"][:10] + ("*" if r.deadline_provisional else ""),
            "" if r.days_left is None else str(r.days_left),
            "[red]逾期 overdue[/red]" if r.overdue else "",
        )
    console.print(t)
    console.print(f"{len(rows)} request(s)")


@requests_app.command("show")
@_problems
def requests_show(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request (req-...).")],
    as_user: As = None,
) -> None:
    """Show one request as JSON."""
    hub = _open(ctx.obj["config"], as_user)
    view = hub.service.get_request(hub.who, request_id)
    typer.echo(json.dumps(view.to_json(), indent=2, ensure_ascii=False))


@requests_app.command("withdraw")
@_problems
def requests_withdraw(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request (req-...).")],
    as_user: As = None,
) -> None:
    """Withdraw an undecided request of my organization."""
    from qiao.cli import console

    hub = _open(ctx.obj["config"], as_user)
    with _acting(hub):
        req = hub.service.withdraw(hub.who, request_id)
    console.print(f"withdrew {req.id}")


# --- qiao agreements -------------------------------------------------------------------------
@agreements_app.callback()
def agreements_group(ctx: typer.Context, config: Config = None) -> None:
    """Sharing agreements on the hub (reads the hub's configuration)."""
    ctx.obj = {"config": config}


@agreements_app.command("list")
@_problems
def agreements_list(
    ctx: typer.Context,
    as_user: As = None,
    state: Annotated[str | None, typer.Option(help="active|suspended|revoked|expired")] = None,
    resource: Annotated[str | None, typer.Option(help="Only this resource's.")] = None,
) -> None:
    """List the agreements (a user's: those of their organization)."""
    from rich.table import Table

    from qiao.cli import console

    hub = _open(ctx.obj["config"], as_user)
    rows = hub.service.list(hub.who, state=state, resource=resource)
    t = Table("agreement", "provider", "consumer", "resource", "status", "valid until", "sha256")
    for a in rows:
        t.add_row(
            a.id,
            a.provider_org,
            a.consumer_org,
            a.resource + (" (应急)" if a.emergency_only else ""),
            a.status,
            a.to_json()["valid_until"][:10],
            a.sha256[:16] + "…",
        )
    console.print(t)
    console.print(f"{len(rows)} agreement(s)")


@agreements_app.command("show")
@_problems
def agreements_show(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    as_user: As = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an agreement: its terms, state, hash and signatures."""
    hub = _open(ctx.obj["config"], as_user)
    view = hub.service.get(hub.who, agreement_id)
    if json_out:
        typer.echo(json.dumps(view.to_json(), indent=2, ensure_ascii=False))
        return
    _show_agreement(view, f"agreement {view.id}")


@agreements_app.command("export")
@_problems
def agreements_export(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    as_user: As = None,
    odrl: Annotated[bool, typer.Option("--odrl", help="As an ODRL 2.2 policy (JSON-LD).")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")
    ] = None,
) -> None:
    """The signed document exactly as stored (RFC 8785 canonical JSON), or its ODRL form."""
    hub = _open(ctx.obj["config"], as_user)
    if odrl:
        policy = hub.service.odrl(hub.who, agreement_id, hub.settings.public_url)
        data = json.dumps(policy, indent=2, ensure_ascii=False).encode()
    else:
        data, _digest = hub.service.document(hub.who, agreement_id)
    if output is not None:
        output.write_bytes(data)
        return
    typer.echo(data.decode(), nl=False)


def _changed(verb: str) -> Callable[[Any], None]:
    def report(view: Any) -> None:
        from qiao.cli import console

        console.print(f"{verb} {view.id}: now {view.status}")

    return report


@agreements_app.command("suspend")
@_problems
def agreements_suspend(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    reason: Reason,
    as_user: As = None,
) -> None:
    """Suspend an active agreement (the provider's approver or org-admin)."""
    hub = _open(ctx.obj["config"], as_user)
    with _acting(hub):
        _changed("suspended")(hub.service.suspend(hub.who, agreement_id, reason))


@agreements_app.command("resume")
@_problems
def agreements_resume(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    as_user: As = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
) -> None:
    """Resume a suspended agreement."""
    hub = _open(ctx.obj["config"], as_user)
    with _acting(hub):
        _changed("resumed")(hub.service.resume(hub.who, agreement_id, reason))


@agreements_app.command("revoke")
@_problems
def agreements_revoke(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    reason: Reason,
    as_user: As = None,
) -> None:
    """Revoke an agreement for good (either party's org-admin, the provider's approver)."""
    hub = _open(ctx.obj["config"], as_user)
    with _acting(hub):
        _changed("revoked")(hub.service.revoke(hub.who, agreement_id, reason))


@agreements_app.command("renew")
@_problems
def agreements_renew(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement (agr-...).")],
    as_user: As = None,
    days: Annotated[
        int | None,
        typer.Option(help="Validity of the new agreement, in days (at most the original's)."),
    ] = None,
) -> None:
    """A new agreement with the same terms on the resource's current version, and a fresh
    validity no longer than the original's."""
    hub = _open(ctx.obj["config"], as_user)
    with _acting(hub):
        view = hub.service.renew(hub.who, agreement_id, days)
    _show_agreement(view, f"renewed {agreement_id}: agreement {view.id}")


def register(app: typer.Typer) -> None:
    """Add the request and agreement commands to the ``qiao`` command."""
    app.command("request")(request)
    app.command("approve")(approve)
    app.command("refuse")(refuse)
    app.add_typer(requests_app, name="requests")
    app.add_typer(agreements_app, name="agreements")
