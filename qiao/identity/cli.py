"""``qiao users`` and ``qiao apps``: people, their roles and MFA; apps and their credentials."""

from __future__ import annotations

import typer

users_app = typer.Typer(
    help="People who sign in to the hub, and their roles.", no_args_is_help=True
)
apps_app = typer.Typer(help="Apps and their credentials (API keys).", no_args_is_help=True)
