"""Benchmark of the exchange path, side by side with a direct call to the same backend.

    app (wrk) → consumer node → mutual TLS → provider node → backend
    app (wrk) → backend                                     (the baseline)

Two resources lead to the same backend path, each under a signed agreement both nodes enforce:
``vehicle-violations`` (catalogued: the provider node checks each answer against the catalog's
schema, keeps the agreement's fields and masks location and plate — the demo's terms) and
``violations-raw`` (not catalogued: the agreement has no projection and no masking, so the
answer is relayed as the backend sent it). The difference between the two is what validation,
projection and masking cost on the exchange path.

Both runs happen in one invocation on the same machine, with the same load generator (Debian's
``wrk``, one thread, so it takes as little CPU from the servers as possible) and the same
number of connections. Prints one JSON document with throughput, latency percentiles, and the
ratios between the two.

    .venv/bin/python bench/exchange.py [--connections 64] [--duration 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from qiao.db import make_engine
from qiao.demo.city import Deployment
from qiao.demo.processes import free_port
from qiao.exchange.models import ExchangeRecord

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, Any]:
    """Throughput and latency percentiles (ms) from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[f"p{p}_ms"] = round(float(value) * _UNITS[unit], 3)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rps,
        **pct,
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def wrk(url: str, headers: dict[str, str], connections: int, duration: int) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def _bench_agreements(dep: Deployment, reg: object) -> None:
    """The agreements the benchmark runs under, made the way departments make them (applied
    for by transport, approved by the police approver): the demo's terms on
    ``vehicle-violations`` (its fields, location and plate masked) but without the demo's rate
    limit and daily quota, which a load test would exhaust in seconds; and a plain agreement on
    ``violations-raw``, registered without a catalog entry."""
    from qiao.agreements.document import Masking, MaskRule
    from qiao.agreements.service import AgreementService, Application, Narrowing
    from qiao.demo.sharing import person
    from qiao.identity.roles import CLI, Role

    police = dep.codes["police"]
    svc = AgreementService(reg)
    svc.revoke(CLI, dep.sharing.agreements["violations"], "replaced by the benchmark's terms")
    reg.add_resource(police, "violations-raw")  # type: ignore[attr-defined]
    for code in ("vehicle-violations", "violations-raw"):
        request = svc.apply(
            person(dep.codes, "transport", Role.APP_DEVELOPER),
            police,
            code,
            Application(
                purposes=("traffic-enforcement",),
                purpose_text="benchmark",
                legal_basis="benchmark",
                apps=("traffic-enforcement",),
            ),
        )
        narrowing = Narrowing()
        if code == "vehicle-violations":
            narrowing = Narrowing(
                fields=tuple(f for f in FIELDS if f != "record_id"),
                masking={"location": Masking(rule=MaskRule.ADDRESS)},
            )
        svc.approve(person(dep.codes, "police", Role.APPROVER), request.id, narrowing)


FIELDS = (
    "record_id",
    "plate",
    "code",
    "description",
    "occurred_at",
    "location",
    "fine_yuan",
    "points",
    "handled",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--hold",
        action="store_true",
        help="keep the city running after the run (for manual probing)",
    )
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record py-spy profiles of both nodes during the run into this folder",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench needs wrk: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="qiao-bench-"))
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("backend.py")), str(port)]
    )
    dep = Deployment(
        data_dir=tmp / "city",
        backend_urls={"police": f"http://127.0.0.1:{port}"},
        node_settings={"log_level": "warning"},
        extra_services={
            "police": {"violations-raw": {"url": f"http://127.0.0.1:{port}/violations"}}
        },
    )
    try:
        dep.prepare()
        reg = dep.start_hub()
        _bench_agreements(dep, reg)
        dep.start_nodes(reg, only={"police", "transport"})
        for _ in range(50):
            try:
                httpx.get(f"http://127.0.0.1:{port}/violations", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        direct_url = f"http://127.0.0.1:{port}/violations?plate=B12345"
        t = dep.nodes["transport"]
        qiao_url = f"{t.url}/r1/{dep.codes['police']}/vehicle-violations?plate=B12345"
        raw_url = f"{t.url}/r1/{dep.codes['police']}/violations-raw?plate=B12345"
        headers = {
            "X-Qiao-Client": dep.client("transport", "traffic-enforcement"),
            "Authorization": f"Bearer {t.api_keys['traffic-enforcement']}",
            "X-Qiao-Purpose": "traffic-enforcement",
        }
        masked = httpx.get(qiao_url, headers=headers)
        assert masked.status_code == 200, masked.text
        assert httpx.get(raw_url, headers=headers).status_code == 200
        sample = masked.json()["violations"][0]
        assert sample["location"].endswith("****") and "record_id" not in sample, sample

        wrk(direct_url, {}, args.connections, args.warmup)
        direct = wrk(direct_url, {}, args.connections, args.duration)
        before = _records(dep, "transport")
        wrk(qiao_url, headers, args.connections, args.warmup)
        mid = _records(dep, "transport")
        spies = _profile(dep, args.profile, args.duration) if args.profile else []
        pids = {
            "consumer node": dep.nodes["transport"].process.popen,
            "provider node": dep.nodes["police"].process.popen,
            "backend": backend,
        }
        cpu_before = {k: _cpu_seconds(p.pid) for k, p in pids.items() if p}
        wrk_before = _children_cpu()
        full = wrk(qiao_url, headers, args.connections, args.duration)
        assert full["non_2xx"] == 0, full
        cpu = {
            k: round((_cpu_seconds(p.pid) - cpu_before[k]) / args.duration, 3)
            for k, p in pids.items()
            if p
        }
        cpu["wrk"] = round((_children_cpu() - wrk_before) / args.duration, 3)
        for spy in spies:
            spy.wait()
        # Latency without queueing: one connection, one exchange at a time.
        after = _records(dep, "transport")
        # The same path under an agreement without projection or masking, on a resource the
        # catalog does not describe (no schema check either).
        wrk(raw_url, headers, args.connections, args.warmup)
        raw = wrk(raw_url, headers, args.connections, args.duration)
        assert raw["non_2xx"] == 0, raw
        single = {"direct": wrk(direct_url, {}, 1, 5), "qiao": wrk(qiao_url, headers, 1, 5)}
        result = {
            "benchmark": "exchange-path",
            "connections": args.connections,
            "duration_s": args.duration,
            "direct": direct,
            "qiao": full,
            "throughput_ratio": round(full["requests_per_s"] / direct["requests_per_s"], 3),
            # Under an agreement without projection, masking or schema: what validation,
            # projection and masking cost (qiao = with them).
            "qiao_unmasked": raw,
            "masking_and_validation_throughput_ratio": round(
                full["requests_per_s"] / raw["requests_per_s"], 3
            ),
            "added_latency_ms": {
                k: round(full[k] - direct[k], 3)
                for k in ("p50_ms", "p99_ms")
                if k in full and k in direct
            },
            "one_connection": {
                **single,
                "qiao_unmasked": wrk(raw_url, headers, 1, 5),
                "added_latency_ms": {
                    k: round(single["qiao"][k] - single["direct"][k], 3)
                    for k in ("p50_ms", "p99_ms")
                },
            },
            # Every exchange of the measured run is on record (wrk counts completed responses;
            # a few more may have been in flight when it stopped).
            "records_written": {"warmup": mid - before, "measured": after - mid},
            # CPU cores each process kept busy during the measured Qiao run (2 = both cores).
            "cpu_cores_busy": cpu,
            # CPU time per exchange in each process: steadier than throughput on a shared host.
            "cpu_us_per_exchange": {
                k: round(v * 1e6 / full["requests_per_s"], 1) for k, v in cpu.items()
            },
            "machine": machine(),
        }
        print(json.dumps(result, indent=2, ensure_ascii=False), flush=True)
        if args.hold:
            print(json.dumps({"url": qiao_url, "headers": headers}), flush=True)
            time.sleep(3600)
    finally:
        dep.stop()
        backend.terminate()
        backend.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _profile(dep: Deployment, folder: Path, duration: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on both nodes, in collapsed-stack form (``summarize`` below reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    for dept in ("transport", "police"):
        proc = dep.nodes[dept].process.popen
        assert proc is not None
        spies.append(
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(duration - 1),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(folder / f"{dept}-node.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _records(dep: Deployment, dept: str) -> int:
    eng = make_engine(dep.node_db_url(dept))
    with eng.connect() as c:
        n = int(c.execute(select(func.count()).select_from(ExchangeRecord)).scalar_one())
    eng.dispose()
    return n


if __name__ == "__main__":
    main()
