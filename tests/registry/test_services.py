from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from qiao import pki, problems, signing
from qiao.db import make_engine, migrate, session_factory
from qiao.events.envelope import event_key_to_text, generate_event_key
from qiao.globalconf import KIND, GlobalConf, NodeEntry
from qiao.problems import Problem
from qiao.registry.models import Certificate, EnrollmentToken
from qiao.registry.services import (
    FETCH_CLOCK_SKEW_SECONDS,
    HubKeys,
    RegistryService,
    sign_configuration_fetch,
)

ORG_A = "91350100M000100Y43"
ORG_B = "91110000802100433B"


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> RegistryService:
    migrate("hub", db_url)
    keys = HubKeys.load_or_create(tmp_path / "hub", "CN-T")
    return RegistryService(
        session_factory(make_engine(db_url)), keys, instance="CN-T", token_ttl=timedelta(hours=1)
    )


def _csr(name: str = "a-node", org: str = ORG_A) -> str:
    return pki.csr_to_pem(pki.create_csr(pki.generate_private_key(), name, org)).decode()


def test_organization_codes_are_checked(registry: RegistryService) -> None:
    with pytest.raises(Problem) as e:
        registry.add_organization("91350100M000100Y44", "错误")
    assert e.value.kind is problems.INVALID_USCC
    assert "check character" in e.value.detail
    registry.add_organization(ORG_A.lower(), "甲单位")
    assert [o.code for o in registry.list_organizations()] == [ORG_A]
    with pytest.raises(Problem) as e:
        registry.add_organization(ORG_A, "again")
    assert e.value.kind is problems.CONFLICT


def test_apps_and_resources(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    registry.add_organization(ORG_B, "乙")
    registry.add_app(ORG_B, "caller")
    with pytest.raises(Problem) as e:
        registry.add_app(ORG_B, "caller")
    assert e.value.kind is problems.CONFLICT
    with pytest.raises(Problem) as e:
        registry.add_app(ORG_B, "bad code!")
    assert e.value.kind is problems.VALIDATION
    registry.add_resource(ORG_A, "records", "记录")
    with pytest.raises(Problem) as e:
        registry.add_resource(ORG_A, "records")
    assert e.value.kind is problems.CONFLICT
    [res] = registry.list_resources()
    assert (res.org_code, res.code, res.name) == (ORG_A, "records", "记录")


def test_enrollment_token_is_single_use(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    token, _ = registry.create_enrollment_token(ORG_A)
    e = registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443")
    cert = pki.load_cert_pem(e.certificate_pem.encode())
    assert e.org == ORG_A and e.instance == "CN-T"
    assert pki.fingerprint(cert) == registry.list_nodes()[0][1][0].fingerprint
    with pytest.raises(Problem) as err:
        registry.enroll(token, _csr(), "a-node-2", "https://127.0.0.1:9444")
    assert err.value.kind is problems.BAD_ENROLLMENT_TOKEN
    with pytest.raises(Problem) as err:
        registry.enroll("qet_made-up", _csr(), "x", "https://127.0.0.1:9444")
    assert err.value.kind is problems.BAD_ENROLLMENT_TOKEN


def test_expired_token_and_bad_requests_are_refused(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    token, _ = registry.create_enrollment_token(ORG_A)
    with pytest.raises(Problem) as err:
        registry.enroll(token, "not a csr", "a-node", "https://127.0.0.1:9443")
    assert err.value.kind is problems.BAD_CSR
    with pytest.raises(Problem) as err:
        registry.enroll(token, _csr(), "a-node", "http://127.0.0.1:9443")
    assert err.value.kind is problems.VALIDATION
    with registry._sessions.begin() as s:
        # Neither refusal used up the token ...
        assert s.scalar(select(EnrollmentToken.used_at)) is None
        # ... but it expires.
        s.execute(update(EnrollmentToken).values(expires_at=datetime(2020, 1, 1, tzinfo=UTC)))
    with pytest.raises(Problem) as err:
        registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443")
    assert err.value.kind is problems.BAD_ENROLLMENT_TOKEN


def test_signed_configuration_tracks_every_change(registry: RegistryService) -> None:
    s0 = registry.signed_global_conf()
    registry.add_organization(ORG_A, "甲")
    registry.add_organization(ORG_B, "乙")
    registry.add_app(ORG_B, "caller")
    registry.add_resource(ORG_A, "records")
    token, _ = registry.create_enrollment_token(ORG_A)
    enr = registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443")
    signed = registry.signed_global_conf()
    assert signed["document"]["serial"] > s0["document"]["serial"]
    pub = signing.public_key_from_text(enr.configuration_key)
    conf = GlobalConf.compile(signing.verify_document(signed, pub, kind=KIND))
    assert conf.org_names == {ORG_A: "甲", ORG_B: "乙"}
    assert f"CN-T/{ORG_B}/caller" in conf.apps
    assert (ORG_A, "records") in conf.resources
    fp = pki.fingerprint(pki.load_cert_pem(enr.certificate_pem.encode()))
    assert conf.nodes_by_fingerprint[fp].org == ORG_A
    assert conf.nodes_by_org[ORG_A][0].address == "https://127.0.0.1:9443"
    # Revocation removes the certificate from the node and lists it as revoked.
    assert registry.revoke("a-node", "key compromise")
    after = GlobalConf.compile(registry.signed_global_conf()["document"])
    assert fp in after.revoked and fp not in after.nodes_by_fingerprint
    assert after.serial > conf.serial
    with pytest.raises(Problem) as err:
        registry.revoke("a-node")
    assert err.value.kind is problems.NOT_FOUND


def test_both_forms_are_signed_once_per_serial(
    registry: RegistryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add_organization(ORG_A, "甲")
    built: list[int] = []
    real = registry.global_conf_document

    def counted() -> dict[str, object]:
        doc = real()
        built.append(int(str(doc["serial"])))
        return doc

    monkeypatch.setattr(registry, "global_conf_document", counted)
    full, public = registry.signed_global_conf(), registry.signed_global_conf(redacted=True)
    assert registry.signed_global_conf() is full
    assert registry.signed_global_conf(redacted=True) is public
    assert built == [registry.serial()]  # one document for both forms
    pub = registry.keys.conf_key.public_key()
    f = signing.verify_document(full, pub, kind=KIND)
    p = signing.verify_document(public, pub, kind=KIND)
    assert f["serial"] == p["serial"] and p["redacted"] is True and "redacted" not in f
    assert {"agreements", "emergencies"} <= set(f) and not {"agreements", "emergencies"} & set(p)
    assert {k: v for k, v in f.items() if k not in ("agreements", "emergencies")} == {
        k: v for k, v in p.items() if k != "redacted"
    }
    with pytest.raises(ValueError, match="public configuration"):
        GlobalConf.compile(p)
    registry.add_app(ORG_A, "caller")
    assert registry.signed_global_conf(redacted=True)["document"]["serial"] > p["serial"]
    assert built == [p["serial"], p["serial"] + 1]


def test_a_node_signature_needs_a_current_certificate(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    token, _ = registry.create_enrollment_token(ORG_A)
    key = pki.generate_private_key()
    csr = pki.csr_to_pem(pki.create_csr(key, "a-node", ORG_A)).decode()
    enrolled = registry.enroll(token, csr, "a-node", "https://127.0.0.1:9443")
    cert = pki.load_cert_pem(enrolled.certificate_pem.encode())
    fp = pki.fingerprint(cert)
    now = datetime.now(UTC).timestamp()
    reader = registry.configuration_reader(
        sign_configuration_fetch(key, "a-node", fp, int(now)), now=now
    )
    assert reader.enrolled and reader.node == "a-node" and reader.refused == ""
    # Fingerprints are hex; upper case is the same certificate.
    upper = sign_configuration_fetch(key, "a-node", fp.upper(), int(now))
    assert registry.configuration_reader(upper, now=now).enrolled
    # The same signature, at a time after the certificate ran out (its clock in step).
    later = cert.not_valid_after_utc.timestamp() + 60
    reader = registry.configuration_reader(
        sign_configuration_fetch(key, "a-node", fp, int(later)), now=later
    )
    assert not reader.enrolled and reader.refused == "node a-node's certificate has expired"
    skewed = registry.configuration_reader(
        sign_configuration_fetch(key, "a-node", fp, int(now) - FETCH_CLOCK_SKEW_SECONDS - 5),
        now=now,
    )
    assert not skewed.enrolled and "behind the hub's" in skewed.refused
    # No node headers at all: the public, with nothing to say.
    assert registry.configuration_reader({}, now=now) == type(reader)()


def test_operator_tokens(registry: RegistryService) -> None:
    token = registry.create_operator_token("ops")
    assert registry.check_operator_token(token)
    assert not registry.check_operator_token(token + "x")


def test_an_operator_token_stops_at_its_expiry_and_at_revocation(
    registry: RegistryService,
) -> None:
    from qiao.registry.models import OperatorToken

    lasting = registry.create_operator_token("ops", days=30)
    ending = registry.create_operator_token("pipeline", org=None, days=1)
    listed = {t["label"]: t for t in registry.operator_tokens()}
    assert listed["ops"]["valid"] and listed["ops"]["expires_at"] > listed["ops"]["created_at"]
    assert not any("qop_" in str(v) for t in listed.values() for v in t.values())
    # A day later (moved back in the database, as the clock would move forward):
    with registry._sessions.begin() as s:
        s.execute(
            update(OperatorToken)
            .where(OperatorToken.label == "pipeline")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert registry.check_operator_token(lasting)
    assert registry.check_operator_token(ending) is None
    assert not {t["label"]: t for t in registry.operator_tokens()}["pipeline"]["valid"]

    registry.revoke_operator_token(listed["ops"]["id"], reason="left the team")
    assert registry.check_operator_token(lasting) is None
    registry.revoke_operator_token(listed["ops"]["id"])  # again: nothing changes, no error
    with pytest.raises(Problem) as e:
        registry.revoke_operator_token(9999)
    assert e.value.kind is problems.NOT_FOUND
    for bad in (0, -1, 10_000):
        with pytest.raises(Problem) as e:
            registry.create_operator_token("x", days=bad)
        assert e.value.kind is problems.VALIDATION


def _events_key() -> str:
    return event_key_to_text(generate_event_key().public_key())


def _node_entry(registry: RegistryService, fingerprint: str) -> NodeEntry:
    signed = registry.signed_global_conf()
    doc = signing.verify_document(signed, registry.keys.conf_key.public_key(), kind=KIND)
    return GlobalConf.compile(doc).nodes_by_fingerprint[fingerprint]


def test_enrollment_publishes_the_nodes_events_key(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    key = _events_key()
    token, _ = registry.create_enrollment_token(ORG_A)
    enr = registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443", events_key=key)
    fp = pki.fingerprint(pki.load_cert_pem(enr.certificate_pem.encode()))
    [entry] = registry.global_conf_document()["nodes"]
    assert entry["events_key"] == key
    assert _node_entry(registry, fp).events_key == key
    # Re-enrolling replaces it: the old private half stayed with the old identity.
    token, _ = registry.create_enrollment_token(ORG_A)
    registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443")
    assert registry.global_conf_document()["nodes"][0]["events_key"] == ""


# Not base64; 3 bytes; the all-zero point (low order, RFC 7748 §6.1).
@pytest.mark.parametrize("bad", ["not base64!", "AAAA", "A" * 43 + "="])
def test_enrollment_refuses_an_unusable_events_key(registry: RegistryService, bad: str) -> None:
    registry.add_organization(ORG_A, "甲")
    token, _ = registry.create_enrollment_token(ORG_A)
    with pytest.raises(Problem) as e:
        registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443", events_key=bad)
    assert e.value.kind is problems.VALIDATION
    assert "events key" in e.value.detail
    # The token was not spent on the refused attempt.
    registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443", events_key=_events_key())


def test_an_upgraded_node_registers_its_events_key(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    token, _ = registry.create_enrollment_token(ORG_A)
    enr = registry.enroll(token, _csr(), "a-node", "https://127.0.0.1:9443")  # an old node
    fp = pki.fingerprint(pki.load_cert_pem(enr.certificate_pem.encode()))
    assert _node_entry(registry, fp).events_key == ""
    key = _events_key()
    before = registry.serial()
    registry.set_events_key("a-node", fp.upper(), key)
    assert registry.serial() == before + 1
    assert _node_entry(registry, fp).events_key == key
    registry.set_events_key("a-node", fp, key)  # a retry: nothing changes
    assert registry.serial() == before + 1


def test_only_the_node_itself_sets_its_events_key(registry: RegistryService) -> None:
    registry.add_organization(ORG_A, "甲")
    fingerprints = {}
    for name in ("a-node", "b-node"):
        token, _ = registry.create_enrollment_token(ORG_A)
        enr = registry.enroll(token, _csr(name), name, "https://127.0.0.1:9443")
        fingerprints[name] = pki.fingerprint(pki.load_cert_pem(enr.certificate_pem.encode()))
    key = _events_key()

    def refused(node: str, fingerprint: str, text: str = key) -> Problem:
        with pytest.raises(Problem) as e:
            registry.set_events_key(node, fingerprint, text)
        return e.value

    # Another node's certificate, and a certificate nobody has.
    assert "no certificate" in refused("a-node", fingerprints["b-node"]).detail
    assert refused("a-node", "ab" * 32).kind is problems.FORBIDDEN
    assert refused("no-such-node", fingerprints["a-node"]).kind is problems.FORBIDDEN
    assert refused("a-node", fingerprints["a-node"], "AAAA").kind is problems.VALIDATION
    with registry._sessions.begin() as s:
        s.execute(
            update(Certificate)
            .where(Certificate.fingerprint == fingerprints["b-node"])
            .values(not_after=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert "expired" in refused("b-node", fingerprints["b-node"]).detail
    registry.revoke("a-node", "key compromise")
    assert "revoked" in refused("a-node", fingerprints["a-node"]).detail
    assert all(n["events_key"] == "" for n in registry.global_conf_document()["nodes"])
