"""One city on loopback shared by the soak (test_soak.py) and the network faults
(test_network.py): the embedded default — a SQLite hub with its embedded event broker and a
SQLite node for public security, transport, market regulation and the bank — started once per
run, whichever of the two files asks first.

The nodes reach the hub through a :class:`~tests.integration.conftest.HubProxy`, so a test can
take the hub away from them (configuration, ledger submissions and event streams alike) while
the hub itself keeps running. The settings are the production ones shortened to fit a test:

- the nodes' configuration grace period is seconds, not a day, so that "serving on the cached
  configuration, then refusing" (docs/operations.md) happens within the test;
- the consumer waits ``provider_timeout_seconds`` = 4 s for a provider's node instead of 60 s,
  so that a provider that never answers is detected within the run (docs/exchange-protocol.md);
- the hub trims the event logs every few seconds and keeps no event longer than
  ``EVENT_RETENTION_SECONDS`` (``events_trim_seconds``, ``events_max_retention_hours``,
  docs/events.md#retention), so that retention runs many times during a soak.

Both files import :func:`soak_city`; the city is kept in the pytest config's stash, so that the
two imports share it (a session fixture defined in two modules would start two), and stopped
when pytest unconfigures.
"""

from __future__ import annotations

import signal
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import func, select, text

from qiao.config import HubSettings
from qiao.db import make_engine
from qiao.demo.backends import market_regulation, public_security
from qiao.demo.city import Deployment
from qiao.demo.people import DemoCity, build_city
from qiao.demo.processes import Process, write_toml
from qiao.exchange.models import ExchangeRecord
from tests.integration.conftest import HubProxy, LoopThread

NODES = ("police", "transport", "market", "bank")
CONFIG_GRACE_SECONDS = 5.0
PROVIDER_TIMEOUT_SECONDS = 4.0
EVENT_RETENTION_SECONDS = 15.0
EVENT_TRIM_SECONDS = 3.0
STREAM = "traffic-accidents"


class _SoakDeployment(Deployment):
    """The demo deployment with a few hub settings of its own (``hub_extra``)."""

    hub_extra: dict[str, Any]

    def hub_settings(self) -> HubSettings:
        settings = super().hub_settings()
        path = settings.data_dir / "hub.toml"
        values = tomllib.loads(path.read_text())
        write_toml(path, {**values, **self.hub_extra})
        return HubSettings.load(path)


@dataclass
class SoakCity:
    dep: Deployment
    proxy: HubProxy
    backends: LoopThread
    registry: Any
    people: DemoCity
    data_dir: Path
    frozen: set[str] = field(default_factory=set)
    started_in: float = 0.0  # seconds to start the hub and the nodes

    # --- who calls what --------------------------------------------------------------------
    def app_headers(self, dept: str, app: str, purpose: str = "", **extra: str) -> dict[str, str]:
        node = self.dep.nodes[dept]
        out = {
            "X-Qiao-Client": self.dep.client(dept, app),
            "Authorization": f"Bearer {node.api_keys[app]}",
            **extra,
        }
        if purpose:
            out["X-Qiao-Purpose"] = purpose
        return out

    def violations(self, i: int) -> tuple[str, dict[str, str]]:
        """Transport → public security, vehicle violations of a plate (conditional sharing)."""
        plate = self.people.violations[i % len(self.people.violations)].plate
        url = f"{self.dep.nodes['transport'].url}/r1/{self.dep.codes['police']}/vehicle-violations"
        return f"{url}?plate={plate}", self.app_headers(
            "transport", "traffic-enforcement", "traffic-enforcement"
        )

    def accidents(self) -> tuple[str, dict[str, str]]:
        """Transport → public security, traffic accidents (unconditional)."""
        url = f"{self.dep.nodes['transport'].url}/r1/{self.dep.codes['police']}/traffic-accidents"
        return f"{url}?district=东湖区", self.app_headers(
            "transport", "traffic-enforcement", "traffic-management"
        )

    def enterprise(self, i: int) -> tuple[str, dict[str, str]]:
        """The bank → market regulation, enterprise credit (an end user required)."""
        ent = self.people.enterprises[i % len(self.people.enterprises)]
        url = f"{self.dep.nodes['bank'].url}/r1/{self.dep.codes['market']}/enterprise-credit"
        return f"{url}/{ent.uscc}", self.app_headers(
            "bank", "credit-check", "loan-review", **{"X-Qiao-User": "loan-officer-007"}
        )

    def identity(self, i: int) -> tuple[str, dict[str, str], dict[str, str]]:
        """The bank → public security, identity verification (POST, an end user required)."""
        person = self.people.people[i % len(self.people.people)]
        url = f"{self.dep.nodes['bank'].url}/r1/{self.dep.codes['police']}/identity-verification"
        headers = self.app_headers(
            "bank", "credit-check", "account-opening", **{"X-Qiao-User": "teller-001"}
        )
        return url, headers, {"citizen_id": person.citizen_id, "name": person.name}

    def publish_url(self) -> tuple[str, dict[str, str]]:
        return f"{self.dep.nodes['police'].url}/e1/{STREAM}", self.app_headers(
            "police", "police-app"
        )

    def pull_url(self) -> tuple[str, dict[str, str]]:
        node = self.dep.nodes["transport"]
        return f"{node.url}/e1/{self.dep.codes['police']}/{STREAM}", self.app_headers(
            "transport", "traffic-enforcement", "traffic-management"
        )

    # --- what the processes hold -------------------------------------------------------------
    def processes(self) -> dict[str, Process]:
        assert self.dep.hub is not None
        return {"hub": self.dep.hub, **{d: self.dep.nodes[d].process for d in NODES}}

    def database(self, name: str) -> Path:
        if name == "hub":
            return self.data_dir / "hub" / "hub.db"
        return self.dep.nodes[name].data_dir / "node.db"

    def database_bytes(self, name: str) -> int:
        """The database file and its write-ahead log (SQLite WAL mode)."""
        db = self.database(name)
        return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())

    def wal_bytes(self, name: str) -> int:
        wal = Path(f"{self.database(name)}-wal")
        return wal.stat().st_size if wal.exists() else 0

    def count(self, name: str, sql: str) -> int:
        """One number from a database, read-only (never in the way of the process's writes)."""
        eng = make_engine(f"sqlite:///file:{self.database(name).resolve()}?mode=ro&uri=true")
        try:
            with eng.connect() as c:
                return int(c.execute(text(sql)).scalar_one())
        finally:
            eng.dispose()

    def records(self, dept: str, *, pending_only: bool = False) -> int:
        eng = make_engine(self.dep.node_db_url(dept))
        try:
            q = select(func.count()).select_from(ExchangeRecord)
            if pending_only:
                q = q.where(ExchangeRecord.ledger_index.is_(None))
            with eng.connect() as c:
                return int(c.execute(q).scalar_one())
        finally:
            eng.dispose()

    def record_statuses(self, dept: str, exchange_ids: list[str]) -> list[int]:
        eng = make_engine(self.dep.node_db_url(dept))
        try:
            with eng.connect() as c:
                return [
                    int(s)
                    for (s,) in c.execute(
                        select(ExchangeRecord.status).where(
                            ExchangeRecord.exchange_id.in_(exchange_ids)
                        )
                    )
                ]
        finally:
            eng.dispose()

    def resources(self, name: str) -> tuple[int, int]:
        """(RSS bytes, open file descriptors) of a process and its children."""
        popen = self.processes()[name].popen
        assert popen is not None
        root = psutil.Process(popen.pid)
        rss = fds = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                rss += p.memory_info().rss
                fds += p.num_fds()
            except psutil.NoSuchProcess:
                pass
        return rss, fds

    def ledger_status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.dep.hub_url}/ledger/status", timeout=10)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    # --- faults --------------------------------------------------------------------------------
    def freeze(self, dept: str) -> None:
        """SIGSTOP a node: the kernel still accepts TCP connections on its listening sockets
        (up to the backlog), but nothing ever answers — a black hole on loopback."""
        popen = self.dep.nodes[dept].process.popen
        assert popen is not None
        popen.send_signal(signal.SIGSTOP)
        self.frozen.add(dept)

    def thaw(self, dept: str) -> None:
        popen = self.dep.nodes[dept].process.popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGCONT)
        self.frozen.discard(dept)

    def healthy(self) -> None:
        """Every process up and healthy (a fault test leaves the city as it found it)."""
        for name, proc in self.processes().items():
            assert proc.running, f"{name} is not running"
            proc.wait_healthy(30)

    def stop(self) -> None:
        for dept in list(self.frozen):
            self.thaw(dept)
        self.dep.stop()
        if self.proxy.session is not None:
            self.backends.run(self.proxy.session.close())
        self.backends.close()


def _start(data_dir: Path) -> SoakCity:
    dep = _SoakDeployment(data_dir=data_dir)
    dep.hub_extra = {
        "events_trim_seconds": EVENT_TRIM_SECONDS,
        "events_max_retention_hours": EVENT_RETENTION_SECONDS / 3600,
        # The demo seeds ~45 people with passwords: Argon2id at its production cost (RFC 9106
        # §4, 64 MiB) would take most of the start-up; nothing here measures password hashing.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8 * 1024,
        "argon2_parallelism": 1,
    }
    people = build_city()
    loop = LoopThread()
    proxy = HubProxy("")
    city = SoakCity(dep, proxy, loop, None, people, data_dir)
    try:
        dep.backend_urls = {
            "police": loop.serve(public_security(people)),
            "market": loop.serve(market_regulation(people)),
        }
        city.registry = dep.start_hub()
        proxy.hub_url = dep.hub_url
        dep.node_settings = {
            "hub_url": loop.serve(proxy.app()),
            "config_refresh_seconds": 0.5,
            "config_grace_seconds": CONFIG_GRACE_SECONDS,
            # Short long-polls, so that a hub taken away is felt within a second.
            "config_wait_seconds": 1.0,
            "provider_timeout_seconds": PROVIDER_TIMEOUT_SECONDS,
        }
        dep.start_nodes(city.registry, only=set(NODES))
    except BaseException:
        city.stop()
        raise
    return city


_KEY = pytest.StashKey[SoakCity]()


@pytest.fixture(scope="session")
def soak_city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SoakCity:
    config = request.config
    city = config.stash.get(_KEY, None)
    if city is None:
        t0 = time.monotonic()
        city = _start(tmp_path_factory.mktemp("soak-city"))
        config.stash[_KEY] = city
        config.add_cleanup(city.stop)
        city.started_in = time.monotonic() - t0
    return city


def eventually(fn: Any, timeout: float, step: float = 0.1) -> float:
    """Poll ``fn`` until truthy; returns the seconds it took (an HTTP error counts as not yet)."""
    t0 = time.monotonic()
    while True:
        try:
            if fn():
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(step)


__all__ = ["SoakCity", "eventually", "soak_city"]
