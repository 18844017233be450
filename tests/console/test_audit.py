"""The audit pages (docs/console.md, "Audit"): searching the exchanges on the ledger with
keyset pages, each organization seeing its own records only, an exchange's receipt verified
in the page (and not verified once its entry is tampered with), the receipt's download, the
review of emergency accesses, and an auditor who cannot change anything."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from qiao.canonical import canonical_json
from qiao.identity.roles import CLI, Principal, Role
from qiao.ledger.models import LedgerEntry
from qiao.ledger.policy import Policy
from qiao.ledger.receipt import verify_receipt
from qiao.ledger.service import HubLedger
from tests.console.conftest import BASE, A, B, Hub, csrf_of, new_client, sign_in
from tests.console.pages import Page
from tests.console.test_security import assert_headers

XSS = '<script>alert("x")</script>'
_ids = itertools.count(1)


def record(
    hub: Hub,
    org: str,
    *,
    role: str = "provider",
    provider_org: str = A,
    resource: str = "traffic-violations",
    purpose: str = "traffic-enforcement",
    end_user: str = "officer-1",
    started_at: datetime | None = None,
    status: int = 200,
    duration_ms: float = 12.5,
    exchange_id: str | None = None,
    emergency: str | None = None,
) -> tuple[int, str]:
    """Append an exchange record to the hub's ledger as org's node would have (the entry
    as ExchangeLedger.submit builds it), and index it; returns (ledger index, exchange id)."""
    ledger: HubLedger = hub.app.state.ledger
    n = next(_ids)
    xid = exchange_id or f"x-{n:06d}"
    node = f"node-{org[-4:].lower()}"
    rec: dict[str, Any] = {
        "record_id": n,
        "exchange_id": xid,
        "role": role,
        "client": f"CN-T/{B if provider_org == A else A}/app",
        "provider_org": provider_org,
        "resource": resource,
        "method": "GET",
        "purpose": purpose,
        "end_user": end_user,
        "peer_node": "",
        "started_at": (started_at or datetime.now(UTC)).isoformat(),
        "duration_ms": duration_ms,
        "status": status,
        "problem_type": "",
        "request_bytes": 10,
        "response_bytes": 20,
        "request_hash": "a" * 64,
        "response_hash": "b" * 64,
    }
    if emergency:
        rec["emergency"] = emergency
    entry = {"type": "exchange", "instance": "CN-T", "node": node, "org": org, **rec}
    (index,) = ledger.store.append([(f"exchange:{node}:{n}", canonical_json(entry))])
    ledger.exchanges._remember(node, org, [rec], [index])
    return index, xid


def cosign(hub: Hub) -> None:
    """One cosigning round (no witnesses registered: the quorum is zero)."""
    ledger: HubLedger = hub.app.state.ledger
    with httpx.Client() as c:
        assert ledger.cosigning.round(c) is not None


@pytest.fixture(scope="module")
def people(hub: Hub) -> dict[str, str | None]:
    secrets = {
        "aud-a": hub.user("aud-a", Role.AUDITOR),
        "sec-a": hub.user("sec-a", Role.SECURITY_OFFICER),
        "admin-a": hub.user("admin-a", Role.ORG_ADMIN),
        "aud-b": hub.user("aud-b", Role.AUDITOR, B),
        "root": hub.user("root", Role.PLATFORM_ADMIN, None),
        "root2": hub.user("root2", Role.PLATFORM_ADMIN, None),
        "dev-a": hub.user("dev-a", Role.APP_DEVELOPER),
    }
    return secrets


def as_(hub: Hub, people: dict[str, str | None], name: str) -> TestClient:
    c = new_client(hub)
    r = sign_in(hub, c, name, people[name])
    assert r.status_code == 303 and "sign-in" not in r.headers["location"], r.text
    return c


def rows(html: str) -> list[str]:
    """The exchange ids listed on an audit page, in order."""
    return re.findall(r'href="/console/audit/exchanges/\d+">([^<]+)</a>', html)


def test_each_organization_sees_its_own_records_and_filters_narrow(
    hub: Hub, people: dict[str, str | None]
) -> None:
    _, mine = record(hub, A, end_user="officer-7", purpose="p-filter")
    _, theirs = record(hub, B, role="consumer", end_user="officer-7", purpose="p-filter")
    with as_(hub, people, "aud-a") as c:
        r = c.get("/console/audit?end_user=officer-7")
        assert r.status_code == 200
        assert rows(r.text) == [mine]  # B's record of the same kind is not A's to read
        assert_headers(r)
        assert not Page.parse(r.text).inline
        # Each filter narrows: purpose, resource (code or provider/code), exchange id, dates.
        assert rows(c.get("/console/audit?purpose=p-filter").text) == [mine]
        assert rows(c.get("/console/audit?purpose=nothing-like-it").text) == []
        assert mine in rows(c.get(f"/console/audit?resource={A}/traffic-violations").text)
        assert rows(c.get(f"/console/audit?exchange_id={mine}").text) == [mine]
        today = datetime.now(UTC).date()
        assert rows(
            c.get(f"/console/audit?exchange_id={mine}&since={today - timedelta(days=1)}").text
        ) == [mine]
        later = today + timedelta(days=3)
        assert rows(c.get(f"/console/audit?exchange_id={mine}&since={later}").text) == []
        # Another organization's record by its index: absent, not forbidden.
        assert c.get("/console/audit/exchanges/999999").status_code == 404
    with as_(hub, people, "root") as c:
        found = rows(c.get("/console/audit?end_user=officer-7").text)
        assert set(found) == {mine, theirs}
        assert rows(c.get(f"/console/audit?department={B}&end_user=officer-7").text) == [theirs]


def test_another_organizations_record_reads_as_absent(
    hub: Hub, people: dict[str, str | None]
) -> None:
    idx, _ = record(hub, B, role="consumer")
    with as_(hub, people, "aud-a") as c:
        assert c.get(f"/console/audit/exchanges/{idx}").status_code == 404
        assert c.get(f"/console/audit/exchanges/{idx}/receipt").status_code == 404
    with as_(hub, people, "aud-b") as c:
        assert c.get(f"/console/audit/exchanges/{idx}").status_code == 200
        # Indices beyond any integer the database binds are absent too, not a 500.
        assert c.get(f"/console/audit/exchanges/{2**70}").status_code == 404
        assert c.get(f"/console/audit?before={2**70}").status_code == 200


def test_keyset_pages_run_newest_first_without_overlap(
    hub: Hub, people: dict[str, str | None]
) -> None:
    made = [record(hub, A, purpose="paging")[1] for _ in range(45)]
    seen: list[str] = []
    with as_(hub, people, "sec-a") as c:
        url: str | None = "/console/audit?purpose=paging"
        pages = 0
        while url is not None and pages < 5:
            r = c.get(url)
            assert r.status_code == 200
            seen += rows(r.text)
            m = re.search(r'href="(/console/audit\?[^"]*before=\d+)" rel="next"', r.text)
            url = m.group(1).replace("&amp;", "&") if m else None
            pages += 1
    assert pages == 3
    assert seen == list(reversed(made))


def test_roles_at_the_door(hub: Hub, people: dict[str, str | None]) -> None:
    for name in ("aud-a", "sec-a", "admin-a", "root"):
        with as_(hub, people, name) as c:
            assert c.get("/console/audit").status_code == 200, name
    with as_(hub, people, "dev-a") as c:
        assert c.get("/console/audit").status_code == 403
        assert c.get("/console/audit/emergencies").status_code == 403
        assert 'href="/console/audit"' not in c.get("/console/").text  # not in the navigation
    with new_client(hub) as c:  # not signed in: to sign-in
        r = c.get("/console/audit")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")


def test_the_receipt_is_verified_in_the_page_and_downloads(
    hub: Hub, people: dict[str, str | None]
) -> None:
    idx, xid = record(hub, A, end_user=XSS, purpose="see-<b>this</b>")
    with as_(hub, people, "aud-a") as c:
        page = c.get(f"/console/audit/exchanges/{idx}")
        assert page.status_code == 200
        if "验证通过" not in page.text:  # not yet cosigned: says so, then is
            assert "未验证" in page.text
            cosign(hub)
            page = c.get(f"/console/audit/exchanges/{idx}")
        assert "验证通过" in page.text and "未验证" not in page.text
        assert_headers(page)
        assert not Page.parse(page.text).inline
        # Typed text renders as text; hashes are shown, and no payload exists to show.
        assert XSS not in page.text and "&lt;script&gt;" in page.text
        assert "<b>this</b>" not in page.text
        assert "a" * 64 in page.text
        r = c.get(f"/console/audit/exchanges/{idx}/receipt")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        ledger: HubLedger = hub.app.state.ledger
        statement = verify_receipt(
            r.content, ledger.store.entry(idx), Policy.parse(ledger.policy_text())
        )
        assert f"entry {idx} is in" in statement
        listed = c.get(f"/console/audit?exchange_id={xid}")
        assert XSS not in listed.text and "&lt;script&gt;" in listed.text
        # In English too.
        c.cookies.set("qiao_lang", "en")
        assert ">Verified<" in c.get(f"/console/audit/exchanges/{idx}").text


def test_a_tampered_entry_is_not_verified(hub: Hub, people: dict[str, str | None]) -> None:
    idx, _ = record(hub, A, purpose="to-tamper")
    cosign(hub)
    ledger: HubLedger = hub.app.state.ledger
    original = ledger.store.entry(idx)
    forged = original.replace(b"to-tamper", b"to-hide!!")
    with ledger.exchanges.sessions.begin() as s:
        s.execute(update(LedgerEntry).where(LedgerEntry.idx == idx).values(entry=forged))
    try:
        with as_(hub, people, "aud-a") as c:
            page = c.get(f"/console/audit/exchanges/{idx}")
            assert page.status_code == 200
            assert "未验证" in page.text and "验证通过" not in page.text
            assert "is not entry" in page.text  # the verifier's reason
    finally:
        with ledger.exchanges.sessions.begin() as s:
            s.execute(update(LedgerEntry).where(LedgerEntry.idx == idx).values(entry=original))


def _emergency(hub: Hub) -> str:
    hub.registry.add_resource(A, "em-resource")
    service = hub.app.state.emergencies
    first = Principal("user:root", frozenset({Role.PLATFORM_ADMIN}), kind="user")
    second = Principal("user:root2", frozenset({Role.PLATFORM_ADMIN}), kind="user")
    e = service.declare(first, resources=[f"{A}/em-resource"], reason="洪水", duration_hours=2)
    service.confirm(second, e.id)
    return str(e.id)


def test_emergency_accesses_are_reviewed_from_the_audit(
    hub: Hub, people: dict[str, str | None]
) -> None:
    em = _emergency(hub)
    idx, xid = record(hub, A, resource="em-resource", emergency=em)
    hub.app.state.emergencies.note_access(
        em,
        exchange_id=xid,
        node="node-y43",
        ledger_index=idx,
        provider_org=A,
        resource="em-resource",
        client=f"CN-T/{B}/app",
        at=datetime.now(UTC),
    )
    with as_(hub, people, "aud-a") as c:
        page = c.get("/console/audit/emergencies")
        assert page.status_code == 200 and xid in page.text
        assert_headers(page)
        assert not Page.parse(page.text).inline
        form = {"exchange_id": xid, "node": "node-y43", "note": XSS}
        # CSRF first: without the token nothing is recorded.
        r = c.post(f"/console/audit/emergencies/{em}/review", data=form)
        assert r.status_code == 403
        token = csrf_of(page.text)
        empty = c.post(
            f"/console/audit/emergencies/{em}/review",
            data={**form, "note": " ", "csrf_token": token},
        )
        assert empty.status_code == 422 and xid in empty.text
        r = c.post(f"/console/audit/emergencies/{em}/review", data={**form, "csrf_token": token})
        assert r.status_code == 303
        assert xid not in c.get("/console/audit/emergencies").text  # reviewed: off the list
    (reviewed,) = [a for a in hub.app.state.emergencies.accesses(CLI, em) if a.exchange_id == xid]
    assert reviewed.reviewed_by == "user:aud-a" and reviewed.review_note == XSS
    with as_(hub, people, "sec-a") as c:  # reads the list, records no review (as the API)
        token = csrf_of(c.get("/console/audit/emergencies").text)
        r = c.post(
            f"/console/audit/emergencies/{em}/review",
            data={"exchange_id": xid, "node": "node-y43", "note": "x", "csrf_token": token},
        )
        assert r.status_code == 403


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, included routers too (as tests/hub/test_rbac_matrix)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            sub = getattr(getattr(r, "include_context", None), "prefix", "")
            yield from _routes(inner.routes, prefix + sub)
            continue
        for method in getattr(r, "methods", None) or ():
            yield method, prefix + r.path


def test_an_auditor_cannot_change_anything(hub: Hub, people: dict[str, str | None]) -> None:
    """Every form of the console but the auditor's own (recording a review), posted by an
    auditor with a valid CSRF token, is refused (sign-in, sign-out, the language and one's
    own two-step enrollment are a person's own, not changes to the exchange)."""
    own = {
        "/console/sign-in",
        "/console/sign-in/code",
        "/console/sign-out",
        "/console/language",
        "/console/mfa/start",
        "/console/mfa/confirm",
        "/console/audit/emergencies/{emergency_id}/review",
    }
    forms = sorted(
        path
        for method, path in _routes(hub.app.routes)
        if method == "POST" and path.startswith("/console/") and path not in own
    )
    assert len(forms) >= 15, forms
    values = {
        "org": A,
        "code": "traffic-violations",
        "request_id": "rq-x",
        "agreement_id": "ag-x",
        "username": "dev-a",
        "action": "disable",
        "emergency_id": "em-aaaaaaaaaaaa",
    }
    with as_(hub, people, "aud-a") as c:
        token = csrf_of(c.get("/console/audit").text)
        for path in forms:
            url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
            r = c.post(url, data={"csrf_token": token, "reason": "x", "roles": "auditor"})
            assert r.status_code == 403, f"{path}: {r.status_code}"
    assert not hub.identity.get_user(CLI, "dev-a").disabled


def test_pages_are_html_for_anonymous_callers(hub: Hub) -> None:
    with TestClient(hub.app, base_url=BASE, follow_redirects=False) as c:
        for path in ("/console/audit", "/console/audit/emergencies", "/console/audit/exchanges/1"):
            r = c.get(path)
            assert r.status_code == 303
            assert_headers(r)


def test_migration_0014_fills_the_columns_of_rows_indexed_before_it(db_url: str) -> None:
    """Rows the ledger indexed before 0014 get their columns from their entries, so that an
    upgraded hub's audit finds its old exchanges too (SQLite and PostgreSQL)."""
    from sqlalchemy import text

    from qiao.db import downgrade, make_engine, migrate

    migrate("hub", db_url, "0013")
    entry = {
        "type": "exchange",
        "org": A,
        "exchange_id": "x-old",
        "purpose": "licensing",
        "end_user": "officer-9",
        "provider_org": A,
        "resource": "traffic-violations",
        "started_at": "2026-11-01T08:00:00+00:00",
        "status": 200,
        "duration_ms": 7.5,
    }
    eng = make_engine(db_url)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO ledger_entries (idx, entry, source_key, created_at) "
                "VALUES (0, :e, 'exchange:n:1', :t)"
            ),
            {"e": canonical_json(entry), "t": datetime.now(UTC)},
        )
        c.execute(
            text(
                "INSERT INTO ledger_exchanges (idx, exchange_id, role, node) "
                "VALUES (0, 'x-old', 'provider', 'n')"
            )
        )
    migrate("hub", db_url)
    with eng.connect() as c:
        row = c.execute(
            text("SELECT org, purpose, end_user, resource, status FROM ledger_exchanges")
        ).one()
    assert tuple(row) == (A, "licensing", "officer-9", "traffic-violations", 200)
    eng.dispose()
    downgrade("hub", db_url)
    with make_engine(db_url).begin() as c:
        c.execute(text("DROP TABLE alembic_version"))
