"""``qiao demo``: stand up the demo city, run its scenario, say what happened."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from yarl import URL

from qiao.db import make_engine
from qiao.demo import backends
from qiao.demo.city import DEPARTMENTS, Deployment
from qiao.demo.people import DemoCity, build_city, generate_accidents
from qiao.demo.processes import free_port
from qiao.demo.receivers import Receiver, new_secret, sign
from qiao.demo.streams import (
    ACCIDENTS,
    FEEDS,
    STATIONS,
    StreamPublisher,
    duplicates,
    masking_problems,
    missing,
    order_problems,
)
from qiao.exchange.models import ExchangeRecord

console = Console(stderr=True)


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str


@dataclass
class Backends:
    """The departments' demo backends, served by this process."""

    urls: dict[str, str]  # dept key -> base URL
    runners: list[web.AppRunner]
    receivers: dict[str, Receiver]  # feed name -> the subscriber backend's webhook receiver

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()


async def start_backends(city: DemoCity, base_port: int, secrets: dict[str, str]) -> Backends:
    """Start every department's backend; the subscribers of the feeds in ``secrets`` (feed
    name -> ``whsec_`` secret) get a webhook receiver for it."""
    apps = {
        "police": backends.public_security(city),
        "transport": backends.transport(city),
        "market": backends.market_regulation(city),
        "health": backends.health(city),
        "district": web.Application(),
    }
    receivers: dict[str, Receiver] = {}
    for feed in FEEDS:
        if feed.name in secrets:
            receivers[feed.name] = Receiver(feed.name, secrets[feed.name])
            apps[feed.subscriber].add_routes(receivers[feed.name].routes(feed.path))
    urls: dict[str, str] = {}
    runners: list[web.AppRunner] = []
    for i, (dept, app) in enumerate(apps.items()):
        port = base_port + 50 + i if base_port else free_port()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        urls[dept], runners = f"http://127.0.0.1:{port}", [*runners, runner]
    return Backends(urls, runners, receivers)


def sample_call(dep: Deployment, city: DemoCity) -> dict[str, Any]:
    """A working exchange: the transport bureau looks up a vehicle's violations."""
    plate = city.violations[0].plate
    node = dep.nodes["transport"]
    url = URL(f"{node.url}/r1/{dep.codes['police']}/vehicle-violations")
    return {
        "method": "GET",
        "url": str(url.with_query(plate=plate)),
        "headers": {
            "X-Qiao-Client": dep.client("transport", "traffic-enforcement"),
            "Authorization": f"Bearer {node.api_keys['traffic-enforcement']}",
            "X-Qiao-Purpose": "traffic-enforcement",
        },
    }


async def _json(r: aiohttp.ClientResponse) -> dict[str, Any]:
    """The body as JSON, or what it was instead (so a failed check says what came back)."""
    raw = await r.read()
    try:
        data = json.loads(raw)
    except ValueError:
        return {"unexpected_body": raw[:300].decode(errors="replace")}
    return data if isinstance(data, dict) else {"unexpected_body": data}


async def scenario(dep: Deployment, city: DemoCity, reg: Any = None) -> list[Outcome]:
    out: list[Outcome] = []
    sharing = dep.sharing
    async with aiohttp.ClientSession() as http:
        # 1. Transport looks up a vehicle's violations at public security, under an agreement
        # the police approver narrowed and masked: no record number, location to the district.
        s = sample_call(dep, city)
        async with http.get(s["url"], headers=s["headers"]) as r:
            body = await _json(r)
            xid = r.headers.get("X-Qiao-Id", "")
            rhash = r.headers.get("X-Qiao-Request-Hash", "")
            expected = [v for v in city.violations if v.plate == city.violations[0].plate]
            got = body.get("violations", [])
            ok = r.status == 200 and len(got) == len(expected) and bool(rhash)
            out.append(
                Outcome(
                    "transport → public security: vehicle violations",
                    bool(ok),
                    f"{r.status}, {len(got)} violation(s) of "
                    f"{city.violations[0].plate}, exchange {xid}",
                )
            )
            masked = bool(got) and all(
                str(v.get("location", "")).endswith("****")
                and str(v.get("location")) != e.location
                and not any(h in v for h in sharing.hidden)
                for v, e in zip(got, expected, strict=False)
            )
            sample = got[0].get("location") if got else None
            out.append(
                Outcome(
                    "agreement masking: location to the district, record number withheld",
                    masked,
                    f"location {sample!r}; fields {sorted(got[0]) if got else []}",
                )
            )

        # 1b. Transport reads the day's traffic accidents: an unconditional resource it
        # subscribed to; the police node checks the answer against the catalog's schema.
        accidents = generate_accidents()
        day = str(accidents[-1]["occurred_at"])[:10]
        police = dep.codes["police"]
        url = f"{dep.nodes['transport'].url}/r1/{police}/traffic-accidents?date={day}"
        headers = {**s["headers"], "X-Qiao-Purpose": "traffic-management"}
        async with http.get(url, headers=headers) as r:
            body = await _json(r)
            want = sum(1 for a in accidents if str(a["occurred_at"]).startswith(day))
            got_n = len(body.get("accidents", []))
            out.append(
                Outcome(
                    "transport → public security: traffic accidents (checked against the catalog)",
                    r.status == 200 and got_n == want > 0,
                    f"{r.status}, {got_n} accident(s) on {day}",
                )
            )

        # 2. The bank looks up an enterprise at market regulation.
        ent = city.enterprises[0]
        bank = dep.nodes["bank"]
        headers = {
            "X-Qiao-Client": dep.client("bank", "credit-check"),
            "Authorization": f"Bearer {bank.api_keys['credit-check']}",
            "X-Qiao-Purpose": "loan-review",
            "X-Qiao-User": "loan-officer-007",
        }
        url = f"{bank.url}/r1/{dep.codes['market']}/enterprise-credit/{ent.uscc}"
        async with http.get(url, headers=headers) as r:
            body = await _json(r)
            ok = bool(r.status == 200 and body.get("name") == ent.name)
            out.append(
                Outcome(
                    "bank → market regulation: enterprise credit",
                    bool(ok),
                    f"{r.status}, {body.get('name')} rated {body.get('credit_rating')}",
                )
            )

        # 3. Without an agreement nothing passes: the bank has none for vehicle violations,
        # and market regulation's application for them was refused (with its reason).
        url = f"{bank.url}/r1/{dep.codes['police']}/vehicle-violations?plate=x"
        async with http.get(url, headers=headers) as r:
            body = await _json(r)
            ok = r.status == 403 and body.get("type") == "urn:qiao:problem:client:no-agreement"
            out.append(
                Outcome(
                    "bank → public security: violations (no agreement)",
                    ok,
                    f"{r.status} {body.get('type')}",
                )
            )
        market = dep.nodes["market"]
        refused = {
            "X-Qiao-Client": dep.client("market", "registration"),
            "Authorization": f"Bearer {market.api_keys['registration']}",
            "X-Qiao-Purpose": "license-review",
        }
        url = f"{market.url}/r1/{dep.codes['police']}/vehicle-violations?plate=x"
        async with http.get(url, headers=refused) as r:
            body = await _json(r)
            ok = r.status == 403 and body.get("type") == "urn:qiao:problem:client:no-agreement"
            out.append(
                Outcome(
                    "market → public security: violations (request refused)",
                    ok and bool(sharing.refused_request),
                    f"{r.status} {body.get('type')}; {sharing.refused_request}: "
                    f"{sharing.refusal_reason}",
                )
            )

        # 4. A wrong API key is refused.
        bad = {**headers, "Authorization": "Bearer qk_0000_wrong"}
        url = f"{bank.url}/r1/{dep.codes['market']}/enterprise-credit/{ent.uscc}"
        async with http.get(url, headers=bad) as r:
            body = await _json(r)
            ok = r.status == 401 and body.get("type") == "urn:qiao:problem:client:bad-credential"
            out.append(Outcome("wrong API key refused", ok, f"{r.status} {body.get('type')}"))

        # 4b. The epidemic drill: the health commission's statistics reach public security
        # only while two platform administrators have declared an emergency.
        if reg is not None:
            out += await _epidemic_drill(dep, reg, http)

    # 5. Both nodes recorded the first exchange, with the same request hash.
    first = out[0].detail.rsplit(" ", 1)[-1]
    records = []
    for dept in ("transport", "police"):
        eng = make_engine(dep.node_db_url(dept))
        with eng.connect() as c:
            records += list(
                c.execute(
                    select(
                        ExchangeRecord.role, ExchangeRecord.request_hash, ExchangeRecord.status
                    ).where(ExchangeRecord.exchange_id == first)
                )
            )
        eng.dispose()
    out.append(await _receipt_outcome(dep, first))
    roles = {r.role for r in records}
    same = len({r.request_hash for r in records}) == 1
    out.append(
        Outcome(
            "both nodes recorded the exchange",
            roles == {"consumer", "provider"} and same,
            f"roles {sorted(roles)}, request hashes agree: {same}",
        )
    )
    return out


async def _epidemic_drill(dep: Deployment, reg: Any, http: aiohttp.ClientSession) -> list[Outcome]:
    from qiao.agreements.emergencies import EmergencyService
    from qiao.demo.sharing import admin

    police = dep.nodes["police"]
    headers = {
        "X-Qiao-Client": dep.client("police", "police-app"),
        "Authorization": f"Bearer {police.api_keys['police-app']}",
        "X-Qiao-Purpose": "epidemic-response",
    }
    url = f"{police.url}/r1/{dep.codes['health']}/epidemic-daily"
    out: list[Outcome] = []
    async with http.get(url, headers=headers) as r:
        body = await _json(r)
        out.append(
            Outcome(
                "public security → health: epidemic statistics before the emergency",
                r.status == 403 and body.get("type") == "urn:qiao:problem:client:emergency-only",
                f"{r.status} {body.get('type')}",
            )
        )
    emergencies = EmergencyService(reg)
    declared = await asyncio.to_thread(
        lambda: emergencies.declare(
            admin("admin"),
            resources=[f"{dep.codes['health']}/epidemic-daily"],
            reason="演练:突发公共卫生事件二级响应",
            duration_hours=2,
        )
    )
    await asyncio.to_thread(lambda: emergencies.confirm(admin("admin-2"), declared.id))
    # Every node learns of it within seconds (long-polled configuration).
    t0, status, days, xid = asyncio.get_running_loop().time(), 0, 0, ""
    while asyncio.get_running_loop().time() - t0 < 15:
        async with http.get(url, headers=headers) as r:
            body = await _json(r)
            status, days, xid = r.status, len(body.get("days", [])), r.headers.get("X-Qiao-Id", "")
        if status == 200:
            break
        await asyncio.sleep(0.2)
    took = asyncio.get_running_loop().time() - t0
    out.append(
        Outcome(
            "epidemic drill: emergency declared by two administrators, statistics shared",
            status == 200 and days > 0,
            f"{status}, {days} day(s) of statistics {took:.1f} s after confirmation "
            f"({declared.id})",
        )
    )
    flagged: list[Any] = []
    for _ in range(150):
        flagged = await asyncio.to_thread(lambda: emergencies.accesses(admin(), declared.id))
        if any(a.exchange_id == xid for a in flagged):
            break
        await asyncio.sleep(0.2)
    out.append(
        Outcome(
            "emergency access flagged for review",
            any(a.exchange_id == xid for a in flagged),
            f"{len(flagged)} access(es) under {declared.id} awaiting review",
        )
    )
    return out


async def _receipt_outcome(dep: Deployment, exchange_id: str, wait: float = 30.0) -> Outcome:
    """The exchange's record reaches the ledger, is cosigned, and its receipt verifies."""
    from qiao.ledger.errors import LedgerError
    from qiao.ledger.policy import Policy
    from qiao.ledger.receipt import parse_receipt, verify_receipt

    name = "ledger receipt verifies offline (witness quorum)"
    deadline = asyncio.get_running_loop().time() + wait
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{dep.hub_url}/ledger/receipts/{exchange_id}") as r:
                receipt = await r.read()
                if r.status == 200:
                    break
            if asyncio.get_running_loop().time() > deadline:
                return Outcome(name, False, f"no receipt after {wait:.0f} s: {r.status}")
            await asyncio.sleep(0.5)
        index = parse_receipt(receipt).index
        async with http.get(f"{dep.hub_url}/ledger/entries/{index}") as r:
            entry = await r.read()
        async with http.get(f"{dep.hub_url}/ledger/policy") as r:
            policy = Policy.parse(await r.text())
    try:
        statement = verify_receipt(receipt, entry, policy)
    except LedgerError as exc:
        return Outcome(name, False, str(exc))
    ok = json.loads(entry).get("exchange_id") == exchange_id
    (dep.data_dir / "receipt.txt").write_bytes(receipt)
    return Outcome(name, ok, statement)


DELIVERY_WAIT = 20.0  # seconds for what was published during the check to reach the receivers


async def stream_outcomes(
    dep: Deployment, reg: Any, publisher: StreamPublisher, started: Backends
) -> list[Outcome]:
    """The streams, judged at the receivers: events published during the check arrive by
    webhook within ``DELIVERY_WAIT``, masked as the agreement says, in published order per
    partition key, each kept once; a delivery with a wrong signature is refused."""
    mark = time.monotonic()
    # Both feeds publish during the check: two accident reports and a station batch at least.
    until = mark + 3 * max(publisher.accident_seconds, publisher.station_seconds)
    while time.monotonic() < until and (
        len(publisher.of(ACCIDENTS, mark)) < 2 or not publisher.of(STATIONS, mark)
    ):
        await asyncio.sleep(0.2)
    during = {f.name: publisher.of(f, mark) for f in FEEDS}
    last = max((p.at for ps in during.values() for p in ps), default=mark)
    received: dict[str, dict[str, Any]] = {}
    gone: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + DELIVERY_WAIT
        while True:
            for f in FEEDS:
                async with http.get(f"{started.urls[f.subscriber]}/received") as r:
                    received[f.name] = await _json(r)
            gone = {f.name: missing(during[f.name], _events(received[f.name])) for f in FEEDS}
            if not any(gone.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        took = time.monotonic() - last
        forged = await _forged_delivery(http, started.urls[ACCIDENTS.subscriber] + ACCIDENTS.path)

    out: list[Outcome] = []
    counts = ", ".join(
        f"{f.stream} {len(during[f.name]) - len(gone[f.name])}/{len(during[f.name])} "
        f"→ {f.subscriber}"
        for f in FEEDS
    )
    delivered = all(during.values()) and not any(gone.values())
    why = "" if delivered else (
        f"; not received: {sorted(i for ids in gone.values() for i in ids)[:5]}"
        + (f"; publishing failed {publisher.refused}×: {publisher.last_refusal}"
           if publisher.refused else "")
    )  # fmt: skip
    out.append(
        Outcome(
            "streams: events published during the check delivered by webhook",
            delivered,
            f"{counts}, {took:.1f} s after the last publish{why}",
        )
    )

    masked = await asyncio.to_thread(_masking_rules, reg, dep.sharing.agreements["accidents"])
    accidents = _events(received[ACCIDENTS.name])
    wrong = masking_problems(publisher.of(ACCIDENTS), accidents, masked)
    wrong += masking_problems(publisher.of(STATIONS), _events(received[STATIONS.name]), {})
    sample: dict[str, Any] = next((e["event"] for e in accidents if "event" in e), {})
    shown = ", ".join(f"{name} {sample.get(name)!r}" for name in sorted(masked))
    out.append(
        Outcome(
            "streams: accidents masked by the agreement (first party's plate and citizen ID)",
            bool(masked) and bool(accidents) and not wrong,
            (f"{shown}; every other field as published" if not wrong else f"differs: {wrong[:5]}")
            if accidents
            else "no accident received",
        )
    )

    several, disordered = 0, []
    for f in FEEDS:
        n, bad = order_problems(publisher.of(f), _events(received[f.name]))
        several += n
        disordered += [f"{f.stream}:{k}" for k in bad]
    out.append(
        Outcome(
            "streams: updates in published order per partition key",
            several > 0 and not disordered,
            f"{several} key(s) with several updates, all in order"
            if not disordered
            else f"out of order: {disordered[:5]}",
        )
    )

    twice = [i for f in FEEDS for i in duplicates(_events(received[f.name]))]
    repeats = sum(int(received[f.name].get("duplicates", 0)) for f in FEEDS)
    out.append(
        Outcome(
            "streams: no duplicates at the receivers",
            not twice and all(f.name in received for f in FEEDS),
            f"each event kept once ({repeats} repeated delivery(ies) dropped by webhook-id)"
            if not twice
            else f"kept twice: {twice[:5]}",
        )
    )
    out.append(
        Outcome(
            "streams: a delivery with a wrong signature is refused",
            forged == 401,
            f"{forged}",
        )
    )
    return out


def _events(received: dict[str, Any]) -> list[dict[str, Any]]:
    events = received.get("events")
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def _masking_rules(reg: Any, agreement_id: str) -> dict[str, Any]:
    """The agreement's masking, per top-level field, as functions the check can recompute
    (``None`` where it cannot: a pseudonym is keyed by the provider's secret)."""
    from qiao.agreements.document import MaskRule
    from qiao.agreements.masking import rule_for
    from qiao.agreements.service import AgreementService
    from qiao.demo.sharing import admin

    agreement = AgreementService(reg).get(admin(), agreement_id).agreement()
    rules: dict[str, Any] = {}
    for path, masking in agreement.masking.items():
        if masking.rule is MaskRule.PSEUDONYM:
            rules[path] = None
        else:
            rules[path] = rule_for(masking, path, b"") or (lambda _value: None)
    return rules


async def _forged_delivery(http: aiohttp.ClientSession, url: str) -> int:
    """POST a well-formed delivery signed with another secret: the receiver must refuse it."""
    body = json.dumps({"event_id": "forged", "event": {}}).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_forged",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(new_secret(), "msg_forged", ts, body),
        "content-type": "application/json",
    }
    async with http.post(url, data=body, headers=headers) as r:
        return r.status


def print_summary(dep: Deployment, outcomes: list[Outcome], data_dir: Path) -> None:
    t = Table(title="桥城 demo city — what happened", show_lines=False)
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail")
    for o in outcomes:
        t.add_row(o.name, "[green]ok[/green]" if o.ok else "[red]FAILED[/red]", o.detail)
    console.print(t)
    n = Table(title="where to look")
    n.add_column("department")
    n.add_column("organization code")
    n.add_column("node (apps call here)")
    n.add_column("health")
    for info in dep.nodes.values():
        n.add_row(info.dept.name, info.org, info.url, f"{info.url}/healthz")
    console.print(n)
    console.print(f"hub: {dep.hub_url}  (API docs: {dep.hub_url}/docs)")
    for feed in FEEDS:
        if feed.subscriber in dep.backend_urls:
            console.print(
                f"stream {feed.stream} ({feed.provider} → {feed.subscriber}, by webhook), "
                f"what arrived: {dep.backend_urls[feed.subscriber]}/received"
            )
    console.print(f"web console: {dep.hub_url}/console/  (docs/console.md)")
    console.print(
        f"sign-in names ({len(dep.users)}; passwords and TOTP secrets in "
        f"{(data_dir / 'users.json').resolve()}): {', '.join(dep.users)}"
    )
    approver = next((u for u in dep.users if u.endswith("-approver")), None)
    console.print(
        "e.g. sign in as admin (platform administrator)"
        + (f" or {approver} (a department's approver)" if approver else "")
    )
    console.print(f"data and logs: {data_dir.resolve()}")
    console.print(f"exchange records: qiao node --config {dep.nodes['transport'].config} records")


async def _run(
    data_dir: Path, base_port: int, check: bool, as_json: bool, database_url: str | None
) -> int:
    city = build_city()
    dep = Deployment(data_dir=data_dir, base_port=base_port, hub_database_url=database_url)
    dep.prepare()
    dep.webhook_secrets = {feed.name: new_secret() for feed in FEEDS}
    started = await start_backends(city, base_port, dep.webhook_secrets)
    dep.backend_urls = started.urls
    publishing: asyncio.Task[None] | None = None
    try:
        if not as_json:
            console.print(f"starting the hub and {len(DEPARTMENTS)} departments' nodes …")
        reg = await asyncio.to_thread(dep.start_hub)
        await asyncio.to_thread(dep.start_nodes, reg)
        # The city's streams flow from now until the demo stops.
        publisher = StreamPublisher(dep, city)
        publishing = asyncio.create_task(publisher.run_forever())
        outcomes = await scenario(dep, city, reg)
        outcomes += await stream_outcomes(dep, reg, publisher, started)
        ok = all(o.ok for o in outcomes)
        if as_json:
            print(
                json.dumps(
                    {
                        "hub_url": dep.hub_url,
                        "console_url": f"{dep.hub_url}/console/",
                        "sample": sample_call(dep, city),
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        else:
            print_summary(dep, outcomes, data_dir)
        if check:
            console.print("demo check: " + ("[green]passed[/green]" if ok else "[red]FAILED[/red]"))
            return 0 if ok else 1
        if not as_json:
            console.print("running; press Ctrl-C to stop")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if publishing is not None:
            publishing.cancel()
            try:
                await publishing
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug in the feeds must not keep the city running
                logging.getLogger("qiao.demo").exception("the stream publisher failed")
        await asyncio.to_thread(dep.stop)
        await started.stop()


def run_demo(
    *, data_dir: Path, base_port: int, check: bool, as_json: bool, database_url: str | None = None
) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        return asyncio.run(_run(data_dir, base_port, check, as_json, database_url))
    except (RuntimeError, TimeoutError, OSError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
