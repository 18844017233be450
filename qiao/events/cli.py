"""``qiao events tail``: watch a stream as an app with the right to see it.

The command is an app of the subscriber's organization calling its own node (``GET /e1/…``,
docs/events.md) with its API key, so what it shows is exactly what the agreements let that app
see, masked as the app gets it. It only reads: it never acknowledges, so tailing does not move
the node's position.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

events_app = typer.Typer(help="Event streams (docs/events.md).", no_args_is_help=True)


@events_app.command("tail")
def tail(
    provider: Annotated[str, typer.Argument(help="The providing organization (USCC).")],
    stream: Annotated[str, typer.Argument(help="The stream's code, e.g. traffic-accidents.")],
    node: Annotated[str, typer.Option(help="Your node's app URL, e.g. http://10.1.0.5:8710.")],
    client: Annotated[str, typer.Option(help="Your app: {instance}/{org}/{app}.")],
    purpose: Annotated[str, typer.Option(help="The purpose code your agreement allows.")],
    key: Annotated[
        str,
        typer.Option(
            envvar="QIAO_API_KEY",
            help="The app's API key (or set QIAO_API_KEY).",
            show_default=False,
        ),
    ],
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Replay what the log still holds first.")
    ] = False,
    count: Annotated[
        int, typer.Option(help="Stop after this many events (0: until Ctrl-C).", min=0)
    ] = 0,
    wait: Annotated[int, typer.Option(help="Long-poll seconds per request.", min=1, max=30)] = 25,
) -> None:
    """Print a stream's events as they arrive, one JSON object per line."""
    import httpx

    from qiao.cli import _fail

    url = f"{node.rstrip('/')}/e1/{provider}/{stream}"
    headers = {"Authorization": f"Bearer {key}", "X-Qiao-Client": client, "X-Qiao-Purpose": purpose}
    after: int | None = 0 if from_start else None
    shown = 0
    backoff = 1.0
    with httpx.Client(timeout=wait + 10) as http:
        while count == 0 or shown < count:
            params: dict[str, int] = {"wait": wait, "limit": 100}
            if after is not None:
                params["after"] = after
            try:
                r = http.get(url, params=params, headers=headers)
            except httpx.HTTPError as exc:
                typer.echo(f"node unreachable ({exc}); retrying in {backoff:.0f} s", err=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            if r.status_code != 200:
                try:
                    problem = r.json()
                    why = (
                        f"{problem.get('type', '')}: {problem.get('detail', problem.get('title'))}"
                    )
                except ValueError:
                    why = r.text[:200]
                raise _fail(f"{r.status_code} {why}")
            body = r.json()
            for event in body["events"]:
                typer.echo(json.dumps(event, ensure_ascii=False))
                shown += 1
                if count and shown >= count:
                    return
            # Without --from-start the first answer starts at the node's position; from then
            # on this command keeps its own, never the node's.
            after = int(body.get("next", after or 0))


# Records of published and delivered events, and their check against the ledger.
from qiao.events.records import records_command  # noqa: E402

events_app.command("records")(records_command)

# Webhook positions, rewinds and dead letters (qiao.events.webhook_cli).
from qiao.events.webhook_cli import register as register_webhooks  # noqa: E402

register_webhooks(events_app)
