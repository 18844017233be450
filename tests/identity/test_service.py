"""The identity service on SQLite and PostgreSQL: who may manage whom, sign-in with a second
factor, throttling, sessions and their timeouts, MFA reset by two administrators, audit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from qiao.identity.passwords import PasswordHashing
from qiao.identity.roles import CLI, Principal, Role
from qiao.identity.service import SecondFactorNeeded, SignInRefused
from qiao.problems import Problem
from qiao.registry.models import AdminEvent

from .support import PASSWORD, A, B, Hub, make_hub


@pytest.fixture
def hub(tmp_path: Path, db_url: str) -> Hub:
    return make_hub(tmp_path, db_url)


def _events(hub: Hub) -> list[AdminEvent]:
    with hub.registry._sessions() as s:
        return list(s.scalars(select(AdminEvent).order_by(AdminEvent.id)))


def _who(username: str, role: Role, org: str | None = A) -> Principal:
    return Principal(
        f"user:{username}", frozenset({role}), org=org, kind="user", amr=("pwd", "otp")
    )


def _type(exc: pytest.ExceptionInfo[Problem]) -> str:
    return exc.value.kind.uri


def test_privilege_escalation_across_organizations_and_roles(hub: Hub) -> None:
    ident = hub.identity
    admin_a = _who("admin-a", Role.ORG_ADMIN)
    # An organization administrator manages its own organization's users ...
    ident.add_user(admin_a, "a-admin2", org=A, roles=frozenset({Role.ORG_ADMIN}), password=PASSWORD)
    # ... not another organization's,
    with pytest.raises(Problem) as e:
        ident.add_user(admin_a, "b-user", org=B, roles=frozenset({Role.ORG_ADMIN}))
    assert _type(e) == "urn:qiao:problem:hub:forbidden"
    # grants no role it does not hold (an auditor watches the administrators: 三员分立),
    with pytest.raises(Problem, match="auditor"):
        ident.add_user(admin_a, "a-auditor", org=A, roles=frozenset({Role.AUDITOR}))
    # and creates no platform administrator.
    with pytest.raises(Problem):
        ident.add_user(admin_a, "root2", org=None, roles=frozenset({Role.PLATFORM_ADMIN}))
    # A steward is not an administrator at all.
    with pytest.raises(Problem):
        ident.add_user(
            _who("s", Role.DATA_STEWARD), "a-s2", org=A, roles=frozenset({Role.DATA_STEWARD})
        )
    # The platform administrator grants any organization role; platform-admin is nobody's in
    # an organization, and a user without one must be a platform administrator.
    ident.add_user(CLI, "a-auditor", org=A, roles=frozenset({Role.AUDITOR}), password=PASSWORD)
    with pytest.raises(Problem, match="not an organization's role"):
        ident.add_user(CLI, "x1", org=A, roles=frozenset({Role.PLATFORM_ADMIN}))
    with pytest.raises(Problem, match="platform administrator"):
        ident.add_user(CLI, "x2", org=None, roles=frozenset({Role.AUDITOR}))
    # Role changes: adding a role one lacks is refused; removing is allowed; foreign orgs no.
    with pytest.raises(Problem, match="auditor"):
        ident.set_roles(admin_a, "a-admin2", frozenset({Role.ORG_ADMIN, Role.AUDITOR}))
    assert ident.set_roles(admin_a, "a-auditor", frozenset()).roles == frozenset()
    ident.add_user(CLI, "b-dev", org=B, roles=frozenset({Role.APP_DEVELOPER}), password=PASSWORD)
    for attempt in (
        lambda: ident.set_roles(admin_a, "b-dev", frozenset()),
        lambda: ident.set_disabled(admin_a, "b-dev", True),
        lambda: ident.request_mfa_reset(admin_a, "b-dev"),
        lambda: ident.list_users(admin_a, B),
        lambda: ident.get_user(admin_a, "b-dev"),
    ):
        with pytest.raises(Problem) as e:
            attempt()
        assert _type(e) == "urn:qiao:problem:hub:forbidden"
    assert {u.username for u in ident.list_users(admin_a)} == {"a-admin2", "a-auditor"}
    # Nobody disables themselves (and so locks the organization out by mistake).
    with pytest.raises(Problem):
        ident.set_disabled(_who("a-admin2", Role.ORG_ADMIN), "a-admin2", True)
    # Bad input: names, duplicates, unknown organizations, weak passwords.
    for name in ("A", "-x", "x" * 65, "名字", "a b"):
        with pytest.raises(Problem, match="sign-in name"):
            ident.add_user(CLI, name, org=A, roles=frozenset({Role.AUDITOR}))
    with pytest.raises(Problem) as e:
        ident.add_user(CLI, "a-admin2", org=A, roles=frozenset({Role.AUDITOR}), password=PASSWORD)
    assert _type(e) == "urn:qiao:problem:hub:conflict"
    with pytest.raises(Problem) as e:
        ident.add_user(CLI, "x3", org="91350100M000100Y44", roles=frozenset({Role.AUDITOR}))
    with pytest.raises(Problem) as e:
        ident.add_user(CLI, "x4", org=A, roles=frozenset({Role.AUDITOR}), password="x4-password1")
    assert _type(e) == "urn:qiao:problem:hub:weak-password"


def test_one_totp_code_signs_in_once_even_when_sign_ins_race(hub: Hub) -> None:
    """Eight sign-ins with the same valid code at the same moment: exactly one is accepted
    (RFC 6238 §5.2), on SQLite (no row locks) as on PostgreSQL."""
    import threading

    secret = hub.user("racer", Role.APPROVER)
    assert secret
    hub.clock.advance(30)
    code = hub.code(secret)
    start = threading.Barrier(8)
    results: list[str] = []

    def attempt() -> None:
        start.wait()
        try:
            hub.identity.sign_in("racer", PASSWORD, otp=code, client_address="10.0.0.9")
            results.append("in")
        except SignInRefused:
            results.append("refused")
        except Exception as exc:  # anything else is a defect the assertion below shows
            results.append(repr(exc))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["in"] + ["refused"] * 7


def test_parallel_guesses_never_exceed_the_allowance(hub: Hub) -> None:
    """Twenty wrong passwords at once: no more than sign_in_max_failures of them reach the
    password check (each attempt is counted before it is checked)."""
    import threading

    hub.user("target", Role.AUDITOR)
    checked: list[int] = []
    real_verify = hub.identity.hashing.verify

    def counting_verify(stored: str | None, password: str) -> bool:
        checked.append(1)
        return real_verify(stored, password)

    hub.identity.hashing.verify = counting_verify  # type: ignore[method-assign]
    start = threading.Barrier(20)
    refused: list[int | None] = []

    def guess(i: int) -> None:
        start.wait()
        try:
            hub.identity.sign_in("target", f"guess number {i}!", client_address=f"10.1.0.{i}")
        except SignInRefused as exc:
            refused.append(exc.retry_after)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(refused) == 20
    assert len(checked) <= hub.settings.sign_in_max_failures
    # And the right password afterwards is locked out too, until the wait is over.
    with pytest.raises(SignInRefused):
        hub.identity.sign_in("target", PASSWORD, client_address="10.1.0.99")


def test_sign_in_with_totp_and_recovery_codes(hub: Hub) -> None:
    ident = hub.identity
    secret = hub.user("approver", Role.APPROVER)
    assert secret
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", "wrong password!", client_address="10.0.0.1")
    with pytest.raises(SecondFactorNeeded):
        ident.sign_in("approver", PASSWORD, client_address="10.0.0.1")
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", PASSWORD, otp="000000", client_address="10.0.0.1")
    hub.clock.advance(30)
    code = hub.code(secret)
    ok = ident.sign_in("approver", PASSWORD, otp=code, client_address="10.0.0.1")
    assert ok.amr == ("pwd", "otp") and not ok.mfa_required
    who = ident.principal_for_session(ok.session_token, "10.0.0.1")
    assert who is not None and who.roles == {Role.APPROVER} and who.kind == "user"
    assert who.subject == "user:approver" and who.org == A and who.amr == ("pwd", "otp")
    # The same code again, within its 30 seconds: a replay, refused.
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", PASSWORD, otp=code, client_address="10.0.0.1")
    # Recovery codes: each works once.
    codes = ident.regenerate_recovery_codes("approver")
    assert len(codes) == 10
    r = ident.sign_in("approver", PASSWORD, recovery_code=codes[0].upper(), client_address="x")
    assert r.amr == ("pwd", "otp")
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", PASSWORD, recovery_code=codes[0], client_address="x")
    # Regenerating replaces the old ones.
    new = ident.regenerate_recovery_codes("approver")
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", PASSWORD, recovery_code=codes[1], client_address="x")
    ident.sign_in("approver", PASSWORD, recovery_code=new[1], client_address="x")
    actions = [e.action for e in _events(hub)]
    for action in ("session.sign-in", "session.sign-in-failed", "mfa.recovery-code.used"):
        assert action in actions


def test_privileged_roles_wait_for_the_second_factor(hub: Hub) -> None:
    ident = hub.identity
    hub.user("officer", Role.SECURITY_OFFICER, totp=False)
    s = ident.sign_in("officer", PASSWORD, client_address="a")
    assert s.mfa_required and s.amr == ("pwd",)
    who = ident.principal_for_session(s.session_token, "a")
    assert who is not None and who.roles == frozenset()  # only enrollment until then
    e = ident.start_totp("officer")
    codes = ident.confirm_totp("officer", hub.code(e.secret), s.session_token)
    assert len(codes) == 10
    who = ident.principal_for_session(s.session_token, "a")
    assert who is not None and who.roles == {Role.SECURITY_OFFICER}
    assert "otp" in who.amr
    with pytest.raises(Problem) as exc:
        ident.start_totp("officer")  # enrolled: only a two-administrator reset starts over
    assert exc.value.kind.uri == "urn:qiao:problem:hub:conflict"
    # Roles without the MFA duty keep working with a password alone.
    hub.user("steward", Role.DATA_STEWARD)
    t = ident.sign_in("steward", PASSWORD, client_address="a")
    assert not t.mfa_required
    who = ident.principal_for_session(t.session_token, "a")
    assert who is not None and who.roles == {Role.DATA_STEWARD}


def test_lockout_per_account_and_address_with_increasing_delay(hub: Hub) -> None:
    ident = hub.identity
    hub.user("steward", Role.DATA_STEWARD)
    for _ in range(4):
        with pytest.raises(SignInRefused) as e:
            ident.sign_in("steward", "not the password", client_address="10.0.0.1")
        assert e.value.retry_after is None
    with pytest.raises(SignInRefused) as e:
        ident.sign_in("steward", "not the password", client_address="10.0.0.2")
    assert e.value.retry_after == 60
    # Locked: even the right password gets the same refusal, with the wait.
    with pytest.raises(SignInRefused) as e:
        ident.sign_in("steward", PASSWORD, client_address="10.0.0.3")
    assert e.value.retry_after is not None and 0 < e.value.retry_after <= 61
    # An unknown name locks the same way, so a lockout tells nothing about existence.
    for _ in range(5):
        with pytest.raises(SignInRefused) as e:
            ident.sign_in("nobody", "not the password", client_address=f"10.1.0.{_}")
    assert e.value.retry_after == 60
    # The lock expires (injected clock, no sleeping) ...
    hub.clock.advance(61)
    # ... and the next failure doubles it.
    with pytest.raises(SignInRefused) as e:
        ident.sign_in("steward", "not the password", client_address="10.0.0.4")
    assert e.value.retry_after == 120
    hub.clock.advance(121)
    assert ident.sign_in("steward", PASSWORD, client_address="10.0.0.5").user.username == "steward"
    # Success clears the account's count.
    with pytest.raises(SignInRefused) as e:
        ident.sign_in("steward", "not the password", client_address="10.0.0.6")
    assert e.value.retry_after is None
    # One address guessing across many names is locked as an address.
    hub.user("dev", Role.APP_DEVELOPER)
    for i in range(5):
        with pytest.raises(SignInRefused):
            ident.sign_in(f"guess{i}", "not the password", client_address="198.51.100.9")
    with pytest.raises(SignInRefused) as e:
        ident.sign_in("dev", PASSWORD, client_address="198.51.100.9")
    assert e.value.retry_after
    assert ident.sign_in("dev", PASSWORD, client_address="198.51.100.10")
    # A quiet window forgets old failures.
    hub.clock.advance(16 * 60)
    for _ in range(4):
        with pytest.raises(SignInRefused) as e:
            ident.sign_in("dev", "not the password", client_address="10.2.0.1")
        assert e.value.retry_after is None
    assert "session.lockout" in [e.action for e in _events(hub)]


def test_session_timeouts_binding_and_sign_out(tmp_path: Path, db_url: str) -> None:
    hub = make_hub(tmp_path, db_url, session_idle_seconds=600, session_absolute_seconds=3600)
    ident = hub.identity
    hub.user("dev", Role.APP_DEVELOPER)
    uid = ident.user_id("dev")
    token, csrf = ident.create_session(uid, ("pwd",), "10.0.0.1")
    assert token.startswith("qss_") and csrf
    assert ident.principal_for_session(token, "10.0.0.1") is not None
    # A stolen cookie from another address is refused (and recorded).
    assert ident.principal_for_session(token, "192.0.2.66") is None
    assert "session.address-mismatch" in [e.action for e in _events(hub)]
    # Idle timeout: activity keeps the session alive, silence ends it.
    for _ in range(5):
        hub.clock.advance(500)
        assert ident.principal_for_session(token, "10.0.0.1") is not None
    hub.clock.advance(601)
    assert ident.principal_for_session(token, "10.0.0.1") is None
    # Absolute timeout, however active.
    t2, _ = ident.create_session(uid, ("pwd",), "10.0.0.1")
    for _ in range(7):
        hub.clock.advance(500)
        assert ident.principal_for_session(t2, "10.0.0.1") is not None
    hub.clock.advance(500)
    assert ident.principal_for_session(t2, "10.0.0.1") is None
    # Sign out, sign out everywhere, and disabling end sessions.
    t3, _ = ident.create_session(uid, ("pwd",), "10.0.0.1")
    t4, _ = ident.create_session(uid, ("pwd",), "10.0.0.2")
    assert len(ident.list_sessions("dev")) == 2
    ident.end_session(t3)
    assert ident.principal_for_session(t3, "10.0.0.1") is None
    assert ident.principal_for_session(t4, "10.0.0.2") is not None
    assert ident.end_all_sessions("dev") == 1
    assert ident.principal_for_session(t4, "10.0.0.2") is None
    t5, _ = ident.create_session(uid, ("pwd",), "10.0.0.1")
    ident.set_disabled(CLI, "dev", True)
    assert ident.principal_for_session(t5, "10.0.0.1") is None
    with pytest.raises(SignInRefused):
        ident.sign_in("dev", PASSWORD, client_address="10.0.0.1")
    ident.set_disabled(CLI, "dev", False)
    assert ident.sign_in("dev", PASSWORD, client_address="10.0.0.1")
    assert ident.principal_for_session("qss_forged", "10.0.0.1") is None
    assert ident.principal_for_session("garbage", "10.0.0.1") is None


def test_binding_can_be_turned_off(tmp_path: Path, db_url: str) -> None:
    hub = make_hub(tmp_path, db_url, session_bind_address=False)
    hub.user("dev", Role.APP_DEVELOPER)
    token, _ = hub.identity.create_session(hub.identity.user_id("dev"), ("pwd",), "10.0.0.1")
    assert hub.identity.principal_for_session(token, "10.9.9.9") is not None


def test_tokens_take_no_part_in_an_mfa_reset(hub: Hub) -> None:
    """docs/identity.md §3: two people, each signed in with their own second factor. Two
    platform operator tokens once reset a person's factor with no person involved."""
    hub.user("approver", Role.APPROVER)
    platform = frozenset({Role.PLATFORM_ADMIN})
    for label in ("automation-1", "automation-2"):
        with pytest.raises(Problem, match="not a token") as e:
            hub.identity.request_mfa_reset(
                Principal(f"operator:{label}", platform, kind="operator"), "approver"
            )
        assert _type(e) == "urn:qiao:problem:hub:forbidden"
    with pytest.raises(Problem, match="not a token"):
        hub.identity.request_mfa_reset(
            Principal("token:ops", frozenset({Role.ORG_ADMIN}), org=A, kind="token"), "approver"
        )
    assert hub.identity.get_user(CLI, "approver").mfa_enrolled


def test_mfa_reset_needs_two_administrators(hub: Hub) -> None:
    ident = hub.identity
    secret = hub.user("approver", Role.APPROVER)
    assert secret
    hub.user("admin1", Role.ORG_ADMIN)
    admin2_secret = hub.user("admin2", Role.ORG_ADMIN)
    assert admin2_secret
    one, two = _who("admin1", Role.ORG_ADMIN), _who("admin2", Role.ORG_ADMIN)
    assert ident.request_mfa_reset(one, "approver") == "pending"
    assert ident.request_mfa_reset(one, "approver") == "pending"  # the same admin again
    with pytest.raises(Problem):  # no one resets their own
        ident.request_mfa_reset(_who("approver", Role.ORG_ADMIN), "approver")
    with pytest.raises(Problem):  # a session without the second factor may not
        ident.request_mfa_reset(
            Principal("user:admin2", frozenset({Role.ORG_ADMIN}), org=A, kind="user"), "approver"
        )
    assert ident.request_mfa_reset(two, "approver") == "reset"
    view = ident.get_user(CLI, "approver")
    assert not view.mfa_enrolled
    s = ident.sign_in("approver", PASSWORD, client_address="a")  # no code needed now
    assert s.mfa_required
    # The command-line form: the second administrator approves with a current code.
    e = ident.start_totp("approver")
    ident.confirm_totp("approver", hub.code(e.secret))
    with pytest.raises(Problem):
        ident.reset_mfa_with_approver(CLI, "approver", "admin2", "000000")
    with pytest.raises(Problem):
        ident.reset_mfa_with_approver(CLI, "approver", "approver", hub.code(e.secret, 1))
    hub.user("b-admin", Role.ORG_ADMIN, org=B)
    with pytest.raises(Problem, match="not an administrator"):
        ident.reset_mfa_with_approver(CLI, "approver", "b-admin", "123456")
    hub.clock.advance(30)
    ident.reset_mfa_with_approver(CLI, "approver", "admin2", hub.code(admin2_secret))
    assert not ident.get_user(CLI, "approver").mfa_enrolled
    resets = [json.loads(e.detail) for e in _events(hub) if e.action == "mfa.reset"]
    assert resets[0]["requested_by"] == "user:admin1"
    assert resets[0]["approved_by"] == "user:admin2"
    assert resets[1]["approved_by"] == "user:admin2"


def test_password_rehashed_on_sign_in_when_the_cost_changes(hub: Hub) -> None:
    from qiao.identity.models import User

    hub.user("dev", Role.APP_DEVELOPER)
    hub.identity.hashing = PasswordHashing(time_cost=2, memory_kib=16, parallelism=1)
    hub.identity.sign_in("dev", PASSWORD, client_address="a")
    with hub.registry._sessions() as s:
        stored = s.scalars(select(User.password_hash).where(User.username == "dev")).one()
    assert "$m=16,t=2,p=1$" in stored


def test_change_password(hub: Hub) -> None:
    hub.user("dev", Role.APP_DEVELOPER)
    uid = hub.identity.user_id("dev")
    with pytest.raises(Problem):
        hub.identity.change_password(uid, "wrong", "Another-good-pass-1")
    with pytest.raises(Problem) as e:
        hub.identity.change_password(uid, PASSWORD, "short")
    assert e.value.kind.uri == "urn:qiao:problem:hub:weak-password"
    hub.identity.change_password(uid, PASSWORD, "Another-good-pass-1")
    assert hub.identity.sign_in("dev", "Another-good-pass-1", client_address="a")


def test_no_secret_reaches_the_record_or_the_log(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ident = hub.identity
    secret = hub.user("approver", Role.APPROVER)
    assert secret
    codes = ident.regenerate_recovery_codes("approver")
    with pytest.raises(SignInRefused):
        ident.sign_in("approver", "Wrong-Password-123", otp="123456", client_address="a")
    hub.clock.advance(30)
    otp = hub.code(secret)
    s = ident.sign_in("approver", PASSWORD, otp=otp, client_address="a")
    ident.sign_in("approver", PASSWORD, recovery_code=codes[0], client_address="a")
    _view, generated = ident.add_user(CLI, "dev", org=A, roles=frozenset({Role.APP_DEVELOPER}))
    assert generated
    record = " ".join(f"{e.action} {e.actor} {e.detail}" for e in _events(hub))
    secrets = [PASSWORD, "Wrong-Password-123", otp, secret, codes[0], s.session_token]
    secrets += [s.csrf_token, generated, codes[0].replace("-", "")]
    for value in secrets:
        assert value not in record
        assert value not in caplog.text


def test_old_sessions_and_quiet_failure_counters_are_purged(hub: Hub) -> None:
    from qiao.identity.models import SignInFailures, UserSession

    ident = hub.identity
    hub.user("dev", Role.APP_DEVELOPER)
    token, _ = ident.create_session(ident.user_id("dev"), ("pwd",), "a")
    ident.end_session(token)
    live, _ = ident.create_session(ident.user_id("dev"), ("pwd",), "a")
    with pytest.raises(SignInRefused):
        ident.sign_in("dev", "not the password", client_address="b")
    assert ident.purge() == 0
    hub.clock.advance(8 * 24 * 3600)
    assert ident.purge() == 4  # both sessions (the live one timed out long ago), two counters
    with hub.registry._sessions() as s:
        assert s.scalars(select(UserSession)).first() is None
        assert s.scalars(select(SignInFailures)).first() is None
    assert live
