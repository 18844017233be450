import json
from pathlib import Path
from typing import Any

import pytest

from qiao import problems, signing
from qiao.globalconf import KIND
from qiao.node.confcache import CACHE_FILE, ConfigurationCache
from qiao.problems import Problem

ORG = "91350100M000100Y43"


def doc(serial: int, instance: str = "CN-T", name: str = "甲") -> dict[str, Any]:
    return {
        "instance": instance,
        "serial": serial,
        "issued_at": "2026-11-29T00:00:00+00:00",
        "organizations": [
            {"code": ORG, "name": name, "name_en": "", "kind": "government", "apps": ["a"]}
        ],
        "nodes": [
            {
                "name": "n",
                "org": ORG,
                "address": "https://127.0.0.1:1",
                "certificates": [
                    {
                        "serial": "01",
                        "fingerprint": "ab" * 32,
                        "not_after": "2027-01-01T00:00:00+00:00",
                    }
                ],
            }
        ],
        "ca_certificates": [],
        "revoked": [],
        "resources": [{"org": ORG, "code": "r", "name": ""}],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> Any:
    return signing.generate_signing_key()


def cache(tmp_path: Path, key: Any, clock: Clock, grace: float = 100) -> ConfigurationCache:
    return ConfigurationCache(
        tmp_path,
        public_key=signing.public_key_to_text(key.public_key()),
        instance="CN-T",
        grace_seconds=grace,
        clock=clock,
    )


def test_no_configuration_yet(tmp_path: Path, key: Any) -> None:
    c = cache(tmp_path, key, Clock())
    with pytest.raises(Problem) as e:
        c.usable()
    assert e.value.kind is problems.NO_CONFIGURATION
    assert c.status()["valid"] is False


def test_grace_period_counts_from_the_last_contact(tmp_path: Path, key: Any) -> None:
    clock = Clock()
    c = cache(tmp_path, key, clock, grace=100)
    c.accept(signing.sign_document(key, doc(1), kind=KIND))
    assert c.usable().serial == 1 and c.remaining() == 100
    clock.now += 60
    assert c.status()["grace_remaining_seconds"] == 40
    c.reached()  # a "not modified" answer also counts as contact
    clock.now += 99
    assert c.usable().serial == 1
    clock.now += 2
    with pytest.raises(Problem) as e:
        c.usable()
    assert e.value.kind is problems.CONFIGURATION_EXPIRED
    with pytest.raises(Problem) as e:
        c.usable(problems.PROVIDER_CONFIGURATION_EXPIRED)
    assert e.value.kind is problems.PROVIDER_CONFIGURATION_EXPIRED


def test_refusals_keep_the_last_good_configuration(tmp_path: Path, key: Any) -> None:
    clock = Clock()
    c = cache(tmp_path, key, clock)
    seen: list[int] = []
    c.listeners.append(lambda conf: seen.append(conf.serial))
    c.accept(signing.sign_document(key, doc(5), kind=KIND))
    tampered = signing.sign_document(key, doc(6), kind=KIND)
    tampered["document"]["organizations"][0]["name"] = "篡改"
    other_key = signing.sign_document(signing.generate_signing_key(), doc(7), kind=KIND)
    other_instance = signing.sign_document(key, doc(8, instance="CN-X"), kind=KIND)
    older = signing.sign_document(key, doc(4), kind=KIND)
    for bad in [tampered, other_key, other_instance, older, {"junk": True}, "x", None]:
        with pytest.raises(ValueError):
            c.accept(bad)
        assert c.last_error.startswith("refused")
        assert c.usable().serial == 5 and c.usable().org_names[ORG] == "甲"
    assert seen == [5]
    c.accept(signing.sign_document(key, doc(6, name="乙"), kind=KIND))
    assert seen == [5, 6] and c.last_error == ""


def test_cache_survives_a_restart_and_a_damaged_cache_is_ignored(tmp_path: Path, key: Any) -> None:
    clock = Clock()
    c = cache(tmp_path, key, clock, grace=100)
    c.accept(signing.sign_document(key, doc(3), kind=KIND))
    clock.now += 30
    again = cache(tmp_path, key, clock, grace=100)
    assert again.usable().serial == 3 and again.remaining() == 70
    saved = json.loads((tmp_path / CACHE_FILE).read_text())
    saved["envelope"]["document"]["serial"] = 99
    (tmp_path / CACHE_FILE).write_text(json.dumps(saved))
    damaged = cache(tmp_path, key, clock)
    assert damaged.current is None


def test_a_last_contact_moved_into_the_future_is_refused(tmp_path: Path, key: Any) -> None:
    # The time the hub was last reached is not signed; moved ahead, it would stretch the
    # grace period at will (reliability/test_tamper.py).
    clock = Clock()
    c = cache(tmp_path, key, clock, grace=100)
    c.accept(signing.sign_document(key, doc(3), kind=KIND))
    saved = json.loads((tmp_path / CACHE_FILE).read_text())
    saved["last_reached"] = clock.now + 10 * 86400
    (tmp_path / CACHE_FILE).write_text(json.dumps(saved))
    assert cache(tmp_path, key, clock).current is None
    saved["last_reached"] = clock.now + 60  # within a clock correction's margin: kept
    (tmp_path / CACHE_FILE).write_text(json.dumps(saved))
    assert cache(tmp_path, key, clock).usable().serial == 3


def test_the_public_form_is_refused(tmp_path: Path, key: Any) -> None:
    """The hub's public form, correctly signed, must not replace the node's agreements: a man
    in the middle could replay it to strip them."""
    c = cache(tmp_path, key, Clock())
    full = {**doc(5), "agreements": [], "emergencies": []}
    c.accept(signing.sign_document(key, full, kind=KIND))
    public = {**doc(6), "redacted": True}
    with pytest.raises(ValueError, match="public configuration, without agreements"):
        c.accept(signing.sign_document(key, public, kind=KIND))
    assert c.last_error.startswith("refused a configuration from the hub: the hub sent the public")
    assert c.usable().serial == 5 and "agreements" in c.usable().document
    # Nor is it taken from a fresh node's disk.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    saved = {"envelope": signing.sign_document(key, public, kind=KIND), "last_reached": 1.0}
    (fresh / CACHE_FILE).write_text(json.dumps(saved))
    assert cache(fresh, key, Clock()).current is None
