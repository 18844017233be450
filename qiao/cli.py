"""The ``qiao`` command line."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qiao import __version__
from qiao.config import HubSettings, NodeSettings
from qiao.problems import Problem

console = Console()
err = Console(stderr=True)

app = typer.Typer(
    help="Qiao (桥): a data exchange layer for public administration.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
hub_app = typer.Typer(
    help="Run the hub (交换中心) or administer its registry. Without a sub-command, starts the hub."
)
node_app = typer.Typer(
    help="Run a department's node (前置交换节点) or administer it. "
    "Without a sub-command, starts the node."
)
org_app = typer.Typer(help="Organizations, by unified social credit code.", no_args_is_help=True)
happ_app = typer.Typer(help="Apps (subsystems) of organizations.", no_args_is_help=True)
res_app = typer.Typer(help="Resources and who may call them.", no_args_is_help=True)
key_app = typer.Typer(help="API keys of this organization's apps.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(node_app, name="node")
hub_app.add_typer(org_app, name="org")
hub_app.add_typer(happ_app, name="app")
hub_app.add_typer(res_app, name="resource")
node_app.add_typer(key_app, name="key")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration file (or set QIAO_CONFIG).",
        exists=True,
        dir_okay=False,
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _hub_settings(ctx: typer.Context) -> HubSettings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


def _registry(ctx: typer.Context) -> Any:
    from qiao.hub.app import open_registry

    if "registry" not in ctx.obj:
        ctx.obj["registry"] = open_registry(_hub_settings(ctx))
    return ctx.obj["registry"]


@app.command()
def version() -> None:
    """Print Qiao's version."""
    console.print(__version__)


# --- hub ----------------------------------------------------------------------------------
@hub_app.callback(invoke_without_command=True)
def hub(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Start the hub, or run one of its administrative commands."""
    try:
        settings = HubSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc
    ctx.obj = {"settings": settings}
    if ctx.invoked_subcommand is None:
        from qiao.hub.server import run

        run(settings)


def _guard(fn: Any) -> Any:
    """Turn a Problem from the services into a readable one-line error and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Problem as p:
            raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p

    return wrapper


@hub_app.command("init")
@_guard
def hub_init(ctx: typer.Context) -> None:
    """Create the hub's database, CA and signing key, and print a new operator token."""
    reg = _registry(ctx)
    # The first operator's token; the operator makes the next ones with `operator-token`.
    token = reg.create_operator_token("init", days=90)
    console.print(f"hub data in {_hub_settings(ctx).data_dir.resolve()}")
    console.print(f"operator token (shown once): {token}")


@hub_app.command("operator-token")
@_guard
def hub_operator_token(
    ctx: typer.Context,
    label: Annotated[str, typer.Option(help="Who gets it.")] = "operator",
    org: Annotated[
        str | None, typer.Option(help="Scope the token to this organization (USCC).")
    ] = None,
    roles: Annotated[
        str, typer.Option(help="Comma-separated roles in --org, e.g. data-steward.")
    ] = "",
    days: Annotated[
        float, typer.Option(help="How long it works (then `qiao hub operator-token` again).")
    ] = 90,
) -> None:
    """Create a token for the hub's API (shown once): the platform administrator's, or with
    --org and --roles an access token for automation in one organization."""
    from qiao.identity.roles import parse_roles

    try:
        role_set = parse_roles(roles)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    console.print(_registry(ctx).create_operator_token(label, org=org, roles=role_set, days=days))


@hub_app.command("tokens")
@_guard
def hub_tokens(ctx: typer.Context) -> None:
    """List the hub's API tokens (never their secrets): who, scope, expiry, revocation."""
    print(json.dumps(_registry(ctx).operator_tokens(), ensure_ascii=False, indent=2))


@hub_app.command("revoke-token")
@_guard
def hub_revoke_token(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(help="The token's id (`qiao hub tokens`).")],
    reason: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
) -> None:
    """Revoke a hub API token: its next request is refused."""
    _registry(ctx).revoke_operator_token(token_id, reason=reason)
    console.print(f"token {token_id} revoked")


@hub_app.command("enroll-token")
@_guard
def hub_enroll_token(ctx: typer.Context, org: str) -> None:
    """Create a one-time enrollment token for a node of organization ORG."""
    token, expires = _registry(ctx).create_enrollment_token(org)
    console.print(token)
    err.print(f"valid until {expires.isoformat()}; give it to {org}'s security officer")


@hub_app.command("nodes")
@_guard
def hub_nodes(ctx: typer.Context) -> None:
    """List nodes and their certificates."""
    t = Table("node", "org", "address", "certificate serial", "expires", "revoked")
    for n, certs in _registry(ctx).list_nodes():
        for c in certs or [None]:
            t.add_row(
                n.name,
                n.org_code,
                n.address,
                c.serial if c else "-",
                c.not_after.date().isoformat() if c else "-",
                c.revoked_at.isoformat() if c and c.revoked_at else "",
            )
    console.print(t)


@hub_app.command("revoke")
@_guard
def hub_revoke(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="Certificate serial (hex) or node name.")],
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "unspecified",
) -> None:
    """Revoke a node certificate; nodes refuse it from their next configuration fetch."""
    for serial in _registry(ctx).revoke(what, reason):
        console.print(f"revoked {serial}")


@hub_app.command("global-configuration")
@_guard
def hub_global_configuration(ctx: typer.Context) -> None:
    """Print the current signed global configuration (JSON)."""
    console.print_json(json.dumps(_registry(ctx).signed_global_conf()))


@org_app.command("add")
@_guard
def org_add(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="Unified social credit code (GB 32100).")],
    name: Annotated[str, typer.Argument(help="Official (Chinese) name.")],
    name_en: Annotated[str, typer.Option(help="English name.")] = "",
    kind: Annotated[
        str, typer.Option(help="government, enterprise, bank or institution.")
    ] = "government",
) -> None:
    """Register an organization (its code's check character is verified)."""
    org = _registry(ctx).add_organization(code, name, name_en=name_en, kind=kind)
    console.print(f"registered {org.code} {org.name}")


@org_app.command("list")
@_guard
def org_list(ctx: typer.Context) -> None:
    """List organizations and their apps."""
    reg = _registry(ctx)
    apps = reg.list_apps()
    t = Table("code", "name", "kind", "apps")
    for o in reg.list_organizations():
        t.add_row(o.code, o.name, o.kind, ", ".join(a.code for a in apps if a.org_code == o.code))
    console.print(t)


@happ_app.command("add")
@_guard
def app_add(
    ctx: typer.Context,
    org: str,
    code: str,
    name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
) -> None:
    """Register an app (subsystem) of organization ORG."""
    reg = _registry(ctx)
    a = reg.add_app(org, code, name)
    console.print(f"registered {reg.instance}/{a.org_code}/{a.code}")


@res_app.command("add")
@_guard
def resource_add(
    ctx: typer.Context,
    org: str,
    code: str,
    name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
) -> None:
    """Register a resource that organization ORG provides through its node (who may call it
    is decided by agreements: `qiao request`, docs/agreements.md)."""
    reg = _registry(ctx)
    r = reg.add_resource(org, code, name)
    console.print(f"registered {r.org_code}/{r.code}")


@res_app.command("list")
@_guard
def resource_list(ctx: typer.Context) -> None:
    """List the registered resources."""
    t = Table("org", "code", "name")
    for r in _registry(ctx).list_resources():
        t.add_row(r.org_code, r.code, r.name)
    console.print(t)


# --- node ---------------------------------------------------------------------------------
@node_app.callback(invoke_without_command=True)
def node(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Start the node, or run one of its administrative commands."""
    try:
        settings = NodeSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc
    ctx.obj = {"settings": settings}
    if ctx.invoked_subcommand is None:
        from qiao.node.app import run

        try:
            run(settings)
        except FileNotFoundError as exc:
            raise _fail(str(exc)) from exc


def _node_settings(ctx: typer.Context) -> NodeSettings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


def _node_keys(ctx: typer.Context) -> Any:
    from qiao.db import make_engine, migrate
    from qiao.exchange.keys import ApiKeyService

    s = _node_settings(ctx)
    migrate("node", s.database_url)
    return ApiKeyService(make_engine(s.database_url), max_ttl=timedelta(days=s.api_key_max_days))


@node_app.command("enroll")
def node_enroll(
    ctx: typer.Context,
    token: Annotated[str, typer.Option(help="One-time token from `qiao hub enroll-token`.")],
    org: Annotated[str, typer.Option(help="This node's organization (credit code).")],
    witness: Annotated[
        bool, typer.Option(help="Witness the hub's ledger (cosign its checkpoints).")
    ] = True,
) -> None:
    """Enroll this node at the hub: get its certificate and the hub's trust anchors."""
    from qiao.node.identity import EnrollmentError, enroll

    s = _node_settings(ctx)
    try:
        ident = enroll(
            s.data_dir,
            hub_url=s.hub_url,
            token=token,
            node_name=s.name,
            org=org,
            address=s.peer_address,
            witness_url=s.witness_url if witness else "",
        )
    except EnrollmentError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"enrolled node {ident.name} of {ident.org}; certificate {ident.fingerprint}")


@key_app.command("create")
def key_create(
    ctx: typer.Context,
    app_code: Annotated[str, typer.Argument(metavar="APP", help="The app's code.")],
    days: Annotated[
        int, typer.Option(help="Days until the key expires (every key expires).", min=1)
    ] = 90,
    label: Annotated[str, typer.Option(help="A note for the key list.")] = "",
) -> None:
    """Create an API key for one of this organization's apps (shown once)."""
    from qiao.exchange.keys import KeyPolicyError
    from qiao.node.identity import NodeIdentity

    ident = NodeIdentity.load(_node_settings(ctx).data_dir)
    try:
        issued = _node_keys(ctx).create(
            f"{ident.client_id_prefix}{app_code}", label=label, ttl=timedelta(days=days)
        )
    except KeyPolicyError as exc:
        raise _fail(str(exc), 2) from exc
    console.print(issued.secret)
    err.print(
        f"key {issued.key_id} for {issued.client}; expires "
        f"{issued.expires_at.isoformat() if issued.expires_at else 'never'}"
    )


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, key_id: str) -> None:
    """Revoke an API key by its id (the part after qk_)."""
    if not _node_keys(ctx).revoke(key_id):
        raise _fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")


@key_app.command("list")
def key_list(ctx: typer.Context) -> None:
    """List this node's API keys (never their secrets)."""
    t = Table("key id", "client", "label", "expires", "revoked")
    for k in _node_keys(ctx).list():
        t.add_row(
            k.key_id,
            k.client,
            k.label,
            k.expires_at.isoformat() if k.expires_at else "never",
            k.revoked_at.isoformat() if k.revoked_at else "",
        )
    console.print(t)


@node_app.command("records")
def node_records(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    exchange_id: Annotated[str | None, typer.Option("--id", help="One exchange.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Compare every record the hub accepted with its ledger entry at the hub "
            "(exit 1 when one differs).",
        ),
    ] = False,
) -> None:
    """Show this node's exchange records, with their ledger index and receipt link."""
    from qiao.db import make_engine, migrate
    from qiao.exchange.records import recent_records

    s = _node_settings(ctx)
    migrate("node", s.database_url)
    if verify:
        _verify_node_records(s)
        return
    rows = recent_records(make_engine(s.database_url), limit, exchange_id)

    def receipt(r: Any) -> str:
        # The record's link to its proof on the ledger, once the hub has accepted it.
        if r["ledger_index"] is None:
            return ""
        return f"{s.hub_url}/ledger/receipts/{r['exchange_id']}?role={r['role']}"

    if as_json:
        for r in rows:
            out = {k: str(v) if k == "started_at" else v for k, v in r.items()}
            out["receipt"] = receipt(r) or None
            console.print_json(json.dumps(out))
        return
    t = Table("time", "id", "role", "client", "resource", "status", "ms", "problem", "ledger")
    for r in rows:
        t.add_row(
            r["started_at"].isoformat(timespec="seconds"),
            r["exchange_id"],
            r["role"],
            r["client"],
            f"{r['provider_org']}/{r['resource']}",
            str(r["status"]),
            f"{r['duration_ms']:.1f}",
            r["problem_type"],
            str(r["ledger_index"]) if r["ledger_index"] is not None else "pending",
        )
    console.print(t)


def _verify_node_records(s: Any) -> None:
    import httpx
    from rich.markup import escape

    from qiao.db import make_engine
    from qiao.ledger.submit import verify_records

    with httpx.Client(timeout=30) as client:

        def fetch(index: int) -> bytes | None:
            r = client.get(f"{s.hub_url}/ledger/entries/{index}")
            if r.status_code == 404:
                return None
            r.raise_for_status()
            return r.content

        engine = make_engine(s.database_url)
        try:
            audit = verify_records(engine, s.name, fetch)
        except httpx.HTTPError as exc:
            raise _fail(f"could not read the ledger at {s.hub_url}: {exc}") from exc
        finally:
            engine.dispose()
    for line in audit.findings:
        console.print(f"[red]✗[/red] {escape(line)}", highlight=False, soft_wrap=True)
    if audit.findings:
        raise _fail(
            f"{len(audit.findings)} of {audit.checked} records differ from their ledger entries",
            1,
        )
    console.print(
        f"[green]✓[/green] {audit.checked} records match their ledger entries"
        + (f"; {audit.pending} not on the ledger yet" if audit.pending else "")
    )


@node_app.command("status")
def node_status(ctx: typer.Context) -> None:
    """Ask the running node for its health (configuration, grace period left)."""
    import httpx

    s = _node_settings(ctx)
    try:
        r = httpx.get(f"http://{s.host}:{s.port}/healthz", timeout=5)
    except httpx.HTTPError as exc:
        raise _fail(f"node not reachable at {s.host}:{s.port}: {exc}") from exc
    console.print_json(r.text)
    if r.status_code != 200:
        raise typer.Exit(1)


# --- ledger -------------------------------------------------------------------------------
ledger_app = typer.Typer(
    help="The hub's tamper-evident ledger: status, full verification, the witness policy.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")


def _add_subcommands() -> None:
    # Late imports: each area keeps its commands in its own module.
    from qiao.agreements import cli as agreements_cli
    from qiao.agreements import emergency_cli
    from qiao.catalog.cli import catalog_app
    from qiao.identity.cli import apps_app, users_app

    agreements_cli.register(app)
    emergency_cli.register(app)

    from qiao.events.cli import events_app

    for sub, name in (
        (catalog_app, "catalog"),
        (users_app, "users"),
        (apps_app, "apps"),
        (events_app, "events"),
    ):
        if sub.registered_commands or sub.registered_groups:
            app.add_typer(sub, name=name)


_add_subcommands()


@ledger_app.callback()
def ledger(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Work on the hub's ledger (reads the hub's configuration)."""
    try:
        ctx.obj = {"settings": HubSettings.load(config)}
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc


def _hub_ledger(ctx: typer.Context) -> Any:
    from qiao.hub.app import open_ledger

    return open_ledger(_hub_settings(ctx), _registry(ctx))


@ledger_app.command("status")
@_guard
def ledger_status(ctx: typer.Context) -> None:
    """Size, last cosigned checkpoint, witnesses and their last cosignature."""
    status = _hub_ledger(ctx).status()
    console.print(
        f"origin {status['origin']}: {status['size']} entries, "
        f"cosigned up to {status['cosigned_size']} "
        f"({status['cosigned_at'] or 'never'}), quorum {status['quorum']}"
    )
    t = Table("witness", "url", "last size", "last cosigned", "last error")
    for w in status["witnesses"]:
        t.add_row(
            w["name"],
            w["url"],
            str(w.get("size", "-")),
            w.get("last_cosigned_at") or "-",
            w.get("last_error", ""),
        )
    console.print(t)


@ledger_app.command("verify")
@_guard
def ledger_verify(ctx: typer.Context) -> None:
    """Re-derive the whole log from the stored entries; report every discrepancy."""
    findings = _hub_ledger(ctx).verify()
    for line in findings:
        console.print(f"[red]✗[/red] {line}")
    if findings:
        raise _fail(f"the ledger does not verify: {len(findings)} finding(s)", 1)
    console.print("[green]✓[/green] the ledger verifies: every entry, tile and checkpoint")


@ledger_app.command("policy")
@_guard
def ledger_policy(ctx: typer.Context) -> None:
    """Print the C2SP tlog-policy for this ledger: the log key, the witnesses, the quorum."""
    console.print(_hub_ledger(ctx).policy_text(), end="", soft_wrap=True, markup=False)


@app.command("verify")
def verify(
    receipt: Annotated[
        Path, typer.Argument(help="A receipt (C2SP tlog-proof) file.", exists=True, dir_okay=False)
    ],
    policy: Annotated[
        Path,
        typer.Option(
            help="The tlog-policy file (`qiao ledger policy`).", exists=True, dir_okay=False
        ),
    ],
    entry: Annotated[
        Path | None,
        typer.Option(
            help="The entry the receipt is for (from /ledger/entries/N); checked if given.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Verify a receipt offline, with nothing but the log's and the witnesses' public keys."""
    from qiao.ledger.errors import LedgerError
    from qiao.ledger.policy import Policy
    from qiao.ledger.receipt import verify_receipt

    try:
        pol = Policy.parse(policy.read_text())
        statement = verify_receipt(receipt.read_bytes(), entry.read_bytes() if entry else None, pol)
    except (LedgerError, ValueError) as exc:
        raise _fail(f"receipt does not verify: {exc}", 1) from exc
    if entry is None:
        err.print("note: without --entry only the checkpoint was checked, not what it contains")
    console.print(f"[green]✓[/green] {statement}", soft_wrap=True)


# --- demo ---------------------------------------------------------------------------------
@app.command()
def demo(
    check: Annotated[
        bool,
        typer.Option(help="Run the scenario once and exit non-zero if any expected outcome fails."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON line when ready (hub_url, console_url, sample) and keep running.",
        ),
    ] = False,
    data_dir: Annotated[
        Path, typer.Option(help="Where the demo city keeps its data (recreated on each run).")
    ] = Path(".qiao-demo"),
    base_port: Annotated[
        int, typer.Option(help="First of the loopback ports to use (0: any free ports).")
    ] = 8700,
    database_url: Annotated[
        str | None, typer.Option(help="Hub database URL (default: SQLite in the data directory).")
    ] = None,
) -> None:
    """Run the fictional demo city: a hub, five departments' nodes and their backends."""
    from qiao.demo.run import run_demo

    raise typer.Exit(
        run_demo(
            data_dir=data_dir,
            base_port=base_port,
            check=check,
            as_json=as_json,
            database_url=database_url,
        )
    )


def main() -> None:
    app()
