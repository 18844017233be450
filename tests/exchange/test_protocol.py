import hashlib

import pytest

from qiao import problems
from qiao.exchange import protocol as p
from qiao.problems import Problem

ORG = "91350100M000100Y43"


def test_target_split() -> None:
    t = p.parse_target(f"/r1/{ORG}/vehicle-violations/a/b")
    assert (t.provider_org, t.resource, t.path) == (ORG, "vehicle-violations", "a/b")
    t = p.parse_target(f"/r1/{ORG.lower()}/x")
    assert (t.provider_org, t.resource, t.path) == (ORG, "x", "")


@pytest.mark.parametrize(
    "path",
    [
        "/r2/" + ORG + "/x",
        "/r1/short/x",
        "/r1/" + ORG,
        "/r1/" + ORG + "/bad resource",
        "/r1/" + ORG + "/x/../admin",
        "/r1/" + ORG + "/x/./y",
        "r1/" + ORG + "/x",
        "/r1//x",
    ],
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(Problem) as e:
        p.parse_target(path)
    assert e.value.kind is problems.BAD_PATH


def test_client_header() -> None:
    c = p.parse_client(f"CN-DEMO/{ORG}/app_1")
    assert (c.instance, c.org, c.app, str(c)) == ("CN-DEMO", ORG, "app_1", f"CN-DEMO/{ORG}/app_1")
    with pytest.raises(Problem) as e:
        p.parse_client(None)
    assert e.value.kind is problems.MISSING_CLIENT
    for bad in ["CN-DEMO/" + ORG, f"CN DEMO/{ORG}/a", f"CN-DEMO/{ORG}/a/b", "x" * 300]:
        with pytest.raises(Problem) as e:
            p.parse_client(bad)
        assert e.value.kind is problems.BAD_CLIENT


def test_exchange_id_is_kept_or_generated() -> None:
    assert p.exchange_id("abc-123.X:y_z") == "abc-123.X:y_z"
    generated = p.exchange_id(None)
    assert len(generated) == 36 and generated != p.exchange_id(None)
    for bad in ["", "a b", "x" * 129, "ä"]:
        with pytest.raises(Problem):
            p.exchange_id(bad)


def test_purpose_and_user_reject_control_characters() -> None:
    assert p.optional_text("X-Qiao-User", "张三 (警号 007)") == "张三 (警号 007)"
    assert p.optional_text("X-Qiao-User", None) == ""
    for bad in ["a\nb", "\x00", " leading-space", "x" * 201]:
        with pytest.raises(Problem) as e:
            p.optional_text("X-Qiao-User", bad)
        assert e.value.kind is problems.BAD_HEADER


def test_request_hash_binds_every_part() -> None:
    body = hashlib.sha256(b"{}").hexdigest()
    base = ("POST", "/r1/x/y?a=1", "id-1", "CN/X/a", body)
    h = p.request_hash(*base)
    assert len(h) == 64
    for i in range(len(base)):
        changed = list(base)
        changed[i] = changed[i] + "0"
        assert p.request_hash(*changed) != h
