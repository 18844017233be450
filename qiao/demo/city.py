"""The fictional demo city: its departments, their apps and resources, and how to stand it up.

``Deployment`` seeds a hub, starts it, enrolls one node per department, gives each app an API
key, and starts the nodes: real processes on loopback ports, as a city's IT team would run
them, only all on one machine.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qiao.config import HubSettings
from qiao.db import make_engine, migrate
from qiao.demo.people import make_uscc
from qiao.demo.processes import Process, free_port, write_toml
from qiao.demo.sharing import DemoSharing, seed_agreements
from qiao.demo.streams import FEEDS, webhook_settings
from qiao.exchange.keys import ApiKeyService
from qiao.node.identity import enroll

SEED = 20261129
REGION = "440300"  # the fictional 桥城 (Qiaocheng) borrows a real-format division code
MARKER = ".qiao-demo-data"


@dataclass(frozen=True)
class Department:
    key: str
    name: str
    name_en: str
    kind: str
    apps: tuple[str, ...]
    # resource code -> (name, backend path on the department's demo backend)
    resources: dict[str, tuple[str, str]] = field(default_factory=dict)


DEPARTMENTS: tuple[Department, ...] = (
    Department(
        "police",
        "桥城市公安局",
        "Qiaocheng Public Security Bureau",
        "government",
        ("police-app",),
        {
            "vehicle-violations": ("机动车违法记录查询", "/violations"),
            "traffic-accidents": ("道路交通事故信息", "/accidents"),
            "identity-verification": ("身份核验", "/identity/verify"),
        },
    ),
    Department(
        "transport",
        "桥城市交通运输局",
        "Qiaocheng Transport Bureau",
        "government",
        ("traffic-enforcement",),
        {"bike-stations": ("公共自行车站点状态", "/stations")},
    ),
    Department(
        "market",
        "桥城市市场监督管理局",
        "Qiaocheng Market Regulation Administration",
        "government",
        ("registration",),
        {"enterprise-credit": ("企业登记与信用信息", "/enterprises")},
    ),
    Department(
        "health",
        "桥城市卫生健康委员会",
        "Qiaocheng Health Commission",
        "government",
        ("epidemic-stats",),
        {"epidemic-daily": ("每日疫情统计", "/daily")},
    ),
    Department(
        "bank", "桥城商业银行股份有限公司", "Qiaocheng Commercial Bank", "bank", ("credit-check",)
    ),
    # Takes bicycle station status by webhook (qiao.demo.streams), to dispatch bikes and keep
    # the pavements clear in its district.
    Department(
        "district",
        "桥城市东湖区人民政府办公室",
        "Qiaocheng Donghu District Office",
        "government",
        ("bike-dispatch",),
    ),
)


def org_codes(seed: int = SEED) -> dict[str, str]:
    """Each department's unified social credit code, generated with valid check characters."""
    rng = random.Random(seed)
    return {
        d.key: make_uscc(rng, "9" if d.kind == "bank" else "1", "1", REGION) for d in DEPARTMENTS
    }


@dataclass
class NodeInfo:
    dept: Department
    org: str
    name: str
    port: int
    peer_port: int
    data_dir: Path
    config: Path
    process: Process
    api_keys: dict[str, str] = field(default_factory=dict)  # app code -> secret

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Deployment:
    """A hub and one node per department on loopback."""

    data_dir: Path
    instance: str = "CN-DEMO"
    base_port: int = 0
    hub_database_url: str | None = None
    node_database_urls: dict[str, str] = field(default_factory=dict)
    backend_urls: dict[str, str] = field(default_factory=dict)  # dept key -> backend base URL
    node_settings: dict[str, Any] = field(default_factory=dict)
    # More backends per department beyond the demo's own: dept key -> {resource: settings}.
    extra_services: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=org_codes)
    # The departments whose nodes witness the hub's ledger.
    witnesses: tuple[str, ...] = ("police", "transport", "market")
    hub: Process | None = None
    hub_url: str = ""
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    # Sign-in names of the demo's people (written with their secrets to users.json).
    users: list[str] = field(default_factory=list)
    # The agreements the demo made (qiao.demo.sharing).
    sharing: DemoSharing = field(default_factory=DemoSharing)
    # Webhook signing secrets (``whsec_``), by feed name (qiao.demo.streams.FEEDS): a feed
    # whose subscriber has a demo backend and a secret here is delivered to it by webhook.
    webhook_secrets: dict[str, str] = field(default_factory=dict)

    def _port(self, offset: int) -> int:
        return self.base_port + offset if self.base_port else free_port()

    def client(self, dept: str, app: str) -> str:
        return f"{self.instance}/{self.codes[dept]}/{app}"

    def prepare(self) -> None:
        """A fresh data directory (only one this demo made itself is ever deleted)."""
        if self.data_dir.exists():
            if not (self.data_dir / MARKER).exists() and any(self.data_dir.iterdir()):
                raise RuntimeError(
                    f"{self.data_dir} exists and is not a demo data directory; "
                    "choose another --data-dir"
                )
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        (self.data_dir / MARKER).write_text("created by qiao demo; deleted on the next run\n")

    def hub_settings(self) -> HubSettings:
        port = self._port(0)
        hub_dir = self.data_dir / "hub"
        values: dict[str, Any] = {
            "data_dir": str(hub_dir),
            "port": port,
            "instance": self.instance,
            "ledger_interval_seconds": 1.0,
            # The demo hub is plain HTTP on loopback: a Secure cookie would never be sent.
            "session_cookie_secure": False,
        }
        if self.hub_database_url:
            values["database_url"] = self.hub_database_url
        write_toml(hub_dir / "hub.toml", values)
        return HubSettings.load(hub_dir / "hub.toml")

    def seed_registry(self, settings: HubSettings) -> Any:
        from qiao.hub.app import open_registry

        reg = open_registry(settings)
        for d in DEPARTMENTS:
            org = self.codes[d.key]
            reg.add_organization(org, d.name, name_en=d.name_en, kind=d.kind)
            for a in d.apps:
                reg.add_app(org, a)
        self.publish_catalog(reg)
        return reg

    def seed_users(self, settings: HubSettings, reg: Any) -> Path:
        """One user per role per department plus a platform administrator, TOTP enrolled
        for the roles that need it; their passwords and TOTP secrets go to ``users.json``
        (mode 0600) so a person can sign in: a demo's secrets, never a real city's."""
        import json
        import os

        from qiao.identity import mfa
        from qiao.identity.roles import CLI, Role
        from qiao.identity.service import IdentityService

        identity = IdentityService(reg, settings)
        # Two platform administrators: declaring an emergency takes both (docs/agreements.md).
        wanted: list[tuple[str, str | None, Role]] = [
            ("admin", None, Role.PLATFORM_ADMIN),
            ("admin-2", None, Role.PLATFORM_ADMIN),
        ]
        for d in DEPARTMENTS:
            for role in Role:
                if role is not Role.PLATFORM_ADMIN:
                    wanted.append((f"{d.key}-{role.value}", self.codes[d.key], role))
        people: list[dict[str, Any]] = []
        for username, org, role in wanted:
            view, password = identity.add_user(
                CLI, username, org=org, roles=frozenset({role}), name=username
            )
            entry: dict[str, Any] = {
                "username": username,
                "password": password,
                "org": org,
                "roles": [role.value],
            }
            if view.needs_mfa:
                e = identity.start_totp(username)
                step = mfa.time_step(identity.clock()) - 1  # leave the current code usable
                entry["recovery_codes"] = identity.confirm_totp(
                    username, mfa.code_at(e.secret, step)
                )
                entry["totp_secret"], entry["otpauth_uri"] = e.secret, e.uri
            people.append(entry)
            self.users.append(username)
        path = self.data_dir / "users.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(
                {"hub": settings.public_url, "users": people}, f, ensure_ascii=False, indent=2
            )
        return path

    def publish_catalog(self, reg: Any) -> None:
        """Publish the city's catalog (platform standards, then the departments' resources)
        through the catalog service, which also creates the registry's resource rows; any
        department resource the catalog does not describe is registered bare."""
        import importlib

        from qiao.catalog.service import CatalogService
        from qiao.catalog.spec import Catalog
        from qiao.identity.roles import CLI

        catalog = CatalogService(reg)
        bundle = Catalog()
        try:
            standards = importlib.import_module("qiao.catalog.standards").standard_catalog()
            city = importlib.import_module("qiao.demo.catalog").demo_catalog(self.codes)
            bundle = Catalog(
                code_lists=standards.code_lists + city.code_lists,
                data_elements=standards.data_elements + city.data_elements,
                resources=city.resources,
            )
        except ImportError:  # the demo catalog is not part of this build
            pass
        catalog.import_catalog(CLI, bundle)
        described = {(r.provider, r.code) for r in bundle.resources}
        for d in DEPARTMENTS:
            for code, (name, _path) in d.resources.items():
                if (self.codes[d.key], code) not in described:
                    reg.add_resource(self.codes[d.key], code, name)

    def start_hub(self) -> Any:
        settings = self.hub_settings()
        reg = self.seed_registry(settings)
        self.seed_users(settings, reg)
        self.sharing = seed_agreements(reg, self.codes)
        self.hub_url = settings.public_url
        self.hub = Process(
            "hub",
            ["hub", "--config", str(settings.data_dir / "hub.toml")],
            settings.data_dir / "hub.log",
            f"{self.hub_url}/healthz",
        ).start()
        self.hub.wait_healthy()
        return reg

    def start_nodes(self, reg: Any, only: set[str] | None = None) -> None:
        """Enroll and start the departments' nodes (all, or the ``only`` ones)."""
        for i, d in enumerate(DEPARTMENTS):
            if only is not None and d.key not in only:
                continue
            org = self.codes[d.key]
            node_dir = self.data_dir / d.key
            port, peer = self._port(10 + 2 * i), self._port(11 + 2 * i)
            values: dict[str, Any] = {
                "name": f"{d.key}-node",
                "data_dir": str(node_dir),
                "hub_url": self.hub_url,
                "port": port,
                "peer_port": peer,
                "config_refresh_seconds": 2.0,
                "ledger_submit_seconds": 0.5,
                **self.node_settings,
            }
            if d.key in self.node_database_urls:
                values["database_url"] = self.node_database_urls[d.key]
            backend = self.backend_urls.get(d.key)
            services: dict[str, Any] = {}
            if backend:
                services = {
                    code: {"url": backend + path, "timeout_seconds": 10.0}
                    for code, (_n, path) in d.resources.items()
                }
            services.update(self.extra_services.get(d.key, {}))
            if services:
                values["services"] = services
            # The streams this department receives by webhook at its demo backend.
            feeds = [
                f
                for f in FEEDS
                if backend and f.subscriber == d.key and f.name in self.webhook_secrets
            ]
            if backend and feeds:
                values["webhooks"] = [
                    webhook_settings(f, self.codes[f.provider], backend) for f in feeds
                ]
            config = write_toml(node_dir / "node.toml", values)
            token, _exp = reg.create_enrollment_token(org)
            enroll(
                node_dir,
                hub_url=self.hub_url,
                token=token,
                node_name=f"{d.key}-node",
                org=org,
                address=f"https://127.0.0.1:{peer}",
                witness_url=f"http://127.0.0.1:{port}/witness" if d.key in self.witnesses else "",
            )
            for f in feeds:
                # Written before the node starts, so the backend and the node share it (the
                # node creates a random one only when the file is missing).
                _write_secret(node_dir / f"webhook-{f.name}.secret", self.webhook_secrets[f.name])
            db_url = values.get("database_url") or f"sqlite:///{(node_dir / 'node.db').resolve()}"
            migrate("node", db_url)
            keys = ApiKeyService(make_engine(db_url))
            info = NodeInfo(
                d,
                org,
                f"{d.key}-node",
                port,
                peer,
                node_dir,
                config,
                Process(
                    f"{d.key}-node",
                    ["node", "--config", str(config)],
                    node_dir / "node.log",
                    f"http://127.0.0.1:{port}/healthz",
                ),
            )
            for a in d.apps:
                info.api_keys[a] = keys.create(self.client(d.key, a), label="demo").secret
            self.nodes[d.key] = info
        for info in self.nodes.values():
            info.process.start()
        for info in self.nodes.values():
            info.process.wait_healthy()

    def node_db_url(self, dept: str) -> str:
        return (
            self.node_database_urls.get(dept)
            or f"sqlite:///{(self.nodes[dept].data_dir / 'node.db').resolve()}"
        )

    def stop(self) -> None:
        for info in self.nodes.values():
            info.process.stop()
        if self.hub is not None:
            self.hub.stop()


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
