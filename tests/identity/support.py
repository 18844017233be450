"""A hub with identity for tests: cheap Argon2, an injectable clock, HTTPS test client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
from fastapi.testclient import TestClient

from qiao.config import HubSettings
from qiao.db import utcnow
from qiao.hub.app import create_app, open_registry
from qiao.identity import mfa
from qiao.identity.roles import CLI, Role
from qiao.identity.service import IdentityService
from qiao.registry.services import RegistryService

A = "91350100M000100Y43"
B = "12350100MB00010016"
PASSWORD = "Correct-Horse-42!"
BASE = "https://hub.example.gov.cn"
FAST_ARGON2: dict[str, Any] = {
    "argon2_memory_kib": 8,
    "argon2_time_cost": 1,
    "argon2_parallelism": 1,
}


class Clock:
    """A clock the test moves by hand (no sleeps)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Hub:
    settings: HubSettings
    registry: RegistryService
    identity: IdentityService
    clock: Clock
    app: Any

    def client(self, address: str = "203.0.113.7") -> TestClient:
        return TestClient(self.app, base_url=BASE, client=(address, 50000))

    def user(
        self, username: str, role: Role, org: str | None = A, *, totp: bool | None = None
    ) -> str | None:
        """Create a user with PASSWORD; enroll TOTP (for roles that need it, by default);
        returns the TOTP secret."""
        self.identity.add_user(
            CLI, username, org=org, roles=frozenset({role}), name=username, password=PASSWORD
        )
        view = self.identity.get_user(CLI, username)
        if totp is None:
            totp = view.needs_mfa
        if not totp:
            return None
        e = self.identity.start_totp(username)
        self.identity.confirm_totp(username, self.code(e.secret, -1))
        return e.secret

    def code(self, secret: str, offset: int = 0) -> str:
        """The TOTP code at the clock's step + ``offset``."""
        return mfa.code_at(secret, mfa.time_step(self.clock()) + offset)

    def sign_in(
        self, client: TestClient, username: str, secret: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"username": username, "password": PASSWORD}
        if secret:
            self.clock.advance(30)  # a fresh step: codes are single use
            body["otp"] = self.code(secret)
        r = client.post("/api/v1/session", json=body)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def make_hub(tmp_path: Path, db_url: str, **overrides: Any) -> Hub:
    settings = HubSettings.load(
        None,
        data_dir=tmp_path,
        database_url=db_url,
        instance="CN-T",
        public_url=BASE,
        ledger_interval_seconds=3600,
        **{**FAST_ARGON2, **overrides},
    )
    registry = open_registry(settings)
    registry.add_organization(A, "甲局")
    registry.add_organization(B, "乙局")
    app = create_app(settings, registry)
    identity: IdentityService = app.state.identity
    clock = Clock()
    identity.clock = clock
    return Hub(settings, registry, identity, clock, app)


__all__ = ["BASE", "PASSWORD", "A", "B", "Clock", "Hub", "make_hub", "pyotp"]
