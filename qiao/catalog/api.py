"""The catalog's hub API (filled in by the catalog work)."""

from __future__ import annotations

from typing import Any

from qiao.config import HubSettings
from qiao.registry.services import RegistryService


def install(app: Any, registry: RegistryService, settings: HubSettings) -> None:
    """Add the catalog's routes to the hub."""
