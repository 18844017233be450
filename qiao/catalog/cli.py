"""``qiao catalog``: import, export, search and show catalog entries on the hub."""

from __future__ import annotations

import typer

catalog_app = typer.Typer(
    help="The resource catalog: data elements, code lists and resources.", no_args_is_help=True
)
