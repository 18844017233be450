"""The console's defences, each checked from the outside: anonymous callers go to sign-in,
forms refuse a missing or wrong CSRF token and a foreign origin, every response carries the
security headers, no page has an inline script or style, stored text renders as text, and
an expired session sends the browser to sign in again."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from qiao.console.security import CONTENT_SECURITY_POLICY
from qiao.identity import sessions
from qiao.identity.roles import CLI, Role
from tests.catalog.conftest import spec
from tests.console.conftest import BASE, A, Hub, csrf_of, new_client, sign_in
from tests.console.pages import Page

PAGES = [
    "/console/",
    "/console/catalog",
    "/console/catalog?q=%E8%BF%9D%E6%B3%95&sharing_type=conditional&page=1",
    f"/console/catalog/{A}/traffic-violations",
    f"/console/catalog/{A}/traffic-violations/apply",
    "/console/requests",
    "/console/requests?box=mine&status=all",
    "/console/agreements",
    "/console/agreements?state=active&side=provider",
    "/console/mfa",
]


def assert_headers(r: object, *, cache: str = "no-store") -> None:
    h = r.headers  # type: ignore[attr-defined]
    assert h["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "same-origin"
    assert h["x-frame-options"] == "DENY"
    assert h["cache-control"] == cache


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_anonymous_callers_to_sign_in(hub: Hub, client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 303
    where = urlsplit(r.headers["location"])
    assert where.path == "/console/sign-in"
    assert parse_qs(where.query)["next"] == [path]
    assert_headers(r)


def test_a_bearer_token_is_no_way_into_the_console(hub: Hub, client: TestClient) -> None:
    token = hub.registry.create_operator_token("platform")
    r = client.get("/console/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")


def test_every_page_has_the_headers_and_no_inline_code(hub: Hub, client: TestClient) -> None:
    seen = {}
    anonymous = client.get("/console/sign-in")
    seen["sign-in"] = anonymous
    sign_in(hub, client, "steward")
    for path in PAGES:
        seen[path] = client.get(path)
    seen["not found"] = client.get(f"/console/catalog/{A}/no-such-resource")
    seen["root"] = client.get("/")
    for name, r in seen.items():
        assert r.status_code in (200, 303, 404), name
        assert_headers(r)
        if r.status_code != 303:
            assert r.headers["content-type"].startswith("text/html"), name
            page = Page.parse(r.text)
            assert not page.inline, f"{name}: {page.inline}"
            scripts = [e.attrs["src"] for e in page.all("script")]
            assert all(s.startswith("/console/static/") for s in scripts), name
            sheets = [
                e.attrs["href"] for e in page.all("link") if e.attrs.get("rel") == "stylesheet"
            ]
            assert sheets and all(s.startswith("/console/static/") for s in sheets), name
    assert seen["root"].headers["location"] == "/console/"
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert_headers(css, cache="public, max-age=86400")


def test_forms_refuse_a_missing_or_wrong_csrf_token(hub: Hub, client: TestClient) -> None:
    page = client.get("/console/sign-in")
    good = csrf_of(page.text)
    form = {"username": "steward", "password": "whatever-it-is"}
    for token in (None, "", good[:-2] + "xx"):
        data = dict(form) if token is None else {**form, "csrf_token": token}
        r = client.post("/console/sign-in", data=data)
        assert r.status_code == 403 and "表单已失效" in r.text
        assert_headers(r)
    # The pre-session token belongs to this browser's cookie: another browser's is refused.
    with new_client(hub) as other:
        other.get("/console/sign-in")
        r = other.post("/console/sign-in", data={**form, "csrf_token": good})
        assert r.status_code == 403
    # A page of another site posting with the right token is refused on its Origin.
    r = client.post(
        "/console/sign-in",
        data={**form, "csrf_token": good},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    r = client.post("/console/sign-in", data={**form, "csrf_token": good}, headers={"Origin": BASE})
    assert r.status_code == 401  # through to the password check, which says no


def test_signed_in_forms_need_the_sessions_token(hub: Hub, client: TestClient) -> None:
    sign_in(hub, client, "steward")
    token = client.cookies[sessions.COOKIE]
    home = client.get("/console/")
    assert csrf_of(home.text) == sessions.csrf_token(token)
    for bad in ({}, {"csrf_token": "not-the-token"}):
        r = client.post("/console/sign-out", data=bad)
        assert r.status_code == 403
    assert client.get("/console/").status_code == 200  # still signed in
    r = client.post(
        "/console/sign-out", data={}, headers={sessions.CSRF_HEADER: sessions.csrf_token(token)}
    )
    assert r.status_code == 303  # the header the JSON API uses is accepted too (htmx)
    assert client.get("/console/").status_code == 303


def test_stored_markup_renders_as_text(hub: Hub, client: TestClient) -> None:
    name = '<script>alert("name")</script>'
    abstract = '<img src=x onerror=alert(1)>"><b>抄送</b>'
    hub.app.state.catalog.publish(
        CLI,
        spec(code="xss-probe", name=name, abstract=abstract, keywords=["探针"]),
    )
    sign_in(hub, client, "steward")
    listing = client.get("/console/catalog", params={"q": "探针"})
    detail = client.get(f"/console/catalog/{A}/xss-probe")
    for r in (listing, detail):
        assert r.status_code == 200
        assert name not in r.text and "<img src=x" not in r.text
        assert not Page.parse(r.text).inline
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in listing.text
    assert "&lt;img src=x onerror=alert(1)&gt;&#34;&gt;&lt;b&gt;抄送&lt;/b&gt;" in detail.text
    # What the person typed comes back escaped in the search box too.
    typed = client.get("/console/catalog", params={"q": '"><script>x</script>'})
    assert "<script>x</script>" not in typed.text
    assert 'value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"' in typed.text


def test_an_expired_session_goes_back_to_sign_in_with_next(hub: Hub) -> None:
    hub.user("dozer", Role.DATA_STEWARD)
    with new_client(hub) as client:
        sign_in(hub, client, "dozer")
        assert client.get("/console/catalog").status_code == 200
        hub.clock.advance(hub.settings.session_idle_seconds + 1)
        r = client.get("/console/catalog?q=abc")
        assert r.status_code == 303
        where = urlsplit(r.headers["location"])
        assert where.path == "/console/sign-in"
        assert parse_qs(where.query)["next"] == ["/console/catalog?q=abc"]
        # The dead cookie is cleared, and the sign-in page does not bounce back.
        assert sessions.COOKIE not in client.cookies
        page = client.get(r.headers["location"])
        assert page.status_code == 200 and 'name="password"' in page.text


def test_roles_withheld_until_enrollment_are_not_shown(hub: Hub, client: TestClient) -> None:
    # An approver's session without TOTP holds no role at all: every page but enrollment
    # (and sign-out) is closed to it, as the JSON API withholds the roles.
    hub.user("half-approver", Role.APPROVER, totp=False)
    sign_in(hub, client, "half-approver")
    for path in PAGES[:-1]:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/mfa", path
