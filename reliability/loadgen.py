"""Mixed traffic for the soak: what a small city's departments do all day, from a bounded
number of client tasks, each paced (an open loop per task, so that a slower city shows up as
higher latency rather than as fewer requests hiding it).

- exchange workers call the demo resources through their own nodes in turn: transport → public
  security's vehicle violations (conditional sharing) and traffic accidents (unconditional),
  the bank → market regulation's enterprise credit and public security's identity verification
  (a POST, with an end user);
- public security's backend publishes traffic accidents (``POST /e1/traffic-accidents``), in
  batches with unique event ids;
- transport's app pulls them (long poll) and acknowledges;
- transport's app also opens a server-sent event stream, reads until an event arrives and
  closes it, and reconnects after the last event ID it saw, again and again;
- an auditor signed in at the hub reads the console and the hub's API; anyone fetches the
  ledger's status, checkpoint and the receipts of exchanges made a little earlier.

Every answer is kept as a :class:`Result`; the test decides what counts as an error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from qiao.demo.people import generate_accidents
from reliability.conftest_soak import SoakCity

# Kinds whose latency says how fast the city answers (long polls and streams do not).
EXCHANGES = ("violations", "accidents", "enterprise", "identity")


@dataclass(frozen=True)
class Result:
    at: float  # monotonic time the request started
    kind: str
    seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    ok: bool
    detail: str = ""


@dataclass
class Traffic:
    city: SoakCity
    exchange_workers: int = 4
    exchange_interval: float = 0.1  # per worker: ~10 exchanges/s each
    publish_interval: float = 0.5
    publish_batch: int = 5
    hub_interval: float = 0.25
    results: list[Result] = field(default_factory=list)
    published: int = 0
    received: int = 0
    sse_opened: int = 0
    _pulled: int = 0  # the offset the puller has reached
    # Exchange ids answered 200 long enough ago to be in a cosigned checkpoint by now.
    _done: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=256))

    async def run(self, seconds: float) -> list[Result]:
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            hub = await self._sign_in(http)
            tasks = [
                *(self._exchanges(http, w, deadline) for w in range(self.exchange_workers)),
                self._publisher(http, deadline),
                self._puller(http, deadline),
                self._sse(http, deadline),
                self._hub_reader(http, hub, deadline),
            ]
            await asyncio.gather(*tasks)
        return self.results

    def _keep(self, t0: float, kind: str, status: int, ok: bool, detail: str = "") -> None:
        self.results.append(Result(t0, kind, time.monotonic() - t0, status, ok, detail[:200]))

    @staticmethod
    async def _pace(t0: float, interval: float) -> None:
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    # --- exchanges ---------------------------------------------------------------------------
    async def _exchanges(self, http: httpx.AsyncClient, worker: int, deadline: float) -> None:
        for i in itertools.count(worker):
            t0 = time.monotonic()
            if t0 >= deadline:
                return
            kind = EXCHANGES[i % len(EXCHANGES)]
            try:
                if kind == "identity":
                    url, headers, body = self.city.identity(i)
                    r = await http.post(url, json=body, headers=headers)
                else:
                    if kind == "violations":
                        url, headers = self.city.violations(i)
                    elif kind == "enterprise":
                        url, headers = self.city.enterprise(i)
                    else:
                        url, headers = self.city.accidents()
                    r = await http.get(url, headers=headers)
            except httpx.HTTPError as exc:
                self._keep(t0, kind, 0, False, repr(exc))
            else:
                ok = r.status_code == 200
                self._keep(t0, kind, r.status_code, ok, "" if ok else r.text)
                if ok:
                    self._done.append((time.monotonic(), r.headers["x-qiao-id"]))
            await self._pace(t0, self.exchange_interval)

    # --- events --------------------------------------------------------------------------------
    async def _publisher(self, http: httpx.AsyncClient, deadline: float) -> None:
        accidents = generate_accidents(40)
        url, headers = self.city.publish_url()
        run = f"soak-{time.time_ns()}"
        for n in itertools.count():
            t0 = time.monotonic()
            if t0 >= deadline:
                return
            batch = [
                {**accidents[(n * self.publish_batch + k) % len(accidents)]}
                | {"event_id": f"{run}-{n}-{k}"}
                for k in range(self.publish_batch)
            ]
            try:
                r = await http.post(url, json={"events": batch}, headers=headers)
            except httpx.HTTPError as exc:
                self._keep(t0, "publish", 0, False, repr(exc))
            else:
                ok = r.status_code == 202
                self._keep(t0, "publish", r.status_code, ok, "" if ok else r.text)
                if ok:
                    self.published += len(batch)
            await self._pace(t0, self.publish_interval)

    async def _puller(self, http: httpx.AsyncClient, deadline: float) -> None:
        url, headers = self.city.pull_url()
        while (t0 := time.monotonic()) < deadline:
            wait = max(0, min(1, int(deadline - t0)))
            try:
                r = await http.get(url, params={"limit": 200, "wait": wait}, headers=headers)
                ok = r.status_code == 200
                self._keep(t0, "pull", r.status_code, ok, "" if ok else r.text)
                if not ok:
                    await self._pace(t0, 0.5)
                    continue
                body = r.json()
                self.received += len(body["events"])
                self._pulled = max(self._pulled, int(body["next"]))
                if body["events"]:
                    t1 = time.monotonic()
                    a = await http.post(
                        f"{url}/ack", json={"offset": body["next"]}, headers=headers
                    )
                    self._keep(t1, "ack", a.status_code, a.status_code == 200, a.text[:200])
            except httpx.HTTPError as exc:
                self._keep(t0, "pull", 0, False, repr(exc))
                await self._pace(t0, 0.5)

    async def _sse(self, http: httpx.AsyncClient, deadline: float) -> None:
        url, headers = self.city.pull_url()
        headers = {**headers, "Accept": "text/event-stream"}
        last_id = ""
        while (t0 := time.monotonic()) < deadline:
            # Resume as a browser's EventSource does, after the last event ID seen; the first
            # stream starts a few events behind the puller, so it has something to send.
            if last_id:
                params, resume = {}, {"Last-Event-ID": last_id}
            else:
                params, resume = {"after": max(0, self._pulled - 3)}, {}
            status, ok, detail = 0, False, ""
            try:
                async with http.stream(
                    "GET", url, headers={**headers, **resume}, params=params, timeout=10
                ) as r:
                    status = r.status_code
                    self.sse_opened += 1
                    if status == 200 and r.headers["content-type"].startswith("text/event-stream"):
                        async with asyncio.timeout(5):
                            async for line in r.aiter_lines():
                                if line.startswith("id: "):
                                    last_id = line[4:].strip()
                                elif line.startswith("event: event"):
                                    ok = True
                                elif ok and line == "":
                                    break  # the end of the event's block: close the stream
                        detail = "" if ok else "no event within 5 s"
                    else:
                        detail = (await r.aread()).decode(errors="replace")
            except (httpx.HTTPError, TimeoutError) as exc:
                detail = repr(exc)
            self._keep(t0, "sse", status, ok, detail)
            await self._pace(t0, 1.0)

    # --- the hub -------------------------------------------------------------------------------
    async def _sign_in(self, http: httpx.AsyncClient) -> dict[str, str]:
        users = json.loads((self.city.data_dir / "users.json").read_text())["users"]
        auditor = next(u for u in users if u["username"] == "police-auditor")
        hub = self.city.dep.hub_url
        r = await http.post(
            f"{hub}/api/v1/session",
            json={"username": auditor["username"], "password": auditor["password"]},
            headers={"Origin": hub},
        )
        r.raise_for_status()
        return {"Cookie": f"qiao_session={r.cookies['qiao_session']}"}

    async def _hub_reader(
        self, http: httpx.AsyncClient, session: dict[str, str], deadline: float
    ) -> None:
        hub = self.city.dep.hub_url
        pages: list[tuple[str, str, dict[str, str]]] = [
            ("ledger", "/ledger/status", {}),
            ("console", "/console/audit", session),
            ("hub-api", "/api/v1/catalog/resources", session),
            ("ledger", "/ledger/checkpoint", {}),
            ("console", "/console/agreements", session),
            ("receipt", "", {}),
        ]
        for i in itertools.count():
            t0 = time.monotonic()
            if t0 >= deadline:
                return
            kind, path, headers = pages[i % len(pages)]
            if kind == "receipt":
                # An exchange made at least 6 s ago: submitted (every 0.5 s), sequenced and
                # cosigned (every 1 s) by now, so its receipt must be there.
                old = [x for at, x in self._done if t0 - at > 6]
                if not old:
                    continue
                path = f"/ledger/receipts/{old[-1]}"
            try:
                r = await http.get(f"{hub}{path}", headers=headers)
            except httpx.HTTPError as exc:
                self._keep(t0, kind, 0, False, repr(exc))
            else:
                ok = r.status_code == 200
                self._keep(t0, kind, r.status_code, ok, "" if ok else f"{path}: {r.text}")
            await self._pace(t0, self.hub_interval)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def window_latency(results: list[Result], start: float, end: float) -> tuple[float, float, int]:
    """(p50, p99, count) of the exchanges started within [start, end)."""
    lat = [r.seconds for r in results if r.kind in EXCHANGES and start <= r.at < end and r.ok]
    return percentile(lat, 0.5), percentile(lat, 0.99), len(lat)


def summary(results: list[Result]) -> dict[str, Any]:
    by_kind: dict[str, list[int]] = {}
    for r in results:
        counts = by_kind.setdefault(r.kind, [0, 0])
        counts[0] += 1
        counts[1] += 0 if r.ok else 1
    return {k: {"requests": v[0], "errors": v[1]} for k, v in sorted(by_kind.items())}
