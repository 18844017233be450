"""Identity on the hub: sign-in, sessions, MFA and the OpenID Connect provider (filled in by
the identity work)."""

from __future__ import annotations

from typing import Any

from qiao.config import HubSettings
from qiao.registry.services import RegistryService


def install(app: Any, registry: RegistryService, settings: HubSettings) -> None:
    """Add identity's routes and authenticators to the hub."""
