"""The dashboard (docs/console.md, "Dashboard"): server-drawn SVG charts of the exchanges
by department, errors and latency, with a table for screen readers and no inline style;
each organization's figures are its own; the approver's pending requests with their
deadline; the ledger with its witnesses; alerts; and the render time with 100,000
exchanges on SQLite (printed, for BENCHMARKS-style reporting)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from qiao.agreements.service import Application
from qiao.console.dashboard import bar_chart, percentile
from qiao.events.models import EventLogEntry
from qiao.identity.roles import Principal, Role
from qiao.ledger.exchanges import LedgerExchange
from tests.console.conftest import A, B, Hub, new_client, sign_in
from tests.console.pages import Page
from tests.console.test_audit import record
from tests.console.test_security import assert_headers


@pytest.fixture(scope="module")
def people(hub: Hub) -> dict[str, str | None]:
    return {
        "d-aud-a": hub.user("d-aud-a", Role.AUDITOR),
        "d-aud-b": hub.user("d-aud-b", Role.AUDITOR, B),
        "d-root": hub.user("d-root", Role.PLATFORM_ADMIN, None),
        "d-appr-a": hub.user("d-appr-a", Role.APPROVER),
    }


def as_(hub: Hub, people: dict[str, str | None], name: str) -> TestClient:
    hub.app.state.console_figures.entries.clear()  # fresh figures, not the minute's cache
    c = new_client(hub)
    r = sign_in(hub, c, name, people[name])
    assert r.status_code == 303 and "sign-in" not in r.headers["location"], r.text
    return c


def hidden_table(html: str, caption: str) -> str:
    """The screen-reader table of the chart captioned ``caption``."""
    at = html.index(f"<caption>{caption}</caption>")
    start = html.rindex("<table", 0, at)
    assert 'class="visually-hidden"' in html[start:at]
    return html[start : html.index("</table>", at)]


def test_charts_are_svg_with_a_table_and_count_each_organizations_own(
    hub: Hub, people: dict[str, str | None]
) -> None:
    now = datetime.now(UTC)
    for ms in (10, 20, 30, 40, 1000):
        record(hub, A, duration_ms=ms, started_at=now - timedelta(minutes=5))
    record(hub, A, status=503, duration_ms=50, started_at=now - timedelta(minutes=5))
    record(hub, A, started_at=now - timedelta(days=3))  # in the 14 days, not the 24 hours
    record(hub, B, role="consumer", started_at=now - timedelta(minutes=5))
    with as_(hub, people, "d-aud-a") as c:
        r = c.get("/console/")
        assert r.status_code == 200
        assert_headers(r)
        page = Page.parse(r.text)
        assert not page.inline
        svgs = page.all("svg")
        assert len(svgs) >= 4 and all(s.attrs.get("aria-hidden") == "true" for s in svgs)
        assert page.all("rect") and page.all("polyline")
        html = r.text
        # Figures of A's six records in the last 24 hours (B's record is not A's).
        figures = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", html))
        assert figures["最近 24 小时"] == "6"
        assert figures["错误率"] == "16.7%"  # one 503 of six
        assert figures["延迟 p50"] == "30 ms" and figures["延迟 p99"] == "1000 ms"
        hourly = hidden_table(html, "每小时交换次数（按部门）")
        assert "甲局" in hourly and "乙局" not in hourly
        cells = [int(float(n)) for n in re.findall(r"<td>([\d.]+)</td>", hourly)]
        assert sum(cells) == 6
        daily = hidden_table(html, "每天交换次数（按部门）")
        assert sum(int(float(n)) for n in re.findall(r"<td>([\d.]+)</td>", daily)) == 7
        # The ledger's size and the witnesses' state are shown.
        assert "最近联署的检查点" in html and "未登记见证方" in html
    with as_(hub, people, "d-root") as c:  # the platform: every department
        hourly = hidden_table(c.get("/console/").text, "每小时交换次数（按部门）")
        assert "甲局" in hourly and "乙局" in hourly


def test_the_approver_sees_pending_requests_with_their_deadline(
    hub: Hub, people: dict[str, str | None]
) -> None:
    applied = Principal("user:b-steward", frozenset({Role.DATA_STEWARD}), org=B, kind="user")
    service = hub.app.state.agreements
    late = service.apply(
        applied,
        A,
        "traffic-violations",
        Application(purposes=("licensing",), purpose_text="核查", legal_basis="《行政许可法》"),
        now=datetime.now(UTC) - timedelta(days=40),
    )
    with as_(hub, people, "d-appr-a") as c:
        html = c.get("/console/").text
        assert f"/console/requests/{late.id}" in html
        assert "已超期" in html  # the countdown ran out
        assert f"申请 {late.id} 已超过办理期限。" in html  # and it is an alert
        assert "<meter" in html
    with as_(hub, people, "d-aud-b") as c:  # B's auditor has no inbox to decide
        assert f"/console/requests/{late.id}" not in c.get("/console/").text


def test_chart_maths() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    chart = bar_chart(["a", "b"], ["x", "y"], [[1, 2], [0, 4]])
    assert chart.total == 7 and chart.ticks[-1][1] == "5"  # a 1-2-5 axis above the top bar
    tallest = [r for r in chart.rects if r.title.startswith("b")]
    assert len(tallest) == 1  # a zero is not drawn


def test_render_time_with_100000_exchanges(hub: Hub, people: dict[str, str | None]) -> None:
    """100,000 rows over 14 days in the ledger's exchange index (the dashboard reads only
    that table); the first render (no cached figures) must stay well under a second."""
    now = datetime.now(UTC)
    orgs = [A, B, "C3", "C4", "C5", "C6", "C7", "C8"]
    base = 10_000_000
    rows = [
        {
            "idx": base + i,
            "exchange_id": f"bench-{i}",
            "role": "provider",
            "node": "bench",
            "org": orgs[i % len(orgs)],
            "provider_org": A,
            "resource": "traffic-violations",
            "purpose": "bench",
            "end_user": f"u{i % 1000}",
            "started_at": now - timedelta(seconds=i * 12),  # 100,000 × 12 s ≈ 14 days
            "duration_ms": float(i % 250),
            "status": 200 if i % 50 else 500,
        }
        for i in range(100_000)
    ]
    sessions = hub.app.state.ledger.exchanges.sessions
    with sessions.begin() as s:
        s.execute(LedgerExchange.__table__.insert(), rows)  # type: ignore[attr-defined]
    try:
        timings = []
        for name in ("d-root", "d-aud-a"):
            with as_(hub, people, name) as c:
                t0 = time.perf_counter()
                r = c.get("/console/")
                timings.append(time.perf_counter() - t0)
                assert r.status_code == 200
        t0 = time.perf_counter()
        with as_(hub, people, "d-aud-a") as c:
            r = c.get("/console/audit?purpose=bench&before=10050000")
            audit = time.perf_counter() - t0
            # A's rows are every eighth: the newest below the key is 49,992.
            assert r.status_code == 200 and "bench-49992" in r.text and "bench-49993" not in r.text
        print(
            "\ndashboard render with 100,000 exchanges (SQLite): "
            f"platform {timings[0] * 1000:.0f} ms, one organization {timings[1] * 1000:.0f} ms; "
            f"audit page 2,500 deep: {audit * 1000:.0f} ms (incl. sign-in)"
        )
        assert max(timings) < 3.0  # generous: a shared CI machine; typically ~0.2 s
    finally:
        with sessions.begin() as s:
            s.execute(LedgerExchange.__table__.delete().where(LedgerExchange.node == "bench"))  # type: ignore[attr-defined]


def test_events_per_stream_from_the_hubs_broker(hub: Hub, people: dict[str, str | None]) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "stream": f"{A}/accidents" if i % 4 else f"{A}/<b>stations</b>",
            "subscriber": "node-b",
            "offset": 900_000 + i,
            "event_id": f"ev-{i}",
            "partition_key": "",
            "published_at": now - timedelta(hours=30 if i >= 40 else 1),
            "envelope": b"sealed",
        }
        for i in range(48)
    ]
    sessions = hub.app.state.ledger.exchanges.sessions
    with sessions.begin() as s:
        s.execute(EventLogEntry.__table__.insert(), rows)  # type: ignore[attr-defined]
    with as_(hub, people, "d-aud-a") as c:
        html = c.get("/console/").text
    table = hidden_table(html, "各事件流的事件数")
    counts = dict(re.findall(r'<th scope="row">([^<]+)</th><td>(\d+)</td>', table))
    # Only the last 24 hours: 40 events, 30 and 10; the stream's name renders as text.
    assert counts == {f"{A}/accidents": "30", f"{A}/&lt;b&gt;stations&lt;/b&gt;": "10"}
    # Another organization's people do not see A's streams.
    with as_(hub, people, "d-aud-b") as c:
        html = c.get("/console/").text
    assert f"{A}/accidents" not in html
