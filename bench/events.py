"""Benchmark of event streams end to end, side by side with raw nats-py in the same run.

    provider backend ──POST /e1/traffic-accidents──> police node ──sealed──> broker
    transport app <──GET /e1/{police}/traffic-accidents?wait=&limit=1000── transport node

A real hub and the police and transport nodes run as processes on loopback (the demo's city,
``qiao.demo.city.Deployment``), under the demo's agreement on ``traffic-accidents`` (transport
subscribes; masking applies as in the demo). This process is both the police backend that
publishes batches and the transport app that long-polls, acknowledges each batch, and notes
when every event arrived. Each event carries its publish-request start time (monotonic
nanoseconds of this process) in its ``event_id``, so latency is publish request start to
delivered at the app.

Measured per broker: (a) sustained throughput, events/s delivered at the app while the
backend publishes as fast as it can; (b) latency percentiles at a fixed offered rate (by
default 1,000 events/s, as batches of 10 every 10 ms). Brokers: NATS JetStream (the node
setting ``events_broker = "nats://…"``) and the hub's embedded broker (SQLite, or PostgreSQL
with ``--hub-database``). The baseline is raw nats-py on the same server in the same run:
JetStream publish with ack → pull consumer fetching batches and acknowledging the last of
each, with payloads the size of Qiao's envelopes. Prints one JSON document.

    .venv/bin/python bench/events.py [--duration 12] [--rate 1000] [--brokers nats,hub]

JetStream streams and KV entries the run creates are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import orjson
from nats.js.api import StorageType, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.exchange import machine
from qiao.demo.city import Deployment, org_codes
from qiao.demo.people import generate_accidents

STREAM_CODE = "traffic-accidents"
PURPOSE = "traffic-management"
NATS_URL = "nats://127.0.0.1:4222"


# --- measuring -----------------------------------------------------------------------------
@dataclass
class Tally:
    """What the app received: arrival counts per second and latencies (ms)."""

    delivered: int = 0
    published: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    last_arrival: float = 0.0  # time.monotonic() of the last new event

    def arrived(self, seq: int, sent_ns: int, now_ns: int) -> None:
        if seq in self.seen:
            self.duplicates += 1  # at-least-once: counted once
            return
        self.seen.add(seq)
        self.delivered += 1
        self.latencies_ms.append((now_ns - sent_ns) / 1e6)
        self.last_arrival = now_ns / 1e9


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2)}


# Sequence numbers are never reused within a run, so a late event is never taken for a new one.
counter = itertools.count()


def _event_id(run: str, seq: int, sent_ns: int) -> str:
    return f"{run}-{seq}-{sent_ns}"


def _parse_id(event_id: str) -> tuple[int, int]:
    _, seq, sent = event_id.rsplit("-", 2)
    return int(seq), int(sent)


# --- load shapes, shared by Qiao and the raw baseline ---------------------------------------
Send = Callable[[list[int]], Awaitable[None]]  # publishes the sequence numbers given
Receive = Callable[[Tally], Awaitable[None]]  # loops until cancelled


async def _flat_out(send: Send, batch: int, senders: int, stop: float, tally: Tally) -> None:
    """``senders`` concurrent publishers, each sending batches back to back until ``stop``."""

    async def one() -> None:
        while time.monotonic() < stop:
            seqs = [next(counter) for _ in range(batch)]
            await send(seqs)
            tally.published += batch

    await asyncio.gather(*(one() for _ in range(senders)))


async def _paced(send: Send, rate: int, batch: int, stop: float, tally: Tally) -> None:
    """``rate`` events/s offered as ``batch``-sized requests on a fixed schedule (a request
    that overruns its slot does not delay the next: requests overlap)."""
    interval = batch / rate
    pending: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    while next_at < stop:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        seqs = [next(counter) for _ in range(batch)]
        task = asyncio.create_task(send(seqs))
        pending.add(task)
        task.add_done_callback(pending.discard)
        tally.published += batch
        next_at += interval
    await asyncio.gather(*pending)


async def _phase(
    send: Send, receive: Receive, *, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Warm up, then measure one phase; delivery is counted only inside the window."""
    warm = Tally()
    receiving = asyncio.create_task(receive(warm))
    await _flat_out(send, args.batch, 1, time.monotonic() + args.warmup, warm)
    await _drain(warm, warm.published, 10.0)
    receiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiving

    tally = Tally()
    receiving = asyncio.create_task(receive(tally))
    started = time.monotonic()
    stop = started + args.duration
    if mode == "throughput":
        await _flat_out(send, args.batch, args.senders, stop, tally)
    else:
        await _paced(send, args.rate, args.paced_batch, stop, tally)
    published_s = time.monotonic() - started
    delivered_in_window = tally.delivered
    await _drain(tally, tally.published, 30.0)
    elapsed = max(tally.last_arrival, stop) - started
    receiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiving
    return {
        "published": tally.published,
        "delivered": tally.delivered,
        "duplicates": tally.duplicates,
        "published_per_s": round(tally.published / published_s),
        # Every event published in the window, delivered (from the first publish to the last
        # arrival): the slower side sets this.
        "delivered_per_s": round(tally.delivered / elapsed),
        "delivered_in_window_per_s": round(delivered_in_window / published_s),
        **percentiles(tally.latencies_ms),
    }


async def _drain(tally: Tally, want: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while tally.delivered < want and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


# --- Qiao through the nodes ---------------------------------------------------------------
def _records(n: int) -> list[dict[str, Any]]:
    base = generate_accidents()
    return [dict(base[i % len(base)]) for i in range(n)]


async def qiao_run(dep: Deployment, args: argparse.Namespace, run: str) -> dict[str, Any]:
    police, transport = dep.nodes["police"], dep.nodes["transport"]
    pub_url = f"{police.url}/e1/{STREAM_CODE}"
    pub_headers = {
        "Authorization": f"Bearer {police.api_keys['police-app']}",
        "Content-Type": "application/json",
    }
    sub_url = f"{transport.url}/e1/{dep.codes['police']}/{STREAM_CODE}"
    sub_headers = {
        "Authorization": f"Bearer {transport.api_keys['traffic-enforcement']}",
        "X-Qiao-Purpose": PURPOSE,
    }
    records = _records(max(args.batch, args.paced_batch))
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def send(seqs: list[int]) -> None:
            sent = time.monotonic_ns()
            body = {
                "events": [
                    {**records[i], "event_id": _event_id(run, s, sent)} for i, s in enumerate(seqs)
                ]
            }
            async with http.post(pub_url, data=orjson.dumps(body), headers=pub_headers) as r:
                if r.status != 202:
                    raise RuntimeError(f"publish answered {r.status}: {await r.text()}")
                await r.read()

        state = {"next": 0, "acks": 0}

        async def ack(offset: int) -> None:
            async with http.post(
                f"{sub_url}/ack", data=orjson.dumps({"offset": offset}), headers=sub_headers
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"ack answered {r.status}: {await r.text()}")
                state["acks"] += 1

        async def receive(tally: Tally) -> None:
            acking: set[asyncio.Task[None]] = set()
            try:
                while True:
                    query = {"after": str(state["next"]), "wait": "5", "limit": "1000"}
                    async with http.get(sub_url, params=query, headers=sub_headers) as r:
                        if r.status != 200:
                            raise RuntimeError(f"pull answered {r.status}: {await r.text()}")
                        body = orjson.loads(await r.read())
                    now = time.monotonic_ns()
                    for e in body["events"]:
                        seq, sent = _parse_id(e["event_id"])
                        tally.arrived(seq, sent, now)
                    if body["next"] > state["next"]:
                        state["next"] = body["next"]
                        # The ack runs beside the next pull: it only moves the node's position.
                        if acking:
                            await asyncio.gather(*acking)
                        task = asyncio.create_task(ack(body["next"]))
                        acking.add(task)
                        task.add_done_callback(acking.discard)
            finally:
                for task in acking:
                    task.cancel()

        # One check that masking applied and the envelope path works, before measuring.
        await send([10**11])
        probe = Tally()
        task = asyncio.create_task(receive(probe))
        await _drain(probe, 1, 20.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if probe.delivered != 1:
            raise RuntimeError("the probe event was not delivered within 20 s")

        cpu = _Cpu(dep)
        throughput = await _phase(send, receive, mode="throughput", args=args)
        throughput.update(cpu.report(throughput["delivered"]))
        cpu = _Cpu(dep)
        latency = await _phase(send, receive, mode="latency", args=args)
        latency.update(cpu.report(latency["delivered"]))
        return {"throughput": throughput, "latency_at_rate": latency, "acks": state["acks"]}


class _Cpu:
    """CPU cores each process kept busy since construction (2 = both cores of this host)."""

    def __init__(self, dep: Deployment) -> None:
        self.pids: dict[str, int] = {"bench (backend + app)": os.getpid()}
        for dept in ("police", "transport"):
            popen = dep.nodes[dept].process.popen
            if popen is not None:
                self.pids[f"{dept} node"] = popen.pid
        if dep.hub is not None and dep.hub.popen is not None:
            self.pids["hub"] = dep.hub.popen.pid
        with contextlib.suppress(subprocess.CalledProcessError, ValueError):
            pids = subprocess.check_output(["pgrep", "-x", "nats-server"], text=True).split()
            self.pids["nats-server"] = int(pids[0])
        self.start = time.monotonic()
        self.before = {k: _cpu_seconds(p) for k, p in self.pids.items()}

    def report(self, events: int) -> dict[str, Any]:
        """Cores busy, and CPU µs per delivered event: steadier than rates on a shared host."""
        spent = {k: _cpu_seconds(p) - self.before[k] for k, p in self.pids.items()}
        wall = time.monotonic() - self.start
        return {
            "cpu_cores_busy": {k: round(v / wall, 2) for k, v in spent.items()},
            "cpu_us_per_event": {k: round(v * 1e6 / max(events, 1)) for k, v in spent.items()},
        }

    def busy(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        return {
            k: round((_cpu_seconds(p) - self.before[k]) / wall, 2) for k, p in self.pids.items()
        }


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- raw nats-py baseline -----------------------------------------------------------------
def _raw_publisher(subject: str, run: str, mode: str, size: int, args: dict[str, Any]) -> None:
    """The raw baseline's publisher, in a process of its own as the police node is: JetStream
    publish with ack, batches pipelined on one connection like NatsBroker.publish."""
    ns = argparse.Namespace(**args)

    async def go() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream(timeout=10)
        padding = b"x" * size

        async def send(seqs: list[int]) -> None:
            sent = time.monotonic_ns()
            pending = [
                await js.publish_async(
                    subject, padding, headers={"Nats-Msg-Id": _event_id(run, s, sent)}
                )
                for s in seqs
            ]
            await asyncio.gather(*pending)

        tally = Tally()
        started = time.monotonic()
        stop = started + ns.duration
        if mode == "warmup":
            await _flat_out(send, ns.batch, 1, time.monotonic() + ns.warmup, tally)
        elif mode == "throughput":
            await _flat_out(send, ns.batch, ns.senders, stop, tally)
        else:
            await _paced(send, ns.rate, ns.paced_batch, stop, tally)
        ended = time.monotonic()
        await nc.close()
        # CLOCK_MONOTONIC is the machine's: the parent compares these with its own readings.
        print(tally.published, started, ended, flush=True)

    asyncio.run(go())


async def raw_run(args: argparse.Namespace, run: str, payload_bytes: int) -> dict[str, Any]:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream(timeout=10)
    name, subject = f"BENCH_RAW_{run}", f"bench.raw.{run}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        tallies: list[Tally] = []

        async def arrived(msg: Any) -> None:
            now = time.monotonic_ns()
            seq, sent = _parse_id((msg.headers or {})["Nats-Msg-Id"])
            tallies[-1].arrived(seq, sent, now)

        # nats-py's ordered consumer (push, flow control, no acks): the idiomatic fast path.
        sub = await js.subscribe(subject, stream=name, cb=arrived, ordered_consumer=True)
        out: dict[str, Any] = {}
        for mode in ("throughput", "latency"):
            for phase in ("warmup", mode):
                tally = Tally()
                tallies.append(tally)
                line = await asyncio.to_thread(_child, subject, run, phase, payload_bytes, args)
                count, began, ended = line.split()
                published, started = int(count), float(began)
                published_s = float(ended) - started
                in_window = tally.delivered
                await _drain(tally, published, 30.0)
                elapsed = max(tally.last_arrival, float(ended)) - started
                if phase == "warmup":
                    continue
                out["throughput" if mode == "throughput" else "latency_at_rate"] = {
                    "published": published,
                    "delivered": tally.delivered,
                    "duplicates": tally.duplicates,
                    "published_per_s": round(published / published_s),
                    "delivered_per_s": round(tally.delivered / elapsed),
                    "delivered_in_window_per_s": round(in_window / published_s),
                    **percentiles(tally.latencies_ms),
                }
        await sub.unsubscribe()
        return out
    finally:
        await js.delete_stream(name)
        await nc.close()


def _child(subject: str, run: str, mode: str, size: int, args: argparse.Namespace) -> str:
    """Run the raw publisher in a fresh interpreter; its one line of output is the count."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from bench.events import "
        "_raw_publisher as p; p(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), "
        "json.loads(sys.argv[6]))"
    )
    root = str(Path(__file__).resolve().parents[1])
    keep = {k: getattr(args, k) for k in ("duration", "warmup", "batch", "senders", "rate")}
    keep["paced_batch"] = args.paced_batch
    out = subprocess.run(
        [sys.executable, "-c", code, root, subject, run, mode, str(size), json.dumps(keep)],
        capture_output=True, text=True, check=True, timeout=args.duration + args.warmup + 60,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


# --- the city -----------------------------------------------------------------------------
def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


async def _jetstream_cleanup(stream: str, subscriber: str, bucket_existed: bool) -> list[str]:
    """Delete the JetStream log and position this run made (qiao.events.nats's layout)."""
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    s, n = _digest(stream), _digest(subscriber)
    deleted = []
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(f"QIAO_EV_{s}_{n}")
            deleted.append(f"QIAO_EV_{s}_{n}")
        if bucket_existed:
            kv = await js.key_value("QIAO_EVENT_POSITIONS")
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await kv.purge(f"{s}.{n}")
        else:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value("QIAO_EVENT_POSITIONS")
                deleted.append("KV_QIAO_EVENT_POSITIONS")
    finally:
        await nc.close()
    return deleted


async def _bucket_exists() -> bool:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().stream_info("KV_QIAO_EVENT_POSITIONS")
        return True
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()


def _profile(dep: Deployment, folder: Path, seconds: int) -> list[subprocess.Popen[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    procs = {f"{d}-node": dep.nodes[d].process.popen for d in ("police", "transport")}
    procs["hub"] = dep.hub.popen if dep.hub is not None else None
    for who, popen in procs.items():
        assert popen is not None
        out = folder / f"{who}.txt"
        spies.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(popen.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


def city(broker: str, args: argparse.Namespace, tmp: Path) -> Deployment:
    # Organization codes of their own, so this run's logs are its own (and deleted after).
    codes = org_codes(seed=random.randrange(1, 10**9))
    dep = Deployment(
        data_dir=tmp / broker,
        codes=codes,
        hub_database_url=args.hub_database if broker == "hub" else None,
        node_settings={
            "log_level": "warning",
            "events_broker": NATS_URL if broker == "nats" else "hub",
        },
    )
    dep.prepare()
    try:
        reg = dep.start_hub()
        dep.start_nodes(reg, only={"police", "transport"})
    except BaseException:
        dep.stop()
        raise
    return dep


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="qiao-bench-events-"))
    run = f"{random.randrange(16**8):08x}"
    result: dict[str, Any] = {
        "benchmark": "event-streams",
        "duration_s": args.duration,
        "offered_rate_per_s": args.rate,
        "publish_batch": args.batch,
        "publishers": args.senders,
        "paced_batch": args.paced_batch,
    }
    envelope_bytes = 0
    try:
        for broker in args.brokers.split(","):
            bucket_existed = await _bucket_exists() if broker == "nats" else True
            dep = await asyncio.to_thread(city, broker, args, tmp)
            try:
                spies = []
                if args.profile and broker in args.profile_brokers.split(","):
                    # Recorded during the warm-up and the throughput phase.
                    spies = _profile(dep, args.profile / broker, args.warmup + args.duration)
                result[f"qiao_{broker}"] = await qiao_run(dep, args, run)
                for spy in spies:
                    spy.wait()
                if broker == "nats" and not envelope_bytes:
                    envelope_bytes = await _envelope_size(dep)
            finally:
                await asyncio.to_thread(dep.stop)
                if broker == "nats":
                    stream = f"{dep.codes['police']}/{STREAM_CODE}"
                    result["jetstream_deleted"] = await _jetstream_cleanup(
                        stream, "transport-node", bucket_existed
                    )
        if args.raw:
            size = envelope_bytes or 400
            result["raw_nats"] = {"payload_bytes": size, **await raw_run(args, run, size)}
            for broker in args.brokers.split(","):
                q, raw = result[f"qiao_{broker}"], result["raw_nats"]
                result[f"ratio_qiao_{broker}_to_raw"] = {
                    "throughput": round(
                        q["throughput"]["delivered_per_s"] / raw["throughput"]["delivered_per_s"],
                        3,
                    ),
                    "p50_latency": _ratio(q, raw, "p50_ms"),
                    "p99_latency": _ratio(q, raw, "p99_ms"),
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"] = machine()
    return result


def _ratio(q: dict[str, Any], raw: dict[str, Any], key: str) -> float | None:
    a, b = q["latency_at_rate"].get(key), raw["latency_at_rate"].get(key)
    return round(a / b, 2) if a and b else None


async def _envelope_size(dep: Deployment) -> int:
    """The size of one sealed event in the JetStream log (what the raw baseline sends)."""
    nc = await nats.connect(NATS_URL)
    try:
        s, n = _digest(f"{dep.codes['police']}/{STREAM_CODE}"), _digest("transport-node")
        msg = await nc.jetstream().get_msg(f"QIAO_EV_{s}_{n}", seq=2)
        return len(msg.data or b"")
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=12, help="seconds per measured phase")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rate", type=int, default=1000, help="offered events/s, latency phase")
    ap.add_argument("--paced-batch", type=int, default=10, help="events per paced request")
    ap.add_argument("--batch", type=int, default=200, help="events per request, throughput")
    ap.add_argument("--senders", type=int, default=4, help="concurrent publishing requests")
    ap.add_argument("--brokers", default="nats,hub")
    ap.add_argument("--hub-database", default=None, help="PostgreSQL URL for the hub")
    ap.add_argument("--no-raw", dest="raw", action="store_false")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy profiles into this folder")
    ap.add_argument("--profile-brokers", default="nats,hub")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
