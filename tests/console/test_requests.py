"""Requests and approvals in the console: applying from a resource's page, the applicant's
and the approver's lists, approving with narrowing (checked through the agreement service),
refusing with a reason, withdrawing, and who may not see or act — each through the pages
and forms a browser would use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qiao.agreements.service import AgreementService, Application
from qiao.console.core import MAX_PAGES, paginate
from qiao.identity.roles import CLI, Principal, Role
from tests.catalog.conftest import spec
from tests.console.conftest import A, B, Hub, csrf_of, new_client, sign_in
from tests.console.pages import Page
from tests.console.test_security import assert_headers

C = "11350100MB00012341"  # a third organization, party to nothing here
RESOURCE = f"/console/catalog/{A}/traffic-violations"
REQUEST_ID = re.compile(r"^/console/requests/(req-[a-z0-9]+)$")


@pytest.fixture(scope="module")
def people(hub: Hub) -> dict[str, str | None]:
    hub.registry.add_organization(C, "丙局")
    hub.registry.add_app(B, "app-b1", "执法终端")
    hub.registry.add_app(B, "app-b2", "审批系统")
    return {
        "b-steward": hub.user("b-steward", Role.DATA_STEWARD, org=B),
        "a-approver": hub.user("a-approver", Role.APPROVER, org=A),
        "c-approver": hub.user("c-approver", Role.APPROVER, org=C),
        "a-auditor": hub.user("a-auditor", Role.AUDITOR, org=A),
    }


def service(hub: Hub) -> AgreementService:
    return hub.app.state.agreements  # type: ignore[no-any-return]


def browser(hub: Hub, people: dict[str, str | None], username: str) -> TestClient:
    client = new_client(hub)
    r = sign_in(hub, client, username, people.get(username))
    assert r.status_code == 303, r.text
    return client


@pytest.fixture
def applicant(hub: Hub, people: dict[str, str | None]) -> Iterator[TestClient]:
    with browser(hub, people, "b-steward") as c:
        yield c


@pytest.fixture
def approver(hub: Hub, people: dict[str, str | None]) -> Iterator[TestClient]:
    with browser(hub, people, "a-approver") as c:
        yield c


APPLICATION = {
    "purposes": "licensing, road-safety",
    "purpose_text": "行政审批核查",
    "legal_basis": "《行政许可法》第三十一条",
    "fields": ["plate", "violation"],
    "methods": ["GET"],
    "paths": "**",
    "apps": ["app-b1", "app-b2"],
    "valid_days": "365",
    "daily_quota": "1000",
}


def apply(client: TestClient, **over: Any) -> str:
    """Apply through the resource's form; the new request's id."""
    form = client.get(f"{RESOURCE}/apply")
    assert form.status_code == 200
    r = client.post(
        f"{RESOURCE}/apply", data={**APPLICATION, **over, "csrf_token": csrf_of(form.text)}
    )
    assert r.status_code == 303, r.text
    m = REQUEST_ID.match(r.headers["location"])
    assert m, r.headers["location"]
    return m.group(1)


def decide_form(client: TestClient, request_id: str) -> tuple[str, str]:
    page = client.get(f"/console/requests/{request_id}")
    assert page.status_code == 200
    return page.text, csrf_of(page.text)


def test_applicant_applies_and_the_approver_approves_narrowed(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    resource = applicant.get(RESOURCE)
    assert f'href="{RESOURCE}/apply"' in resource.text
    request_id = apply(applicant)
    mine = applicant.get("/console/requests?box=mine")
    assert request_id in mine.text and "剩余 10 个工作日" in mine.text

    inbox = approver.get("/console/requests")  # an approver's default: the inbox, undecided
    assert request_id in inbox.text
    page, token = decide_form(approver, request_id)
    # Pre-filled with what was asked.
    assert 'name="fields" value="plate" checked' in page
    assert 'name="apps" value="app-b2" checked' in page
    assert 'name="valid_days" inputmode="numeric" value="365"' in page
    r = approver.post(
        f"/console/requests/{request_id}/approve",
        data={
            "csrf_token": token,
            "fields": ["violation", "plate"],
            "mask.plate": "suppress",
            "methods": ["GET"],
            "paths": "**",
            "apps": ["app-b1"],
            "purposes": ["licensing"],
            "valid_days": "30",
            "daily_quota": "100",
            "rate_requests": "5",
            "rate_per_seconds": "1",
            "tw_days": ["1", "2", "3", "4", "5"],
            "tw_start": "08:30",
            "tw_end": "17:30",
            "end_user_required": "1",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == f"/console/requests/{request_id}"
    decided = service(hub).get_request(CLI, request_id)
    assert decided.status == "approved"
    doc = service(hub).get(CLI, decided.agreement_id).agreement()
    assert doc.fields == ("violation", "plate")
    assert doc.masking["plate"].rule.value == "suppress"
    assert doc.consumer.apps == ("app-b1",)
    assert doc.purposes == ("licensing",)
    assert (doc.valid_until - doc.valid_from).days == 30
    assert doc.daily_quota == 100 and doc.rate_limit is not None
    assert doc.rate_limit.requests == 5 and doc.rate_limit.per_seconds == 1
    assert doc.conditions.end_user_required
    (window,) = doc.conditions.time_windows
    assert window.days == (1, 2, 3, 4, 5) and window.start.hour == 8 and window.end.minute == 30
    # The applicant sees the outcome and the agreement it made.
    shown = applicant.get(f"/console/requests/{request_id}")
    assert "已批准" in shown.text and decided.agreement_id in shown.text
    assert 'action="/console/requests/' not in shown.text  # nothing left to decide or withdraw


def test_a_widening_approval_shows_the_error_and_keeps_what_was_typed(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    request_id = apply(applicant)
    _, token = decide_form(approver, request_id)
    r = approver.post(
        f"/console/requests/{request_id}/approve",
        data={
            "csrf_token": token,
            "fields": ["violation"],
            "methods": ["GET"],
            "paths": "**",
            "apps": ["app-b1"],
            "purposes": ["licensing"],
            "valid_days": "400",  # applied for 365
            "daily_quota": "77",
            "mask.violation": "pseudonym",
        },
    )
    assert r.status_code == 422
    page = Page.parse(r.text)
    assert not page.inline
    assert "审批只能收窄申请范围" in r.text and "400 days (applied for 365)" in r.text
    # Nothing typed is lost: the values come back as sent, not as applied for.
    assert 'name="valid_days" inputmode="numeric" value="400"' in r.text
    assert 'name="daily_quota" inputmode="numeric" value="77"' in r.text
    assert 'name="fields" value="plate">' in r.text  # unticked stays unticked
    assert '<option value="pseudonym" selected>' in r.text
    assert service(hub).get_request(CLI, request_id).status == "submitted"


def test_a_refusal_needs_its_reason_and_the_reason_renders_as_text(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    request_id = apply(applicant)
    _, token = decide_form(approver, request_id)
    r = approver.post(
        f"/console/requests/{request_id}/refuse", data={"csrf_token": token, "reason": "  "}
    )
    assert r.status_code == 422 and "请填写理由" in r.text
    assert service(hub).get_request(CLI, request_id).status == "submitted"
    payload = '<script>alert("refused")</script><img src=x onerror=alert(1)>'
    r = approver.post(
        f"/console/requests/{request_id}/refuse", data={"csrf_token": token, "reason": payload}
    )
    assert r.status_code == 303
    assert service(hub).get_request(CLI, request_id).reason == payload
    for client in (applicant, approver):
        shown = client.get(f"/console/requests/{request_id}")
        assert shown.status_code == 200 and "已拒绝" in shown.text
        assert payload not in shown.text and "<img src=x" not in shown.text
        assert "&lt;script&gt;alert(&#34;refused&#34;)&lt;/script&gt;" in shown.text
        assert not Page.parse(shown.text).inline
    # Decided once: a second decision says so on the page.
    r = approver.post(
        f"/console/requests/{request_id}/refuse", data={"csrf_token": token, "reason": "again"}
    )
    assert r.status_code == 409 and "该申请已处理" in r.text


def test_another_organizations_approver_neither_sees_nor_acts(
    hub: Hub, people: dict[str, str | None], applicant: TestClient
) -> None:
    request_id = apply(applicant)
    with browser(hub, people, "c-approver") as other:
        inbox = other.get("/console/requests")
        assert inbox.status_code == 200 and request_id not in inbox.text
        r = other.get(f"/console/requests/{request_id}")
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        token = csrf_of(inbox.text)
        for action, data in (("approve", {}), ("refuse", {"reason": "不予同意"})):
            r = other.post(
                f"/console/requests/{request_id}/{action}", data={"csrf_token": token, **data}
            )
            assert r.status_code == 403, action
    # The applicant's own organization may not decide either (only the provider's approvers).
    token = csrf_of(applicant.get("/console/requests").text)
    r = applicant.post(f"/console/requests/{request_id}/approve", data={"csrf_token": token})
    assert r.status_code == 403
    assert service(hub).get_request(CLI, request_id).status == "submitted"
    # An auditor reads requests but decides nothing; the page offers no form to them.
    with browser(hub, people, "a-auditor") as auditor:
        shown = auditor.get(f"/console/requests/{request_id}")
        assert shown.status_code == 200 and "/approve" not in shown.text


def test_the_applicant_withdraws(hub: Hub, applicant: TestClient, approver: TestClient) -> None:
    request_id = apply(applicant)
    page = applicant.get(f"/console/requests/{request_id}")
    assert f'action="/console/requests/{request_id}/withdraw"' in page.text
    # The provider's approver is offered no withdraw button and may not withdraw.
    approver_page, approver_token = decide_form(approver, request_id)
    assert "/withdraw" not in approver_page
    r = approver.post(
        f"/console/requests/{request_id}/withdraw", data={"csrf_token": approver_token}
    )
    assert r.status_code == 403
    r = applicant.post(
        f"/console/requests/{request_id}/withdraw", data={"csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 303
    assert service(hub).get_request(CLI, request_id).status == "withdrawn"
    assert "已撤回" in applicant.get(f"/console/requests/{request_id}").text
    r = applicant.post(
        f"/console/requests/{request_id}/withdraw", data={"csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 409 and "该申请已处理" in r.text


def test_an_invalid_application_comes_back_with_its_message(applicant: TestClient) -> None:
    form = applicant.get(f"{RESOURCE}/apply")
    r = applicant.post(
        f"{RESOURCE}/apply",
        data={**APPLICATION, "legal_basis": "", "csrf_token": csrf_of(form.text)},
    )
    assert r.status_code == 422 and "申请须注明法律依据" in r.text
    assert 'value="licensing, road-safety"' in r.text and "行政审批核查" in r.text
    r = applicant.post(
        f"{RESOURCE}/apply",
        data={**APPLICATION, "valid_days": "a year", "csrf_token": csrf_of(form.text)},
    )
    assert r.status_code == 422 and "a whole number" in r.text


def test_every_new_form_needs_the_csrf_token(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    request_id = apply(applicant)
    posts = [
        (applicant, f"{RESOURCE}/apply", APPLICATION),
        (applicant, f"/console/catalog/{B}/enterprise-credit/subscribe", {"purposes": "x"}),
        (applicant, f"/console/requests/{request_id}/withdraw", {}),
        (approver, f"/console/requests/{request_id}/approve", {}),
        (approver, f"/console/requests/{request_id}/refuse", {"reason": "不予同意"}),
    ]
    for client, path, data in posts:
        for token in (None, "forged"):
            sent = dict(data) if token is None else {**data, "csrf_token": token}
            r = client.post(path, data=sent)
            assert r.status_code == 403 and "表单已失效" in r.text, path
            assert_headers(r)
    assert service(hub).get_request(CLI, request_id).status == "submitted"
    # The right token from another site's page is refused on its Origin.
    token = csrf_of(approver.get(f"/console/requests/{request_id}").text)
    r = approver.post(
        f"/console/requests/{request_id}/refuse",
        data={"csrf_token": token, "reason": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert service(hub).get_request(CLI, request_id).status == "submitted"


def test_what_a_resource_page_offers(
    hub: Hub, people: dict[str, str | None], applicant: TestClient
) -> None:
    hub.app.state.catalog.publish(
        CLI,
        spec(
            code="sealed-files",
            name="涉密档案",
            sharing_type="none",
            sharing_conditions="",
            legal_basis="《中华人民共和国保守国家秘密法》第二十八条",
        ),
    )
    sealed = applicant.get(f"/console/catalog/{A}/sealed-files")
    assert "不予共享" in sealed.text and "保守国家秘密法" in sealed.text
    assert "/apply" not in sealed.text and "/subscribe" not in sealed.text
    # An auditor is not among those who apply: no button.
    with browser(hub, people, "a-auditor") as auditor:
        assert "/apply" not in auditor.get(RESOURCE).text
        r = auditor.get(f"{RESOURCE}/apply")
        assert r.status_code == 403
    # Nor does the provider's own steward apply for its own resource.
    with new_client(hub) as own:
        sign_in(hub, own, "steward")
        assert "/apply" not in own.get(RESOURCE).text


def test_subscribing_to_an_unconditional_resource_is_one_step(hub: Hub) -> None:
    with new_client(hub) as client:
        sign_in(hub, client, "steward")  # a steward of A; enterprise-credit is B's
        page = client.get(f"/console/catalog/{B}/enterprise-credit")
        assert f'action="/console/catalog/{B}/enterprise-credit/subscribe"' in page.text
        r = client.post(
            f"/console/catalog/{B}/enterprise-credit/subscribe",
            data={"purposes": "", "app": "", "csrf_token": csrf_of(page.text)},
        )
        assert r.status_code == 422  # purposes are required: the form comes back
        assert 'action="/console/catalog/' in r.text
        r = client.post(
            f"/console/catalog/{B}/enterprise-credit/subscribe",
            data={"purposes": "credit-check", "app": "", "csrf_token": csrf_of(page.text)},
        )
        assert r.status_code == 303
        agreement_id = r.headers["location"].rsplit("/", 1)[1]
        made = service(hub).get(CLI, agreement_id)
        assert (made.provider_org, made.consumer_org) == (B, A)
        assert made.agreement().purposes == ("credit-check",)


def test_request_pages_are_well_formed_and_under_the_csp(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    request_id = apply(applicant)
    pages = {
        "apply": applicant.get(f"{RESOURCE}/apply"),
        "mine": applicant.get("/console/requests?box=mine&status=all&page=1"),
        "inbox": approver.get("/console/requests?box=inbox"),
        "detail (approver)": approver.get(f"/console/requests/{request_id}"),
        "detail (applicant)": applicant.get(f"/console/requests/{request_id}"),
    }
    for name, r in pages.items():
        assert r.status_code == 200, name
        assert_headers(r)
        page = Page.parse(r.text)
        assert not page.inline, f"{name}: {page.inline}"
        assert len(page.all("h1")) == 1, name
        labelled = {e.attrs["for"] for e in page.all("label") if "for" in e.attrs}
        for control in page.all("input") + page.all("select") + page.all("textarea"):
            if control.attrs.get("type") == "hidden":
                continue
            assert control.attrs.get("id") in labelled or control.attrs.get("aria-label"), (
                f"{name}: {control.tag} {control.attrs} has no label"
            )


def test_the_inbox_puts_the_oldest_first_and_flags_the_overdue(
    hub: Hub, applicant: TestClient, approver: TestClient
) -> None:
    applied = Principal("user:b-steward", frozenset({Role.DATA_STEWARD}), org=B, kind="user")
    late = service(hub).apply(
        applied,
        A,
        "traffic-violations",
        Application(purposes=("licensing",), purpose_text="核查", legal_basis="《行政许可法》"),
        now=datetime.now(UTC) - timedelta(days=40),
    )
    recent = apply(applicant)
    inbox = approver.get("/console/requests")
    assert inbox.text.index(late.id) < inbox.text.index(recent)
    row = inbox.text[inbox.text.rindex("<tr", 0, inbox.text.index(late.id)) :]
    assert row.startswith('<tr class="overdue">') and "已超期" in row.split("</tr>")[0]
    detail = approver.get(f"/console/requests/{late.id}")
    assert "已超期：答复期限已过。" in detail.text


def test_lists_are_pages_with_a_cap() -> None:
    rows = list(range(45))
    first = paginate(rows, None)
    assert first.rows == list(range(20)) and (first.page_no, first.pages_total) == (1, 3)
    assert paginate(rows, "3").rows == list(range(40, 45))
    assert paginate(rows, "99").page_no == 3  # past the end: the last page
    assert paginate(rows, "x").page_no == 1
    many = paginate(list(range(5000)), "1000")
    assert many.pages_total == MAX_PAGES and many.page_no == MAX_PAGES
