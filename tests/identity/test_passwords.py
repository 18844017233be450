import pytest

from qiao.identity.passwords import (
    MAX_LENGTH,
    PasswordHashing,
    WeakPassword,
    check_policy,
    common_passwords,
    generate_password,
)


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("Short-1a", "at least 12"),
        ("x" * (MAX_LENGTH + 1), "at most"),
        ("Zhangsan-2026!", "sign-in name"),
        ("woaini1314520", "common passwords"),
        ("1qaz2wsx3edc", "common passwords"),
        ("abababababababab", "too few different"),
        ("alllowercase12", "three of"),
        ("ALLUPPER-NODIG", "three of"),
    ],
)
def test_weak_passwords_are_refused_with_the_rule_they_break(password: str, rule: str) -> None:
    with pytest.raises(WeakPassword, match=rule):
        check_policy(password, "zhangsan")


@pytest.mark.parametrize(
    "password",
    ["Qiao-bridge-42", "correct horse battery staple", "红桥-Bridge-2026", "Tr0ub4dor&3x!"],
)
def test_good_passwords_pass(password: str) -> None:
    check_policy(password, "zhangsan")


def test_the_common_list_is_shipped_as_data_in_lower_case() -> None:
    words = common_passwords()
    assert len(words) > 50 and all(w == w.lower() for w in words)
    # Case does not help: the check lower-cases the candidate.
    with pytest.raises(WeakPassword):
        check_policy("WOAINI1314520", "x")


def test_generated_passwords_meet_the_policy() -> None:
    seen = {generate_password() for _ in range(20)}
    assert len(seen) == 20
    for p in seen:
        check_policy(p, "someone")


def test_argon2id_hash_verify_and_rehash_when_the_cost_changes() -> None:
    cheap = PasswordHashing(time_cost=1, memory_kib=8, parallelism=1)
    h = cheap.hash("Qiao-bridge-42")
    assert h.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert cheap.verify(h, "Qiao-bridge-42")
    assert not cheap.verify(h, "Qiao-bridge-43")
    assert not cheap.verify(None, "Qiao-bridge-42")  # unknown account: same work, refused
    assert not cheap.verify("not a hash", "Qiao-bridge-42")
    assert not cheap.verify(h, "x" * (MAX_LENGTH + 1))
    assert not cheap.needs_rehash(h)
    dearer = PasswordHashing(time_cost=2, memory_kib=16, parallelism=1)
    assert dearer.needs_rehash(h)
    assert dearer.verify(h, "Qiao-bridge-42")  # old hashes keep working until re-hashed
