"""Agreements in the console: the parties' lists, an agreement's terms with its masking
and the state of both signatures, the signed document and its ODRL form, and suspending,
resuming and revoking through a confirmation page, only for those the service allows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qiao.agreements.service import AgreementService, AgreementView, Application, Narrowing
from qiao.console.agreements import signature_states
from qiao.identity.roles import CLI, Principal, Role
from tests.console.conftest import A, B, Hub, csrf_of, new_client, sign_in
from tests.console.pages import Page
from tests.console.test_security import assert_headers

C = "11350100MB00012341"  # a third organization, party to nothing here


def service(hub: Hub) -> AgreementService:
    return hub.app.state.agreements  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def people(hub: Hub) -> dict[str, str | None]:
    hub.registry.add_organization(C, "丙局")
    return {
        "b-steward": hub.user("b-steward", Role.DATA_STEWARD, org=B),
        "b-admin": hub.user("b-admin", Role.ORG_ADMIN, org=B),
        "a-approver": hub.user("a-approver", Role.APPROVER, org=A),
        "c-approver": hub.user("c-approver", Role.APPROVER, org=C),
    }


def browser(hub: Hub, people: dict[str, str | None], username: str) -> TestClient:
    client = new_client(hub)
    r = sign_in(hub, client, username, people.get(username))
    assert r.status_code == 303, r.text
    return client


@pytest.fixture
def agreement(hub: Hub, people: dict[str, str | None]) -> str:
    """An agreement of B (consumer) on A's traffic-violations, approved with masking."""
    svc = service(hub)
    applicant = Principal("user:b-steward", frozenset({Role.DATA_STEWARD}), org=B, kind="user")
    decider = Principal("user:a-approver", frozenset({Role.APPROVER}), org=A, kind="user")
    request = svc.apply(
        applicant,
        A,
        "traffic-violations",
        Application(
            purposes=("licensing",),
            purpose_text="行政审批核查",
            legal_basis="《行政许可法》第三十一条",
        ),
    )
    _, made = svc.approve(
        decider,
        request.id,
        Narrowing.model_validate({"masking": {"violation": {"rule": "pseudonym"}}}),
    )
    return made.id


@pytest.fixture
def approver(hub: Hub, people: dict[str, str | None]) -> Iterator[TestClient]:
    with browser(hub, people, "a-approver") as c:
        yield c


@pytest.fixture
def consumer(hub: Hub, people: dict[str, str | None]) -> Iterator[TestClient]:
    with browser(hub, people, "b-steward") as c:
        yield c


def test_the_parties_list_their_agreements_and_nobody_else_does(
    hub: Hub, people: dict[str, str | None], agreement: str, consumer: TestClient
) -> None:
    listing = consumer.get("/console/agreements")
    assert listing.status_code == 200 and agreement in listing.text and "甲局" in listing.text
    assert agreement in consumer.get("/console/agreements?side=consumer&state=active").text
    assert agreement not in consumer.get("/console/agreements?side=provider").text
    assert agreement not in consumer.get("/console/agreements?state=revoked").text
    with browser(hub, people, "c-approver") as other:
        assert agreement not in other.get("/console/agreements").text
        r = other.get(f"/console/agreements/{agreement}")
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        for download in ("document", "odrl"):
            assert other.get(f"/console/agreements/{agreement}/{download}").status_code == 403


def test_the_detail_shows_terms_masking_and_verified_signatures(
    hub: Hub, agreement: str, consumer: TestClient
) -> None:
    r = consumer.get(f"/console/agreements/{agreement}")
    assert r.status_code == 200
    text = r.text
    assert "licensing" in text and "假名化（带密钥，按协议区分）" in text  # violation's rule
    assert text.count("验证通过") == 2  # both signatures, checked with the published keys
    assert f'href="/console/agreements/{agreement}/document"' in text
    assert f'href="/console/agreements/{agreement}/odrl"' in text
    # The consumer's steward may not change it: no buttons.
    for action in ("suspend", "resume", "revoke"):
        assert f"/console/agreements/{agreement}/{action}" not in text


def test_a_signature_that_does_not_verify_says_so(hub: Hub, agreement: str) -> None:
    view: AgreementView = service(hub).get(CLI, agreement)
    with service(hub)._sessions() as s:
        keys = service(hub).keys.published(s)
    assert signature_states(view, keys) == {"provider": "verified", "consumer": "verified"}
    swapped = dataclasses.replace(
        view, signatures={"provider": view.signatures["consumer"], "consumer": "AAAA"}
    )
    assert signature_states(swapped, keys) == {"provider": "invalid", "consumer": "invalid"}
    assert signature_states(view, {})["provider"] == "no-key"
    tampered = dataclasses.replace(view, sha256="0" * 64)
    assert set(signature_states(tampered, keys).values()) == {"invalid"}


def test_downloads_are_the_signed_document_and_its_odrl_form(
    hub: Hub, agreement: str, consumer: TestClient
) -> None:
    body, digest = service(hub).document(CLI, agreement)
    r = consumer.get(f"/console/agreements/{agreement}/document")
    assert r.status_code == 200 and r.content == body
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-qiao-agreement-sha256"] == digest == hashlib.sha256(body).hexdigest()
    assert r.headers["content-disposition"] == f'attachment; filename="{agreement}.json"'
    assert_headers(r)
    r = consumer.get(f"/console/agreements/{agreement}/odrl")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    policy = json.loads(r.text)
    assert policy == service(hub).odrl(CLI, agreement, hub.settings.public_url)
    assert "@context" in policy
    assert f'filename="{agreement}.odrl.jsonld"' in r.headers["content-disposition"]


def test_suspend_resume_and_revoke_through_a_confirmation(
    hub: Hub, people: dict[str, str | None], agreement: str, approver: TestClient
) -> None:
    detail = approver.get(f"/console/agreements/{agreement}")
    assert f'href="/console/agreements/{agreement}/suspend"' in detail.text
    assert f'href="/console/agreements/{agreement}/resume"' not in detail.text  # it is active
    confirm = approver.get(f"/console/agreements/{agreement}/suspend")
    assert confirm.status_code == 200
    assert f'action="/console/agreements/{agreement}/suspend"' in confirm.text
    token = csrf_of(confirm.text)
    # Nothing changes on the way to the confirmation page.
    assert service(hub).get(CLI, agreement).status == "active"
    r = approver.post(
        f"/console/agreements/{agreement}/suspend", data={"csrf_token": token, "reason": ""}
    )
    assert r.status_code == 422 and "请填写理由" in r.text
    payload = "<script>alert('why')</script>核查期间暂停"
    r = approver.post(
        f"/console/agreements/{agreement}/suspend", data={"csrf_token": token, "reason": payload}
    )
    assert r.status_code == 303 and r.headers["location"] == f"/console/agreements/{agreement}"
    view = service(hub).get(CLI, agreement)
    assert view.status == "suspended" and view.reason == payload
    shown = approver.get(f"/console/agreements/{agreement}")
    assert "已暂停" in shown.text and payload not in shown.text
    assert "&lt;script&gt;alert(&#39;why&#39;)&lt;/script&gt;" in shown.text
    assert not Page.parse(shown.text).inline
    r = approver.post(f"/console/agreements/{agreement}/resume", data={"csrf_token": token})
    assert r.status_code == 303 and service(hub).get(CLI, agreement).status == "active"
    # The consumer's org-admin may revoke (but not suspend).
    with browser(hub, people, "b-admin") as admin:
        page = admin.get(f"/console/agreements/{agreement}")
        assert f'href="/console/agreements/{agreement}/revoke"' in page.text
        assert f'href="/console/agreements/{agreement}/suspend"' not in page.text
        admin_token = csrf_of(page.text)
        r = admin.post(
            f"/console/agreements/{agreement}/suspend",
            data={"csrf_token": admin_token, "reason": "x"},
        )
        assert r.status_code == 403
        r = admin.post(
            f"/console/agreements/{agreement}/revoke",
            data={"csrf_token": admin_token, "reason": "合作终止"},
        )
        assert r.status_code == 303
    assert service(hub).get(CLI, agreement).status == "revoked"
    r = approver.post(
        f"/console/agreements/{agreement}/revoke", data={"csrf_token": token, "reason": "again"}
    )
    assert r.status_code == 409 and "协议当前状态不允许此操作" in r.text


def test_who_may_not_change_an_agreement(
    hub: Hub, people: dict[str, str | None], agreement: str, consumer: TestClient
) -> None:
    token = csrf_of(consumer.get("/console/agreements").text)
    # A steward is no decider: refused at the door, confirmation page and form alike.
    assert consumer.get(f"/console/agreements/{agreement}/suspend").status_code == 403
    r = consumer.post(
        f"/console/agreements/{agreement}/suspend", data={"csrf_token": token, "reason": "x"}
    )
    assert r.status_code == 403
    # Another organization's approver passes the door but not the service.
    with browser(hub, people, "c-approver") as other:
        other_token = csrf_of(other.get("/console/agreements").text)
        for action in ("suspend", "revoke"):
            r = other.post(
                f"/console/agreements/{agreement}/{action}",
                data={"csrf_token": other_token, "reason": "x"},
            )
            assert r.status_code == 403, action
    assert service(hub).get(CLI, agreement).status == "active"


def test_the_change_forms_need_the_csrf_token(
    hub: Hub, agreement: str, approver: TestClient
) -> None:
    for action in ("suspend", "resume", "revoke"):
        for token in (None, "forged"):
            data = {"reason": "x"} if token is None else {"reason": "x", "csrf_token": token}
            r = approver.post(f"/console/agreements/{agreement}/{action}", data=data)
            assert r.status_code == 403 and "表单已失效" in r.text, action
    assert service(hub).get(CLI, agreement).status == "active"


def test_agreement_pages_are_well_formed_and_under_the_csp(
    hub: Hub, agreement: str, approver: TestClient
) -> None:
    pages = {
        "list": approver.get("/console/agreements?page=1"),
        "detail": approver.get(f"/console/agreements/{agreement}"),
        "suspend": approver.get(f"/console/agreements/{agreement}/suspend"),
        "revoke": approver.get(f"/console/agreements/{agreement}/revoke"),
    }
    for name, r in pages.items():
        assert r.status_code == 200, name
        assert_headers(r)
        page = Page.parse(r.text)
        assert not page.inline, f"{name}: {page.inline}"
        assert len(page.all("h1")) == 1 and len(page.all("main")) == 1, name
        labelled = {e.attrs["for"] for e in page.all("label") if "for" in e.attrs}
        for control in page.all("input") + page.all("select") + page.all("textarea"):
            if control.attrs.get("type") != "hidden":
                assert control.attrs.get("id") in labelled, f"{name}: {control.attrs}"
