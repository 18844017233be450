"""The crash-consistency harness (issue 9, part 1): a small city in the scale-out set-up, load
from a few client threads, kill -9 of one part at a time, and the bookkeeping that tells
afterwards whether anything acknowledged went missing or came twice.

The city is the demo's, cut to what makes the point: the hub and three nodes on PostgreSQL
(one database each), events on our own NATS JetStream server. The transport bureau's node is
the consumer (its app asks public security for vehicle violations) and the subscriber (its
app pulls traffic accidents); public security's node is the provider and the publisher; the
market regulator's node is the third witness, so that a quorum (2 of 3) survives any one
node's death.

What counts as acknowledged is what a department's app or backend was told:
- an exchange, when the app got a 2xx whose ``X-Qiao-Id`` is the id it sent (the response
  completes only once both nodes' records are durable, qiao.exchange.relay);
- an event, when the backend got the publish's 202 naming the event's id (qiao.events).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from qiao.config import HubSettings
from qiao.db import make_engine
from qiao.demo.backends import public_security
from qiao.demo.city import Deployment
from qiao.demo.people import DemoCity, build_city, generate_accidents
from qiao.demo.processes import Process, free_port
from qiao.events.record_models import EventRecord
from qiao.exchange.models import ExchangeRecord
from tests.integration.conftest import LoopThread
from tests.integration.test_events_faults import NatsServer

CONSUMER, PROVIDER, WITNESS = "transport", "police", "market"
CONSUMER_APP, PUBLISHER_APP = "traffic-enforcement", "police-app"
RESOURCE, STREAM = "vehicle-violations", "traffic-accidents"
# Hub, a consumer node, a provider node, the databases' client connections, the NATS server:
# the targets of the issue, in the order the rounds cycle through them.
TARGETS = ("hub", "consumer node", "provider node", "PostgreSQL connections", "NATS server")

EXCHANGE_THREADS = 3
KEYS = 4  # partition keys (accidents) the publisher spreads its events over
PER_BATCH = 8
# How long one unanswered call or batch is retried before the round gives up on it; a process
# that takes longer to come back has not recovered without help.
RECOVERY_DEADLINE = 60.0
# Pauses between calls: load, not a benchmark. Two cores run the whole city here; a client
# that saturates them would measure how long Python takes to import under contention, not
# how the city recovers.
EXCHANGE_PAUSE = 0.05
BATCH_PAUSE = 0.1
# A publish whose PubAcks died with the NATS server answers only when the node's wait for
# them runs out; a backend that does not wait that long retries sooner, with the same ids.
PUBLISH_TIMEOUT = 3.0


# --- the city ----------------------------------------------------------------------------------
class CrashDeployment(Deployment):
    """The demo city without its people: nobody signs in to the console here, and hashing
    38 demo passwords with Argon2 would take a quarter of the short profile's minute."""

    def seed_users(self, settings: HubSettings, reg: Any) -> Path:
        return self.data_dir / "users.json"


@dataclass
class CrashCity:
    """The deployment, its NATS server and its PostgreSQL databases (name -> URL)."""

    dep: Deployment
    nats: NatsServer
    backends: LoopThread
    databases: dict[str, str]
    admin_url: str
    demo: DemoCity
    registry: Any = None

    @property
    def hub(self) -> Process:
        assert self.dep.hub is not None
        return self.dep.hub

    def processes(self) -> list[Process]:
        hub = [self.dep.hub] if self.dep.hub is not None else []
        return [*hub, *(n.process for n in self.dep.nodes.values())]

    def hub_settings(self) -> HubSettings:
        return HubSettings.load(self.dep.data_dir / "hub" / "hub.toml")

    # What the apps send.
    def consumer_headers(self, exchange_id: str) -> dict[str, str]:
        node = self.dep.nodes[CONSUMER]
        return {
            "X-Qiao-Client": self.dep.client(CONSUMER, CONSUMER_APP),
            "Authorization": f"Bearer {node.api_keys[CONSUMER_APP]}",
            "X-Qiao-Purpose": "traffic-enforcement",
            "X-Qiao-Id": exchange_id,
        }

    def exchange_url(self) -> str:
        return f"{self.dep.nodes[CONSUMER].url}/r1/{self.dep.codes[PROVIDER]}/{RESOURCE}"

    def publisher_headers(self) -> dict[str, str]:
        node = self.dep.nodes[PROVIDER]
        return {
            "Authorization": f"Bearer {node.api_keys[PUBLISHER_APP]}",
            "X-Qiao-Client": self.dep.client(PROVIDER, PUBLISHER_APP),
        }

    def publish_url(self) -> str:
        return f"{self.dep.nodes[PROVIDER].url}/e1/{STREAM}"

    def reader_headers(self) -> dict[str, str]:
        node = self.dep.nodes[CONSUMER]
        return {
            "Authorization": f"Bearer {node.api_keys[CONSUMER_APP]}",
            "X-Qiao-Client": self.dep.client(CONSUMER, CONSUMER_APP),
            "X-Qiao-Purpose": "traffic-management",
        }

    def stream_url(self) -> str:
        return f"{self.dep.nodes[CONSUMER].url}/e1/{self.dep.codes[PROVIDER]}/{STREAM}"

    # --- the faults ---------------------------------------------------------------------------
    def kill(self, target: str) -> int:
        """kill -9 ``target`` (for the databases: every client connection of the city's);
        returns how many processes or connections died."""
        if target == "PostgreSQL connections":
            return self.terminate_connections()
        if target == "hub":
            process = self.hub.popen
            self.hub.kill()
        elif target in ("consumer node", "provider node"):
            node = self.dep.nodes[CONSUMER if target == "consumer node" else PROVIDER].process
            process = node.popen
            node.kill()
        elif target == "NATS server":
            process = self.nats.popen
            self.nats.kill()
        else:
            raise ValueError(target)
        # Killed by us with SIGKILL, not exited on its own before.
        return int(process is not None and process.returncode == -9)

    def restart(self, target: str) -> None:
        """Start again what ``kill`` stopped, as its operator's service manager would: the
        same command, the same port and data, nothing else done by hand."""
        if target == "hub":
            self.hub.start()
        elif target == "consumer node":
            self.dep.nodes[CONSUMER].process.start()
        elif target == "provider node":
            self.dep.nodes[PROVIDER].process.start()
        elif target == "NATS server":
            self.nats.start()
        # The database server itself stays up: its clients must reconnect on their own.

    def terminate_connections(self) -> int:
        """pg_terminate_backend on every client connection to the city's databases (the
        server and the other databases on it stay); returns how many were cut."""
        names = [url.rsplit("/", 1)[1] for url in self.databases.values()]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                (names,),
            ).fetchall()
        return sum(1 for (cut,) in rows if cut)

    def wait_healthy(self, timeout: float = RECOVERY_DEADLINE) -> None:
        """Every process answers its /healthz with 200 (a node: a valid configuration)."""
        deadline = time.monotonic() + timeout
        for process in self.processes():
            process.wait_healthy(max(1.0, deadline - time.monotonic()))

    def ledger_pending(self) -> dict[str, int]:
        """Each node's records not yet on the hub's ledger (its /healthz ``ledger.pending``)."""
        out: dict[str, int] = {}
        for key, node in self.dep.nodes.items():
            body = httpx.get(f"{node.url}/healthz", timeout=10).json()
            out[key] = int(body["ledger"]["pending"])
        return out

    def cosigned(self, size: int) -> bool:
        """A quorum of witnesses cosigned a checkpoint covering ``size`` entries: the hub's
        ledger loop (signing, gathering cosignatures) is running again."""
        status = httpx.get(f"{self.dep.hub_url}/ledger/status", timeout=10).json()
        return int(status["cosigned_size"]) >= size

    def ledger_size(self) -> int:
        return int(httpx.get(f"{self.dep.hub_url}/ledger/status", timeout=10).json()["size"])

    def stop(self) -> None:
        # The data is thrown away: kill -9 is as good an end as any, and a graceful stop of
        # four processes costs seconds of the short profile's minute.
        for process in self.processes():
            process.kill()
        try:
            self.dep.stop()
        finally:
            try:
                self.nats.kill()
            finally:
                self.backends.close()


@contextmanager
def crash_city(
    data_dir: Path, new_database: Callable[[], str], admin_url: str
) -> Iterator[CrashCity]:
    """Stand the city up (and always take it down again)."""
    loop = LoopThread()
    nats = NatsServer(free_port(), data_dir / "jetstream", data_dir / "nats.log")
    dep = CrashDeployment(data_dir=data_dir / "city")
    demo = build_city()
    city = CrashCity(dep, nats, loop, {}, admin_url.replace("+psycopg", ""), demo)
    try:
        nats.start()
        city.databases = {k: new_database() for k in ("hub", CONSUMER, PROVIDER, WITNESS)}
        dep.hub_database_url = city.databases["hub"]
        dep.node_database_urls = {k: v for k, v in city.databases.items() if k != "hub"}
        dep.backend_urls = {PROVIDER: loop.serve(public_security(demo))}
        dep.node_settings = {"events_broker": nats.url}
        dep.witnesses = (CONSUMER, PROVIDER, WITNESS)
        city.registry = dep.start_hub()
        dep.start_nodes(city.registry, only={CONSUMER, PROVIDER, WITNESS})
        yield city
    finally:
        city.stop()


# --- the load ----------------------------------------------------------------------------------
@dataclass
class Exchanges:
    """Apps of the transport bureau asking for vehicle violations, each call with an id of its
    own; an answer that is not a 2xx with that id is an unknown outcome (not retried)."""

    city: CrashCity
    acked: list[tuple[str, float, float]] = field(default_factory=list)  # id, start, end
    sent: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    failed_at: list[float] = field(default_factory=list)  # when each failed call ended
    attempts: list[tuple[float, float]] = field(default_factory=list)  # start, end of each
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, stop: threading.Event, plates: list[str]) -> None:
        url = self.city.exchange_url()
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                exchange_id = f"crash-{uuid.uuid4().hex}"
                plate = plates[i % len(plates)]
                i += 1
                begun = time.monotonic()
                with self.lock:
                    self.sent.add(exchange_id)
                try:
                    r = client.get(
                        url,
                        params={"plate": plate},
                        headers=self.city.consumer_headers(exchange_id),
                    )
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures[exc.__class__.__name__] += 1
                        self.failed_at.append(time.monotonic())
                    stop.wait(0.1)
                    continue
                with self.lock:
                    self.attempts.append((begun, time.monotonic()))
                if 200 <= r.status_code < 300 and r.headers.get("X-Qiao-Id") == exchange_id:
                    with self.lock:
                        self.acked.append((exchange_id, begun, time.monotonic()))
                    stop.wait(EXCHANGE_PAUSE)
                else:
                    kind = r.headers.get("content-type", "").split(";")[0]
                    with self.lock:
                        self.failures[f"{r.status_code} {kind}"] += 1
                        self.failed_at.append(time.monotonic())
                    stop.wait(0.1)


@dataclass
class Events:
    """Public security's backend publishing accidents in batches, ids ``{run}-k{key}-s{seq}``
    with a sequence per partition key. A batch without its 202 (an unknown outcome) is posted
    again with the same ids until it gets one, before the next batch: so the order per key is
    the order of the sequence numbers, and a second copy would be a duplicate."""

    city: CrashCity
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    batches: int = 0
    acked: list[tuple[str, float, float]] = field(default_factory=list)  # id, start, end
    sent: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    failed_at: list[float] = field(default_factory=list)  # when each failed attempt ended
    attempts: list[tuple[float, float]] = field(default_factory=list)  # start, end of each
    # A batch given up on (nothing recovered) or answered wrongly: the load stops there.
    unacked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def batch(self, b: int) -> list[dict[str, Any]]:
        accidents = generate_accidents(KEYS)
        per_key = PER_BATCH // KEYS
        return [
            {
                **accidents[i % KEYS],
                "event_id": event_id(self.run, i % KEYS, b * per_key + i // KEYS),
            }
            for i in range(PER_BATCH)
        ]

    def run_(self, stop: threading.Event) -> None:
        url, headers = self.city.publish_url(), self.city.publisher_headers()
        # A publish whose PubAcks died with the NATS server may not answer: the client's
        # timeout turns that into an unknown outcome, retried with the same ids.
        with httpx.Client(timeout=PUBLISH_TIMEOUT) as client:
            while not stop.is_set():
                events = self.batch(self.batches)
                ids = [e["event_id"] for e in events]
                deadline = time.monotonic() + RECOVERY_DEADLINE
                while True:
                    with self.lock:
                        self.sent.update(ids)
                    begun = time.monotonic()
                    try:
                        try:
                            r = client.post(url, json={"events": events}, headers=headers)
                        finally:
                            with self.lock:
                                self.attempts.append((begun, time.monotonic()))
                        if r.status_code == 202:
                            got = [e["event_id"] for e in r.json()["events"]]
                            if got != ids:
                                self.unacked.append(f"batch {self.batches}: 202 for {got[:3]}")
                                return
                            with self.lock:
                                now = time.monotonic()
                                self.acked += [(i, begun, now) for i in ids]
                            break
                        kind = r.headers.get("content-type", "").split(";")[0]
                        with self.lock:
                            self.failures[f"{r.status_code} {kind}"] += 1
                            self.failed_at.append(time.monotonic())
                    except httpx.HTTPError as exc:
                        with self.lock:
                            self.failures[exc.__class__.__name__] += 1
                            self.failed_at.append(time.monotonic())
                    if time.monotonic() > deadline:
                        # Later batches would break the order per key: the load ends here.
                        self.unacked.append(f"batch {self.batches}")
                        return
                    time.sleep(0.2)
                self.batches += 1
                stop.wait(BATCH_PAUSE)


def event_id(run: str, key: int, seq: int) -> str:
    return f"{run}-k{key}-s{seq:06d}"


def key_and_seq(eid: str) -> tuple[int, int]:
    _, k, s = eid.rsplit("-", 2)
    return int(k[1:]), int(s[1:])


@dataclass
class Subscriber:
    """The transport bureau's app pulling accidents from its node and acknowledging them.

    It handles each offset once (a pull after a crash starts again at the node's acknowledged
    position, so some events come twice: those are counted as redelivered, the contract of
    an at-least-once stream); ``handled`` is what it handled, in order."""

    city: CrashCity
    handled: list[tuple[int, str]] = field(default_factory=list)  # offset, event id
    last: int = 0
    redelivered: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def pull_once(self, client: httpx.Client, *, after: int | None, wait: int) -> int:
        """One pull and its ack; returns how many events came (-1: the pull failed)."""
        params: dict[str, Any] = {"limit": 200, "wait": wait}
        if after is not None:
            params["after"] = after
        try:
            r = client.get(
                self.city.stream_url(), params=params, headers=self.city.reader_headers()
            )
            if r.status_code != 200:
                self.failures[f"pull {r.status_code}"] += 1
                return -1
            body = r.json()
            for e in body["events"]:
                if e["offset"] <= self.last:
                    self.redelivered += 1
                    continue
                self.handled.append((e["offset"], e["event_id"]))
                self.last = e["offset"]
            if body["events"]:
                a = client.post(
                    f"{self.city.stream_url()}/ack",
                    json={"offset": body["next"]},
                    headers=self.city.reader_headers(),
                )
                if a.status_code != 200:
                    self.failures[f"ack {a.status_code}"] += 1
            return len(body["events"])
        except httpx.HTTPError as exc:
            self.failures[exc.__class__.__name__] += 1
            return -1

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                if self.pull_once(client, after=None, wait=1) < 0:
                    stop.wait(0.2)

    def drain(self, timeout: float = RECOVERY_DEADLINE) -> None:
        """Pull to the end of the log (from what it handled last)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                n = self.pull_once(client, after=self.last, wait=0)
                if n == 0:
                    return
                if n < 0:
                    time.sleep(0.2)
        raise AssertionError(f"the subscriber did not reach the end of the log in {timeout} s")


@dataclass
class Load:
    """The three kinds of client running in threads until ``stop``ped."""

    city: CrashCity
    exchanges: Exchanges
    events: Events
    subscriber: Subscriber
    stop_flag: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.stop_flag.clear()
        plates = [v.plate for v in self.city.demo.vehicles[:50]]
        self.threads = [
            threading.Thread(target=self.exchanges.run, args=(self.stop_flag, plates), daemon=True)
            for _ in range(EXCHANGE_THREADS)
        ]
        self.threads.append(
            threading.Thread(target=self.events.run_, args=(self.stop_flag,), daemon=True)
        )
        self.threads.append(
            threading.Thread(target=self.subscriber.run, args=(self.stop_flag,), daemon=True)
        )
        for t in self.threads:
            t.start()
        return self

    def answered_since(self, t: float) -> float | None:
        """When both an exchange and a publish begun at or after ``t`` were acknowledged
        (the later of the two), or None while either has not been."""
        calls = first_ack_after(self.exchanges.acked, self.exchanges.lock, t)
        batches = first_ack_after(self.events.acked, self.events.lock, t)
        return None if calls is None or batches is None else max(calls, batches)

    def cut_off(self, start: float, end: float) -> int:
        """How many calls and publishes failed (an unknown outcome) between two moments."""
        with self.exchanges.lock:
            calls = sum(1 for t in self.exchanges.failed_at if start <= t <= end)
        with self.events.lock:
            batches = sum(1 for t in self.events.failed_at if start <= t <= end)
        return calls + batches

    def in_flight(self, start: float, end: float) -> int:
        """How many calls and publishes were under way at some moment between two."""
        with self.exchanges.lock:
            calls = sum(1 for b, e in self.exchanges.attempts if b <= end and e >= start)
        with self.events.lock:
            batches = sum(1 for b, e in self.events.attempts if b <= end and e >= start)
        return calls + batches

    def stop(self) -> None:
        """Quiesce: every client finishes its call in flight (a batch, until it is acked)."""
        self.stop_flag.set()
        for t in self.threads:
            t.join(RECOVERY_DEADLINE + 15)
        alive = [t for t in self.threads if t.is_alive()]
        if alive:
            raise AssertionError(f"{len(alive)} load threads did not finish")


def acked_since(items: list[tuple[str, float, float]], lock: threading.Lock, t: float) -> bool:
    with lock:
        return any(begun >= t for _, begun, _ in items)


def first_ack_after(
    items: list[tuple[str, float, float]], lock: threading.Lock, t: float
) -> float | None:
    with lock:
        ends = [end for _, begun, end in items if begun >= t]
    return min(ends) if ends else None


# --- the checks --------------------------------------------------------------------------------
@dataclass
class Findings:
    lost_exchanges: list[str] = field(default_factory=list)
    duplicated_exchanges: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    duplicated_events: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)
    # Events in more than one publisher record: published again after an unknown outcome.
    republished: int = 0

    @property
    def lost(self) -> int:
        """How many acknowledged exchanges and events something is missing of."""
        return ids(self.lost_exchanges) + ids(self.lost_events)

    @property
    def duplicated(self) -> int:
        return ids(self.duplicated_exchanges) + ids(self.duplicated_events)

    def problems(self) -> list[str]:
        out: list[str] = []
        for name in ("lost_exchanges", "duplicated_exchanges", "lost_events",
                     "duplicated_events", "out_of_order", "ledger"):  # fmt: skip
            items = getattr(self, name)
            if items:
                out.append(f"{name.replace('_', ' ')}: {len(items)} ({', '.join(items[:5])})")
        return out


def node_records(
    city: CrashCity, dept: str, ids: set[str]
) -> dict[str, list[tuple[str, int | None]]]:
    """exchange id -> [(role, ledger index)] of ``dept``'s node's records among ``ids``."""
    out: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    engine = make_engine(city.dep.node_db_url(dept))
    try:
        with engine.connect() as c:
            t = ExchangeRecord.__table__
            rows = c.execute(
                select(t.c.exchange_id, t.c.role, t.c.ledger_index).where(
                    t.c.exchange_id.like("crash-%")
                )
            ).all()
    finally:
        engine.dispose()
    for exchange_id, role, index in rows:
        if exchange_id in ids:
            out[exchange_id].append((role, index))
    return out


def published_records(city: CrashCity, run: str) -> dict[str, list[tuple[str, int | None]]]:
    """event id -> [(batch, the batch's ledger index)] of public security's publisher
    records: each publish call is one batch, carried to the ledger by an exchange record
    whose id is the batch's (qiao.events.records)."""
    engine = make_engine(city.dep.node_db_url(PROVIDER))
    try:
        with engine.connect() as c:
            ev, ex = EventRecord.__table__, ExchangeRecord.__table__
            rows = c.execute(
                select(ev.c.event_id, ev.c.batch, ex.c.ledger_index)
                .select_from(ev)
                .outerjoin(ex, (ex.c.exchange_id == ev.c.batch) & (ex.c.role == "publisher"))
                .where(ev.c.role == "publisher", ev.c.event_id.like(f"{run}-%"))
            ).all()
    finally:
        engine.dispose()
    out: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for eid, batch, index in rows:
        out[eid].append((batch, index))
    return out


@dataclass
class LedgerReader:
    """Reads the hub's ledger entries as they grow (straight from its database, a read-only
    auditor's view), keeping which (exchange id, role) each exchange entry names."""

    city: CrashCity
    next_index: int = 0
    exchanges: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    by_index: dict[int, tuple[str, str]] = field(default_factory=dict)

    def catch_up(self) -> int:
        url = self.city.databases["hub"].replace("+psycopg", "")
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT idx, entry FROM ledger_entries WHERE idx >= %s ORDER BY idx",
                (self.next_index,),
            ).fetchall()
        for idx, entry in rows:
            doc = json.loads(bytes(entry))
            if doc.get("type") == "exchange":
                key = (doc["exchange_id"], doc["role"])
                self.exchanges[key].append(idx)
                self.by_index[idx] = key
            self.next_index = idx + 1
        return self.next_index

    def verify(self) -> list[str]:
        """The whole log re-derived from its entries, as ``qiao ledger verify`` does."""
        from qiao.hub.app import open_ledger

        ledger = open_ledger(self.city.hub_settings(), self.city.registry)
        return list(ledger.verify())


def check(city: CrashCity, load: Load, ledger: LedgerReader) -> Findings:
    """After a quiesced round: every acknowledged exchange once in both nodes' records and
    once per side on the ledger; every acknowledged event in the publisher's records, its
    publish on the ledger, and handled by the subscriber once, in order per key. Each
    finding is a line ``<exchange or event id>: <what is wrong>``."""
    f = Findings()
    with load.exchanges.lock:
        acked = {i for i, _, _ in load.exchanges.acked}
        sent = set(load.exchanges.sent)
    ledger.catch_up()
    for dept, role in ((CONSUMER, "consumer"), (PROVIDER, "provider")):
        records = node_records(city, dept, sent)
        for exchange_id in sorted(acked):
            mine = [r for r in records.get(exchange_id, []) if r[0] == role]
            if not mine:
                f.lost_exchanges.append(f"{exchange_id}: not in the {role}'s records")
            if not ledger.exchanges.get((exchange_id, role)):
                f.lost_exchanges.append(f"{exchange_id}: not on the ledger as {role}")
            for _, index in mine:
                if index is None:
                    f.ledger.append(f"{exchange_id}: the {role}'s record has no ledger index")
                elif ledger.by_index.get(index) != (exchange_id, role):
                    f.ledger.append(f"{exchange_id}: the {role}'s entry {index} is another's")
        # Duplicates among everything sent, acknowledged or not: a call is recorded once.
        for exchange_id, rows in sorted(records.items()):
            if sum(1 for r in rows if r[0] == role) > 1:
                f.duplicated_exchanges.append(f"{exchange_id}: twice in the {role}'s records")
            if len(ledger.exchanges.get((exchange_id, role), [])) > 1:
                f.duplicated_exchanges.append(f"{exchange_id}: twice on the ledger as {role}")

    ev = load.events
    with ev.lock:
        acked_events = {i for i, _, _ in ev.acked}
        sent_events = set(ev.sent)
    handled = [eid for _, eid in load.subscriber.handled if eid.startswith(ev.run)]
    counts = Counter(handled)
    f.lost_events += [
        f"{eid}: never handed to the subscriber" for eid in sorted(acked_events - set(counts))
    ]
    f.duplicated_events += [
        f"{eid}: handed over {n} times" for eid, n in sorted(counts.items()) if n > 1
    ]
    f.duplicated_events += [
        f"{eid}: handed over, never sent" for eid in sorted(set(counts) - sent_events)
    ]
    last: dict[int, int] = {}
    for eid in dict.fromkeys(handled):
        key, seq = key_and_seq(eid)
        if seq < last.get(key, -1):
            f.out_of_order.append(f"{eid}: after s{last[key]:06d} of key {key}")
        last[key] = seq
    # Each acknowledged event in a publisher record whose batch is on the ledger. A publish
    # retried after its answer was lost is recorded each time it was made (counted apart).
    published = published_records(city, ev.run)
    for eid in sorted(acked_events):
        batches = published.get(eid, [])
        if not batches:
            f.lost_events.append(f"{eid}: not in the publisher's records")
        elif not any(
            index is not None and ledger.by_index.get(index) == (batch, "publisher")
            for batch, index in batches
        ):
            f.lost_events.append(f"{eid}: its publish is not on the ledger")
    f.republished = sum(1 for batches in published.values() if len(batches) > 1)
    return f


def ids(findings: list[str]) -> int:
    """How many exchanges or events the findings name (several lines may name one)."""
    return len({line.split(":", 1)[0] for line in findings})


def summary(values: list[float]) -> tuple[float, float]:
    return (round(max(values), 1), round(statistics.median(values), 1)) if values else (0.0, 0.0)
