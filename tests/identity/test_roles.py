import pytest

from qiao.identity.roles import CLI, Principal, Role, parse_roles

A = "91350100M000100Y43"
B = "12350100MB00010016"


def test_roles_hold_in_the_own_organization_only() -> None:
    steward = Principal("user:li", frozenset({Role.DATA_STEWARD}), org=A)
    assert steward.has(Role.DATA_STEWARD)
    assert steward.has(Role.DATA_STEWARD, org=A)
    assert not steward.has(Role.DATA_STEWARD, org=B)
    assert not steward.has(Role.APPROVER, org=A)
    assert steward.has(Role.APPROVER, Role.DATA_STEWARD, org=A)


def test_the_platform_administrator_holds_every_role_everywhere() -> None:
    admin = Principal("operator:x", frozenset({Role.PLATFORM_ADMIN}))
    assert all(admin.has(r, org=B) for r in Role)
    assert CLI.is_platform_admin


def test_roles_parse_and_unknown_ones_are_named() -> None:
    assert parse_roles("data-steward, approver") == {Role.DATA_STEWARD, Role.APPROVER}
    assert parse_roles(["auditor"]) == {Role.AUDITOR}
    assert parse_roles("") == frozenset()
    with pytest.raises(ValueError, match="'root'"):
        parse_roles("auditor,root")
