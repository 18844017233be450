"""``qiao events webhooks`` and ``qiao events dead-letters``: the node operator's view of
webhook delivery (docs/events.md#webhooks).

They work on the node's database (``--config node.toml``, as ``qiao node key`` does), so they
run beside the node: the running dispatcher notices a rewind or a replay request within its
long poll (a few seconds).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

webhooks_app = typer.Typer(
    help="Streams this node delivers to backends by webhook: positions, rewinds.",
    invoke_without_command=True,
)
dead_letters_app = typer.Typer(
    help="Events a webhook gave up on: list, replay, discard.", invoke_without_command=True
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The node's TOML configuration file (or set QIAO_CONFIG).",
        exists=True,
        dir_okay=False,
    ),
]


def register(events_app: typer.Typer) -> None:
    events_app.add_typer(webhooks_app, name="webhooks")
    events_app.add_typer(dead_letters_app, name="dead-letters")


def _settings(config: Path | None) -> Any:
    from qiao.cli import _fail
    from qiao.config import NodeSettings

    try:
        return NodeSettings.load(config)
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc


def _store(ctx: typer.Context) -> Any:
    from qiao.db import make_engine, migrate
    from qiao.events.webhooks import WebhookStore

    s = ctx.obj["settings"]
    migrate("node", s.database_url)
    return WebhookStore(make_engine(s.database_url))


def _when(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


# --- qiao events webhooks -------------------------------------------------------------------
@webhooks_app.callback()
def webhooks(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """List this node's webhooks: stream, URL, position, dead letters, paused."""
    from rich.table import Table

    from qiao.cli import console

    ctx.obj = {"settings": _settings(config)}
    if ctx.invoked_subcommand is not None:
        return
    states = {st.name: st for st in _store(ctx).states()}
    t = Table("name", "stream", "url", "position", "dead letters", "paused")
    for w in ctx.obj["settings"].webhooks:
        st = states.get(w.name)
        t.add_row(
            w.name,
            f"{w.provider}/{w.stream}",
            w.url,
            str(st.position) if st else "not started",
            str(st.dead_letters) if st else "0",
            (st.paused or "no") if st else "",
        )
    console.print(t)


@webhooks_app.command("rewind")
def rewind(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The webhook's name.")],
    offset: Annotated[
        int | None, typer.Option(help="Deliver again the events after this offset.", min=0)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Deliver again from this time (RFC 3339), within retention."),
    ] = None,
) -> None:
    """Deliver a webhook's stream again from an offset or a time (receivers de-duplicate by
    webhook-id)."""
    from qiao.cli import _fail, console

    s = ctx.obj["settings"]
    hook = next((w for w in s.webhooks if w.name == name), None)
    if hook is None:
        raise _fail(f"no webhook {name!r} in this node's configuration", 2)
    if (offset is None) == (since is None):
        raise _fail("give --offset N or --since TIME", 2)
    if since is not None:
        try:
            when = datetime.fromisoformat(since)
        except ValueError as exc:
            raise _fail(f"--since {since!r} is not an RFC 3339 date-time", 2) from exc
        if when.tzinfo is None:
            raise _fail("--since needs a time zone offset (Z or +08:00)", 2)
        offset = asyncio.run(_offset_at(s, hook.provider, hook.stream, when))
    assert offset is not None
    store = _store(ctx)
    store.position(hook.name, hook.provider, hook.stream)  # a webhook not yet started
    before = store.rewind(hook.name, offset)
    console.print(f"webhook {name}: position {before} -> {offset}; delivers from {offset + 1}")


async def _offset_at(s: Any, provider: str, stream: str, when: datetime) -> int:
    """The last offset of this node's log published before ``when``, asked of the node's
    broker with the node's own key (as the running node asks it)."""
    from qiao.events.broker import Broker
    from qiao.events.nats import NatsBroker
    from qiao.events.publisher import stream_name
    from qiao.events.remote import HubBroker
    from qiao.node.confcache import NodeCredentials
    from qiao.node.identity import NodeIdentity

    identity = NodeIdentity.load(s.data_dir)
    broker: Broker
    if s.events_broker == "hub":
        broker = HubBroker(s.hub_url, NodeCredentials.of(identity))
    else:
        broker = await NatsBroker.connect(s.events_broker)
    try:
        return await broker.offset_at(stream_name(provider, stream), identity.name, when)
    finally:
        await broker.close()


# --- qiao events dead-letters -----------------------------------------------------------------
@dead_letters_app.callback()
def dead_letters(
    ctx: typer.Context,
    config: ConfigOpt = None,
    webhook: Annotated[str | None, typer.Option(help="Only this webhook's.")] = None,
) -> None:
    """List the dead letters (never their content: it stays sealed)."""
    from rich.table import Table

    from qiao.cli import console

    ctx.obj = {"settings": _settings(config)}
    if ctx.invoked_subcommand is not None:
        return
    t = Table("id", "webhook", "offset", "event id", "attempts", "last error", "failed", "state")
    for d in _store(ctx).dead_letters(webhook):
        t.add_row(
            str(d.id),
            d.webhook,
            str(d.offset),
            d.event_id,
            str(d.attempts),
            d.last_error,
            _when(d.failed_at),
            d.state,
        )
    console.print(t)


@dead_letters_app.command("replay")
def replay(
    ctx: typer.Context,
    dead_letter: Annotated[
        int | None, typer.Argument(metavar="ID", help="The dead letter's id.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of --webhook.")] = False,
    webhook: Annotated[str | None, typer.Option(help="The webhook (needed with --all).")] = None,
) -> None:
    """Ask the running dispatcher to deliver dead letters again (with its retries)."""
    from qiao.cli import _fail, console

    if (dead_letter is None) == (not all_):
        raise _fail("give a dead letter's ID or --all --webhook NAME", 2)
    if all_ and webhook is None:
        raise _fail("--all needs --webhook NAME", 2)
    n = _store(ctx).request_replay(webhook, dead_letter)
    if n == 0:
        raise _fail("no such dead letter waiting (see qiao events dead-letters)")
    console.print(f"{n} dead letter(s) queued; the node's dispatcher delivers them again")


@dead_letters_app.command("discard")
def discard(
    ctx: typer.Context,
    dead_letter: Annotated[int, typer.Argument(metavar="ID", help="The dead letter's id.")],
) -> None:
    """Delete a dead letter for good."""
    from qiao.cli import _fail, console

    if not _store(ctx).discard(dead_letter):
        raise _fail(f"no dead letter {dead_letter}")
    console.print(f"discarded dead letter {dead_letter}")
