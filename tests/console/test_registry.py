"""The registry pages (docs/console.md, "Registry"): organizations and apps, nodes with
their certificates' expiry (amber within 30 days, red once expired), enrollment tokens shown
once, users and roles within what the identity service allows, and the emergency panel
(declared by one platform administrator, confirmed by another, ended by either)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from qiao import pki
from qiao.catalog.validators import uscc_check_char
from qiao.identity.roles import CLI, Role
from qiao.registry.models import Certificate
from tests.console.conftest import PASSWORD, A, B, Hub, csrf_of, new_client, sign_in
from tests.console.pages import Page
from tests.console.test_security import assert_headers

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def people(hub: Hub) -> dict[str, str | None]:
    return {
        "oa-a": org_admin(hub, "oa-a"),
        "oa-b": hub.user("oa-b", Role.ORG_ADMIN, B),
        "so-a": hub.user("so-a", Role.SECURITY_OFFICER),
        "au-a": hub.user("au-a", Role.AUDITOR),
        "pa-1": hub.user("pa-1", Role.PLATFORM_ADMIN, None),
        "pa-2": hub.user("pa-2", Role.PLATFORM_ADMIN, None),
        "dv-a": hub.user("dv-a", Role.APP_DEVELOPER),
    }


def org_admin(hub: Hub, username: str) -> str:
    """An administrator of A who also holds two roles to grant (one grants only what one
    holds)."""
    roles = frozenset({Role.ORG_ADMIN, Role.APP_DEVELOPER, Role.DATA_STEWARD})
    hub.identity.add_user(CLI, username, org=A, roles=roles, password=PASSWORD)
    e = hub.identity.start_totp(username)
    hub.identity.confirm_totp(username, hub.code(e.secret, -1))
    return e.secret


def as_(hub: Hub, people: dict[str, str | None], name: str) -> TestClient:
    c = new_client(hub)
    r = sign_in(hub, c, name, people[name])
    assert r.status_code == 303 and "sign-in" not in r.headers["location"], r.text
    return c


def checked(r: object) -> str:
    assert_headers(r)
    text: str = r.text  # type: ignore[attr-defined]
    assert not Page.parse(text).inline
    return text


def test_organizations_escape_their_names_and_only_the_platform_adds_one(
    hub: Hub, people: dict[str, str | None]
) -> None:
    with as_(hub, people, "pa-1") as c:
        page = c.get("/console/registry")
        assert page.status_code == 200
        token = csrf_of(page.text)
        code = "91350100M000200X1" + uscc_check_char("91350100M000200X1")
        form = {"code": code, "name": XSS, "csrf_token": token}
        assert (
            c.post("/console/registry/organizations", data={**form, "csrf_token": ""}).status_code
            == 403
        )
        r = c.post("/console/registry/organizations", data=form)
        assert r.status_code == 303
        text = checked(c.get("/console/registry"))
        assert XSS not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
        again = c.post("/console/registry/organizations", data=form)
        assert again.status_code == 409 and XSS not in again.text  # typed back, escaped
    with as_(hub, people, "oa-a") as c:
        page = c.get("/console/registry")
        assert (
            page.status_code == 200 and 'action="/console/registry/organizations"' not in page.text
        )
        r = c.post(
            "/console/registry/organizations",
            data={"code": A, "name": "x", "csrf_token": csrf_of(page.text)},
        )
        assert r.status_code == 403


def test_an_org_admin_adds_apps_to_their_own_organization_only(
    hub: Hub, people: dict[str, str | None]
) -> None:
    with as_(hub, people, "oa-a") as c:
        token = csrf_of(c.get("/console/registry").text)
        r = c.post(
            f"/console/registry/organizations/{A}/apps",
            data={"code": "app-c3", "csrf_token": token},
        )
        assert r.status_code == 303
        assert any(a.code == "app-c3" for a in hub.registry.list_apps(A))
        r = c.post(
            f"/console/registry/organizations/{B}/apps",
            data={"code": "app-c3", "csrf_token": token},
        )
        assert r.status_code == 403
        assert not any(a.code == "app-c3" for a in hub.registry.list_apps(B))
        bad = c.post(
            f"/console/registry/organizations/{A}/apps",
            data={"code": "no spaces", "csrf_token": token},
        )
        assert bad.status_code == 422


def test_enrollment_token_is_shown_once_and_certificates_warn_before_expiry(
    hub: Hub, people: dict[str, str | None]
) -> None:
    with as_(hub, people, "so-a") as c:
        page = c.get("/console/registry")
        token = csrf_of(page.text)
        assert (
            c.post(
                f"/console/registry/organizations/{B}/enrollment-tokens", data={"csrf_token": token}
            ).status_code
            == 403
        )
        r = c.post(
            f"/console/registry/organizations/{A}/enrollment-tokens", data={"csrf_token": token}
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        (secret,) = re.findall(r"qet_[A-Za-z0-9_-]+", r.text)
        assert secret not in c.get("/console/registry").text  # once
    # The token enrolls a node; its certificate, moved close to its end, turns amber, then red.
    key = pki.generate_private_key()
    csr = pki.csr_to_pem(pki.create_csr(key, "c3-node", A)).decode()
    hub.registry.enroll(secret, csr, "c3-node", "https://127.0.0.1:9443")
    now = datetime.now(UTC)
    for days, css, words in ((10, "cert-expiring", "天后过期"), (-1, "cert-expired", "已过期")):
        with hub.registry._sessions.begin() as s:
            s.execute(
                update(Certificate)
                .where(
                    Certificate.node_id.in_(
                        [n.id for n, _ in hub.registry.list_nodes() if n.name == "c3-node"]
                    )
                )
                .values(not_after=now + timedelta(days=days))
            )
        with as_(hub, people, "so-a") as c:
            text = checked(c.get("/console/registry"))
            assert "c3-node" in text and css in text
            dash = c.get("/console/")
            assert "c3-node" in dash.text and words in dash.text  # the dashboard's alerts
    with as_(hub, people, "oa-b") as c:  # another organization's nodes are not listed
        assert "c3-node" not in c.get("/console/registry").text


def test_users_and_roles_within_what_the_service_allows(
    hub: Hub, people: dict[str, str | None]
) -> None:
    with as_(hub, people, "oa-a") as c:
        page = c.get("/console/registry/users")
        text = checked(page)
        assert "dv-a" in text and "oa-b" not in text  # one's own organization's users
        token = csrf_of(text)
        r = c.post(
            "/console/registry/users",
            data={"username": "new-c3", "name": XSS, "roles": "app-developer", "csrf_token": token},
        )
        assert r.status_code == 200 and "new-c3" in r.text
        assert re.search(r'<code class="secret">[^<]{12,}</code>', r.text)  # the password, once
        assert XSS not in r.text
        # Nobody grants a role they do not hold: the service says no, the page shows why.
        r = c.post(
            "/console/registry/users",
            data={"username": "new-c3b", "roles": "security-officer", "csrf_token": token},
        )
        assert r.status_code == 403 and "security-officer" in r.text
        assert (
            c.post("/console/registry/users/dv-a/disable", data={"csrf_token": token}).status_code
            == 303
        )
        assert hub.identity.get_user(CLI, "dv-a").disabled
        assert (
            c.post("/console/registry/users/dv-a/enable", data={"csrf_token": token}).status_code
            == 303
        )
        assert not hub.identity.get_user(CLI, "dv-a").disabled
        r = c.post(
            "/console/registry/users/new-c3/roles",
            data={"roles": ["app-developer", "data-steward"], "csrf_token": token},
        )
        assert r.status_code == 303
        assert hub.identity.get_user(CLI, "new-c3").roles == {Role.APP_DEVELOPER, Role.DATA_STEWARD}
        # Another organization's user: refused by the service.
        assert (
            c.post("/console/registry/users/oa-b/disable", data={"csrf_token": token}).status_code
            == 403
        )
        assert c.post("/console/registry/users/dv-a/disable", data={}).status_code == 403  # CSRF
    assert not hub.identity.get_user(CLI, "oa-b").disabled
    with as_(hub, people, "au-a") as c:  # reads, changes nothing
        text = c.get("/console/registry/users").text
        assert "dv-a" in text and "/disable" not in text
    with as_(hub, people, "dv-a") as c:
        assert c.get("/console/registry/users").status_code == 403
        assert c.get("/console/registry").status_code == 403


def test_emergency_panel_takes_two_administrators(hub: Hub, people: dict[str, str | None]) -> None:
    hub.registry.add_resource(A, "c3-emergency")
    with as_(hub, people, "pa-1") as c:
        page = c.get("/console/registry/emergencies")
        token = csrf_of(checked(page))
        form = {"reason": XSS, "resources": f"{A}/c3-emergency", "hours": "2", "csrf_token": token}
        assert (
            c.post("/console/registry/emergencies", data={**form, "reason": " "}).status_code == 422
        )
        assert c.post("/console/registry/emergencies", data=form).status_code == 303
        (e,) = [e for e in hub.app.state.emergencies.list(CLI) if e.reason == XSS]
        text = c.get("/console/registry/emergencies").text
        assert XSS not in text and "&lt;img" in text
        assert f"/console/registry/emergencies/{e.id}/confirm" not in text  # not one's own
        r = c.post(f"/console/registry/emergencies/{e.id}/confirm", data={"csrf_token": token})
        assert r.status_code == 403  # the service: a second administrator confirms
    with as_(hub, people, "pa-2") as c:
        token = csrf_of(c.get("/console/registry/emergencies").text)
        assert (
            c.post(
                f"/console/registry/emergencies/{e.id}/confirm", data={"csrf_token": token}
            ).status_code
            == 303
        )
        assert hub.app.state.emergencies.get(CLI, e.id).status.value == "active"
        r = c.post(
            f"/console/registry/emergencies/{e.id}/end",
            data={"reason": "水退了", "csrf_token": token},
        )
        assert r.status_code == 303
        assert hub.app.state.emergencies.get(CLI, e.id).status.value == "ended"
    with as_(hub, people, "so-a") as c:  # reads the panel, has no forms
        text = c.get("/console/registry/emergencies").text
        assert e.id in text and "/confirm" not in text and "Declare" not in text
        token = csrf_of(text)
        assert (
            c.post("/console/registry/emergencies", data={**form, "csrf_token": token}).status_code
            == 403
        )


def test_every_new_form_needs_the_csrf_token(hub: Hub, people: dict[str, str | None]) -> None:
    """Each form of the audit and registry pages, posted by the platform administrator (who
    passes every role check) without its token or with another's, is refused before anything
    else happens."""
    from tests.console.test_audit import _routes

    forms = sorted(
        path
        for method, path in _routes(hub.app.routes)
        if method == "POST" and path.startswith(("/console/audit", "/console/registry"))
    )
    assert len(forms) == 11, forms
    values = {"org": A, "username": "dv-a", "emergency_id": "em-aaaaaaaaaaaa"}
    users = len(hub.identity.list_users(CLI))
    with as_(hub, people, "pa-1") as c:
        for path in forms:
            url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
            for token in (None, "forged-token"):
                data = {"code": "x", "username": "csrf-c3", "roles": "data-steward"}
                if token:
                    data["csrf_token"] = token
                r = c.post(url, data=data)
                assert r.status_code == 403 and "表单已失效" in r.text, f"{path}: {r.status_code}"
    assert len(hub.identity.list_users(CLI)) == users
    assert not hub.identity.get_user(CLI, "dv-a").disabled


def test_users_and_organizations_come_in_pages(hub: Hub, people: dict[str, str | None]) -> None:
    for i in range(25):
        hub.identity.add_user(
            CLI, f"pg-{i:02d}", org=B, roles=frozenset({Role.DATA_STEWARD}), password=PASSWORD
        )
    with as_(hub, people, "oa-b") as c:
        first = c.get("/console/registry/users").text
        second = c.get("/console/registry/users?page=2").text
    names = re.compile(r"<td>(pg-\d\d)</td>")
    shown = names.findall(first) + names.findall(second)
    assert len(names.findall(first)) < 25 and sorted(shown) == [f"pg-{i:02d}" for i in range(25)]
    assert 'rel="next"' in first and 'rel="prev"' in second
    with as_(hub, people, "pa-1") as c:
        assert c.get("/console/registry?page=9").status_code == 200  # past the end: the last


def test_new_pages_label_every_control(hub: Hub, people: dict[str, str | None]) -> None:
    from tests.console.test_audit import record

    idx, _ = record(hub, A)
    with as_(hub, people, "pa-1") as c:
        for path in (
            "/console/",
            "/console/audit",
            f"/console/audit/exchanges/{idx}",
            "/console/audit/emergencies",
            "/console/registry",
            "/console/registry/users",
            "/console/registry/emergencies",
        ):
            r = c.get(path)
            assert r.status_code == 200, path
            page = Page.parse(checked(r))
            assert len(page.all("h1")) == 1, path
            labelled = {e.attrs["for"] for e in page.all("label") if "for" in e.attrs}
            for control in page.all("input") + page.all("select") + page.all("textarea"):
                if control.attrs.get("type") == "hidden":
                    continue
                assert control.attrs.get("id") in labelled or control.attrs.get("aria-label"), (
                    f"{path}: {control.tag} {control.attrs} has no label"
                )
