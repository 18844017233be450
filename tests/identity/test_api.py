"""Sign-in, sessions, MFA enrollment and users over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient

from qiao.identity.roles import Role
from qiao.problems import PROBLEM_CONTENT_TYPE

from .support import BASE, PASSWORD, A, B, Hub, make_hub


@pytest.fixture
def hub(tmp_path: Path, db_url: str) -> Hub:
    return make_hub(tmp_path, db_url)


def _problem(r, status: int, kind: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body = r.json()
    assert body["type"] == f"urn:qiao:problem:hub:{kind}"
    return body  # type: ignore[no-any-return]


def test_sign_in_sets_a_hardened_cookie_and_returns_the_csrf_token(hub: Hub) -> None:
    hub.user("steward", Role.DATA_STEWARD)
    c = hub.client()
    r = c.post("/api/v1/session", json={"username": "steward", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == "steward" and body["mfa_required"] is False
    assert body["csrf_token"] and r.headers["cache-control"] == "no-store"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("qiao_session=qss_")
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
        assert attribute in cookie
    me = c.get("/api/v1/session").json()
    assert me["subject"] == "user:steward" and me["roles"] == ["data-steward"]
    assert me["csrf_token"] == body["csrf_token"] and me["session"]["current"]


def test_cookie_attributes_follow_the_settings(tmp_path: Path, db_url: str) -> None:
    hub = make_hub(tmp_path, db_url, session_cookie_secure=False, session_cookie_samesite="strict")
    hub.user("steward", Role.DATA_STEWARD)
    r = hub.client().post("/api/v1/session", json={"username": "steward", "password": PASSWORD})
    assert "Secure" not in r.headers["set-cookie"]
    assert "SameSite=strict" in r.headers["set-cookie"]


def test_wrong_password_mfa_required_and_lockout_answers(hub: Hub) -> None:
    secret = hub.user("approver", Role.APPROVER)
    assert secret
    c = hub.client()
    wrong = c.post("/api/v1/session", json={"username": "approver", "password": "nope"})
    body = _problem(wrong, 401, "sign-in-failed")
    assert "retry-after" not in wrong.headers and "set-cookie" not in wrong.headers
    unknown = c.post("/api/v1/session", json={"username": "nobody", "password": "nope"})
    assert _problem(unknown, 401, "sign-in-failed")["detail"] == body["detail"]
    need = c.post("/api/v1/session", json={"username": "approver", "password": PASSWORD})
    _problem(need, 401, "mfa-required")
    assert "set-cookie" not in need.headers
    bad = c.post(
        "/api/v1/session", json={"username": "approver", "password": PASSWORD, "otp": "12345x"}
    )
    _problem(bad, 401, "sign-in-failed")
    for _ in range(3):
        r = c.post("/api/v1/session", json={"username": "approver", "password": "nope"})
    locked = _problem(r, 401, "sign-in-failed")
    assert locked["detail"] == body["detail"] and int(r.headers["retry-after"]) > 0
    # Even the right password and code get the same answer while locked.
    hub.clock.advance(30)
    r = c.post(
        "/api/v1/session",
        json={"username": "approver", "password": PASSWORD, "otp": hub.code(secret)},
    )
    _problem(r, 401, "sign-in-failed")
    assert r.headers["retry-after"]
    hub.clock.advance(3600)
    hub.sign_in(c, "approver", secret)
    # Oversized and malformed bodies are validation problems, not sign-in attempts.
    _problem(c.post("/api/v1/session", json={"username": "x" * 65, "password": "p"}), 422,
             "validation")  # fmt: skip
    _problem(c.post("/api/v1/session", json={"username": "a", "password": "p" * 257}), 422,
             "validation")  # fmt: skip
    _problem(c.post("/api/v1/session", content=b"{not json"), 422, "validation")


def test_csrf_needs_the_token_and_the_origin(hub: Hub) -> None:
    hub.user("dev", Role.APP_DEVELOPER)
    c = hub.client()
    csrf = hub.sign_in(c, "dev")["csrf_token"]
    # Safe methods need no token.
    assert c.get("/api/v1/sessions").status_code == 200
    # Unsafe ones do.
    _problem(c.post("/api/v1/me/mfa/totp"), 403, "csrf-refused")
    _problem(c.post("/api/v1/me/mfa/totp", headers={"X-CSRF-Token": "forged"}), 403,
             "csrf-refused")  # fmt: skip
    evil = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    _problem(c.post("/api/v1/me/mfa/totp", headers=evil), 403, "csrf-refused")
    evil_ref = {"X-CSRF-Token": csrf, "Referer": "https://evil.example/page"}
    _problem(c.post("/api/v1/me/mfa/totp", headers=evil_ref), 403, "csrf-refused")
    ok = c.post("/api/v1/me/mfa/totp", headers={"X-CSRF-Token": csrf, "Origin": BASE})
    assert ok.status_code == 200, ok.text
    # Login CSRF: a sign-in posted from another site is refused too.
    r = c.post(
        "/api/v1/session",
        json={"username": "dev", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    _problem(r, 403, "csrf-refused")


def test_bearer_callers_are_not_judged_by_cookies(hub: Hub) -> None:
    hub.user("dev", Role.APP_DEVELOPER)
    c = hub.client()
    hub.sign_in(c, "dev")
    token = hub.registry.create_operator_token("ops")
    r = c.get("/api/v1/session", headers={"Authorization": f"Bearer {token}"})
    assert r.json()["subject"] == "operator:ops"
    # No CSRF token needed with a bearer token: it is not sent by browsers on their own.
    r = c.post(
        "/api/v1/users",
        json={"username": "new-dev", "org": A, "roles": ["app-developer"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201 and r.json()["initial_password"]


def test_stolen_cookie_from_another_address_and_expired_sessions(hub: Hub) -> None:
    hub.user("dev", Role.APP_DEVELOPER)
    c = hub.client("203.0.113.7")
    hub.sign_in(c, "dev")
    cookie = c.cookies["qiao_session"]
    thief = hub.client("198.51.100.66")
    thief.cookies.set("qiao_session", cookie, domain="hub.example.gov.cn")
    _problem(thief.get("/api/v1/session"), 401, "session-expired")
    assert c.get("/api/v1/session").status_code == 200
    hub.clock.advance(hub.settings.session_idle_seconds + 1)
    _problem(c.get("/api/v1/session"), 401, "session-expired")
    _problem(hub.client().get("/api/v1/session"), 401, "unauthorized")


def test_enrollment_sign_out_and_sign_out_everywhere(hub: Hub) -> None:
    hub.user("admin", Role.ORG_ADMIN, totp=False)
    c = hub.client()
    first = hub.sign_in(c, "admin")
    assert first["mfa_required"] is True
    h = {"X-CSRF-Token": first["csrf_token"]}
    # Without TOTP the administrator can only enroll.
    _problem(c.get("/api/v1/users"), 403, "forbidden")
    e = c.post("/api/v1/me/mfa/totp", headers=h).json()
    assert e["otpauth_uri"].startswith("otpauth://totp/") and e["qr_code"].startswith("data:")
    totp = pyotp.parse_uri(e["otpauth_uri"])
    _problem(c.post("/api/v1/me/mfa/totp/confirm", json={"code": "000000"}, headers=h), 401,
             "sign-in-failed")  # fmt: skip
    r = c.post("/api/v1/me/mfa/totp/confirm", json={"code": totp.at(hub.clock())}, headers=h)
    assert r.status_code == 200 and len(r.json()["recovery_codes"]) == 10
    assert c.get("/api/v1/users").status_code == 200  # this session has the second factor now
    codes = c.post("/api/v1/me/mfa/recovery-codes", headers=h).json()["recovery_codes"]
    # A second browser signs in with a recovery code.
    other = hub.client("203.0.113.8")
    r = other.post(
        "/api/v1/session",
        json={"username": "admin", "password": PASSWORD, "recovery_code": codes[0]},
    )
    assert r.status_code == 200
    sessions = c.get("/api/v1/sessions").json()["sessions"]
    assert len(sessions) == 2 and sum(s["current"] for s in sessions) == 1
    # Sign out this one; the other lives on until "everywhere".
    assert c.delete("/api/v1/session", headers=h).status_code == 204
    assert c.get("/api/v1/session").status_code == 401
    oh = {"X-CSRF-Token": r.json()["csrf_token"]}
    assert other.get("/api/v1/session").status_code == 200
    third = hub.client("203.0.113.7")
    hub.sign_in(third, "admin", totp.secret)
    assert other.post("/api/v1/session/revoke-all", headers=oh).json() == {"ended": 2}
    assert other.get("/api/v1/session").status_code == 401
    assert third.get("/api/v1/session").status_code == 401


def test_users_endpoints_scoped_by_organization(hub: Hub) -> None:
    secret = hub.user("a-admin", Role.ORG_ADMIN)
    hub.user("b-dev", Role.APP_DEVELOPER, org=B)
    c = hub.client()
    csrf = hub.sign_in(c, "a-admin", secret)["csrf_token"]
    h = {"X-CSRF-Token": csrf}
    r = c.post(
        "/api/v1/users", json={"username": "a-admin2", "org": A, "roles": ["org-admin"]}, headers=h
    )
    assert r.status_code == 201 and r.json()["initial_password"]
    _problem(
        c.post("/api/v1/users", json={"username": "a-aud", "org": A, "roles": ["auditor"]},
               headers=h), 403, "forbidden",
    )  # fmt: skip
    _problem(
        c.post("/api/v1/users", json={"username": "b-x", "org": B, "roles": ["org-admin"]},
               headers=h), 403, "forbidden",
    )  # fmt: skip
    _problem(
        c.post("/api/v1/users", json={"username": "a-x", "org": A, "roles": ["king"]}, headers=h),
        422, "validation",
    )  # fmt: skip
    assert {u["username"] for u in c.get("/api/v1/users").json()} == {"a-admin", "a-admin2"}
    _problem(c.get(f"/api/v1/users?org={B}"), 403, "forbidden")
    _problem(c.get("/api/v1/users/b-dev"), 403, "forbidden")
    _problem(c.post("/api/v1/users/b-dev/disable", headers=h), 403, "forbidden")
    _problem(c.get("/api/v1/users/nobody"), 404, "not-found")
    assert c.post("/api/v1/users/a-admin2/disable", headers=h).json()["disabled"] is True
    assert c.post("/api/v1/users/a-admin2/enable", headers=h).json()["disabled"] is False
    r = c.put("/api/v1/users/a-admin2/roles", json={"roles": []}, headers=h)
    assert r.json()["roles"] == []
    _problem(c.put("/api/v1/users/a-admin2/roles", json={"roles": ["auditor"]}, headers=h), 403,
             "forbidden")  # fmt: skip
    # MFA reset over the API: two different administrators.
    hub.user("approver", Role.APPROVER)
    second = hub.user("a-admin3", Role.ORG_ADMIN)
    r = c.post("/api/v1/users/approver/mfa-reset", headers=h)
    assert r.status_code == 202 and r.json() == {"status": "pending"}
    assert c.post("/api/v1/users/approver/mfa-reset", headers=h).status_code == 202
    c2 = hub.client("203.0.113.9")
    h2 = {"X-CSRF-Token": hub.sign_in(c2, "a-admin3", second)["csrf_token"]}
    r = c2.post("/api/v1/users/approver/mfa-reset", headers=h2)
    assert r.status_code == 200 and r.json() == {"status": "reset"}
    # Password change: every other session of the user ends, the one it was made in stays.
    elsewhere = hub.client("203.0.113.50")
    hub.sign_in(elsewhere, "a-admin", secret)
    assert elsewhere.get("/api/v1/session").status_code == 200
    r = c.put(
        "/api/v1/me/password", json={"current": PASSWORD, "new": "Brand-new-pass-99"}, headers=h
    )
    assert r.status_code == 204
    assert elsewhere.get("/api/v1/session").status_code == 401
    assert c.get("/api/v1/session").status_code == 200
    _problem(c.put("/api/v1/me/password", json={"current": "Brand-new-pass-99", "new": "weak"},
                   headers=h), 422, "weak-password")  # fmt: skip


def test_the_identity_api_is_documented(hub: Hub) -> None:
    spec = TestClient(hub.app).get("/openapi.json").json()
    for path in (
        "/api/v1/session",
        "/api/v1/session/revoke-all",
        "/api/v1/sessions",
        "/api/v1/me/mfa/totp",
        "/api/v1/me/mfa/totp/confirm",
        "/api/v1/me/mfa/recovery-codes",
        "/api/v1/users",
        "/api/v1/users/{username}/roles",
        "/api/v1/users/{username}/mfa-reset",
    ):
        assert path in spec["paths"], path
    assert "otp" in spec["components"]["schemas"]["SignInBody"]["properties"]
