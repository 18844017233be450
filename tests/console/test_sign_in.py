"""Signing in to the console: password, TOTP or a recovery code, first-time enrollment,
the messages people see, lockout, sign-out and the way back to the page they asked for."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pyotp
from fastapi.testclient import TestClient

from qiao.console.security import PENDING_COOKIE
from qiao.identity import sessions
from qiao.identity.roles import Role
from tests.console.conftest import PASSWORD, Hub, csrf_of, new_client, sign_in

ALERT = re.compile(r'<div class="alert" role="alert">\s*(.*?)\s*</div>', re.S)


def alert(html: str) -> str:
    m = ALERT.search(html)
    assert m, "the page shows no message"
    return m.group(1)


def post_sign_in(client: TestClient, username: str, password: str) -> object:
    page = client.get("/console/sign-in")
    return client.post(
        "/console/sign-in",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
    )


def test_password_then_totp_signs_in(hub: Hub, client: TestClient) -> None:
    secret = hub.user("duty-approver", Role.APPROVER, totp=True)
    assert secret
    page = client.get("/console/sign-in")
    r = client.post(
        "/console/sign-in",
        data={"username": "duty-approver", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    # The password alone opens nothing: the code step comes next, and no session yet.
    assert r.status_code == 303
    assert urlsplit(r.headers["location"]).path == "/console/sign-in/code"
    assert sessions.COOKIE not in client.cookies
    assert client.get("/console/").status_code == 303
    code_page = client.get(r.headers["location"])
    assert code_page.status_code == 200 and 'name="code"' in code_page.text
    # The password is not on the page; it stays sealed in a cookie for the sign-in path only.
    assert PASSWORD not in code_page.text
    assert PASSWORD not in client.cookies.get(PENDING_COOKIE, "")
    hub.clock.advance(30)
    r = client.post(
        "/console/sign-in/code",
        data={"code": hub.code(secret), "csrf_token": csrf_of(code_page.text), "next": "/console/"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    home = client.get("/console/")
    assert home.status_code == 200
    assert "duty-approver" in home.text and "甲局" in home.text


def test_a_wrong_code_is_refused_and_the_code_step_stays(hub: Hub, client: TestClient) -> None:
    secret = hub.user("careful-approver", Role.APPROVER, totp=True)
    assert secret
    r = post_sign_in(client, "careful-approver", PASSWORD)
    page = client.get(r.headers["location"])  # type: ignore[attr-defined]
    hub.clock.advance(30)
    wrong = f"{(int(hub.code(secret)) + 1) % 1_000_000:06d}"
    r = client.post("/console/sign-in/code", data={"code": wrong, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401  # type: ignore[attr-defined]
    assert "验证码不正确" in alert(r.text)  # type: ignore[attr-defined]
    assert sessions.COOKIE not in client.cookies
    r = client.post(
        "/console/sign-in/code",
        data={"code": hub.code(secret), "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert client.get("/console/").status_code == 200


def test_the_code_step_without_a_password_step_starts_again(hub: Hub, client: TestClient) -> None:
    page = client.get("/console/sign-in")
    for cookie in (None, "gAAAAA-forged"):
        if cookie:
            client.cookies.set(PENDING_COOKIE, cookie, path="/console/sign-in")
        r = client.post(
            "/console/sign-in/code", data={"code": "123456", "csrf_token": csrf_of(page.text)}
        )
        assert r.status_code == 400
        assert "登录超时" in alert(r.text)


def test_unknown_user_and_wrong_password_read_the_same(hub: Hub) -> None:
    with new_client(hub) as one, new_client(hub) as two:
        unknown = post_sign_in(one, "nobody-here", PASSWORD)
        wrong = post_sign_in(two, "steward", "Not-the-password-1")
    assert unknown.status_code == wrong.status_code == 401  # type: ignore[attr-defined]
    assert alert(unknown.text) == alert(wrong.text) == "登录名或密码不正确。"  # type: ignore[attr-defined]
    # The name typed stays in the form; the password does not.
    assert 'value="nobody-here"' in unknown.text  # type: ignore[attr-defined]
    assert "Not-the-password-1" not in wrong.text  # type: ignore[attr-defined]


def test_lockout_is_shown_and_holds_even_for_the_right_password(
    hub: Hub, client: TestClient
) -> None:
    hub.user("forgetful", Role.DATA_STEWARD)
    for _ in range(hub.settings.sign_in_max_failures - 1):
        r = post_sign_in(client, "forgetful", "Wrong-password-9")
        assert "不正确" in alert(r.text)  # type: ignore[attr-defined]
    r = post_sign_in(client, "forgetful", "Wrong-password-9")
    assert "尝试次数过多" in alert(r.text)  # type: ignore[attr-defined]
    assert "1 分钟后重试" in alert(r.text)  # type: ignore[attr-defined]
    r = post_sign_in(client, "forgetful", PASSWORD)
    assert r.status_code == 401  # type: ignore[attr-defined]
    assert "尝试次数过多" in alert(r.text)  # type: ignore[attr-defined]
    assert sessions.COOKIE not in client.cookies
    # A name that does not exist locks out just the same (nothing tells them apart).
    with new_client(hub) as other:
        for _ in range(hub.settings.sign_in_max_failures):
            r = post_sign_in(other, "no-such-person", "Wrong-password-9")
        assert "尝试次数过多" in alert(r.text)  # type: ignore[attr-defined]


def test_first_sign_in_enrolls_totp_and_shows_recovery_codes_once(hub: Hub) -> None:
    hub.user("new-approver", Role.APPROVER, totp=False)
    with new_client(hub) as client:
        r = sign_in(hub, client, "new-approver")
        assert r.status_code == 303 and r.headers["location"] == "/console/mfa"
        # Every other page waits for the enrollment.
        r = client.get("/console/catalog")
        assert r.status_code == 303 and r.headers["location"] == "/console/mfa"
        intro = client.get("/console/mfa")
        assert "您的角色要求开启两步验证" in intro.text
        assert 'class="main-nav"' not in intro.text  # nowhere else to go yet
        scan = client.post("/console/mfa/start", data={"csrf_token": csrf_of(intro.text)})
        assert scan.status_code == 200
        assert re.search(
            r'<img class="qr" src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]+"', scan.text
        )
        m = re.search(r'<code class="secret">([A-Z2-7]+)</code>', scan.text)
        assert m
        secret = m.group(1)
        bad = client.post(
            "/console/mfa/confirm", data={"code": "000000", "csrf_token": csrf_of(scan.text)}
        )
        assert bad.status_code == 400 and "验证码不正确" in alert(bad.text)
        hub.clock.advance(30)
        code = pyotp.TOTP(secret).at(hub.clock())
        before = client.cookies[sessions.COOKIE]
        done = client.post(
            "/console/mfa/confirm", data={"code": code, "csrf_token": csrf_of(scan.text)}
        )
        assert done.status_code == 200
        # A privilege change renews the session's token: the one held before is dead.
        after = client.cookies[sessions.COOKIE]
        assert after != before
        address = client._transport.client[0]  # type: ignore[attr-defined]
        assert hub.identity.principal_for_session(before, address) is None
        assert hub.identity.principal_for_session(after, address) is not None
        codes = re.findall(r"<li><code>([a-z2-7]{4}(?:-[a-z2-7]{4}){3})</code></li>", done.text)
        assert len(codes) == 10
        assert done.headers["cache-control"] == "no-store"
        # The session now has its second factor: the approver's pages open.
        assert client.get("/console/catalog").status_code == 200
        assert "两步验证" in client.get("/console/mfa").text
        sign_out = client.post("/console/sign-out", data={"csrf_token": csrf_of(done.text)})
        assert sign_out.status_code == 303
    # A recovery code signs in in place of the authenticator's code, once.
    with new_client(hub) as client:
        r = post_sign_in(client, "new-approver", PASSWORD)
        page = client.get(r.headers["location"])  # type: ignore[attr-defined]
        r = client.post(
            "/console/sign-in/code",
            data={"code": codes[0].upper(), "csrf_token": csrf_of(page.text)},
        )
        assert r.status_code == 303  # type: ignore[attr-defined]
        assert client.get("/console/").status_code == 200
    with new_client(hub) as client:
        r = post_sign_in(client, "new-approver", PASSWORD)
        page = client.get(r.headers["location"])  # type: ignore[attr-defined]
        r = client.post(
            "/console/sign-in/code", data={"code": codes[0], "csrf_token": csrf_of(page.text)}
        )
        assert r.status_code == 401  # type: ignore[attr-defined]


def test_sign_out_ends_the_session(hub: Hub, client: TestClient) -> None:
    sign_in(hub, client, "steward")
    token = client.cookies[sessions.COOKIE]
    home = client.get("/console/")
    r = client.post("/console/sign-out", data={"csrf_token": csrf_of(home.text)})
    assert r.status_code == 303
    assert urlsplit(r.headers["location"]).path == "/console/sign-in"
    assert "您已退出登录" in client.get(r.headers["location"]).text
    # The old cookie is worthless now, even sent again by hand.
    client.cookies.set(sessions.COOKIE, token)
    assert client.get("/console/").status_code == 303
    assert hub.identity.principal_for_session(token, "198.51.0.1") is None


def test_sign_in_returns_to_the_page_asked_for_and_nowhere_else(
    hub: Hub, client: TestClient
) -> None:
    r = client.get("/console/catalog?q=%E8%BF%9D%E6%B3%95")
    assert r.status_code == 303
    target = parse_qs(urlsplit(r.headers["location"]).query)["next"][0]
    assert target == "/console/catalog?q=%E8%BF%9D%E6%B3%95"
    page = client.get(r.headers["location"])
    assert f'name="next" value="{target}"' in page.text
    r = client.post(
        "/console/sign-in",
        data={
            "username": "steward",
            "password": PASSWORD,
            "next": target,
            "csrf_token": csrf_of(page.text),
        },
    )
    assert r.status_code == 303 and r.headers["location"] == target
    for evil in (
        "https://evil.example/",
        "//evil.example/console/",
        "/\\evil.example",
        "/api/v1/users",
    ):
        page = client.get("/console/sign-in", params={"next": evil})
        assert page.status_code == 303 and page.headers["location"] == "/console/"
