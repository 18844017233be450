from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from qiao import pki, problems, signing
from qiao.db import make_engine, migrate, session_factory
from qiao.globalconf import KIND, GlobalConf
from qiao.problems import Problem
from qiao.registry.models import EnrollmentToken
from qiao.registry.services import HubKeys, RegistryService

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


def test_operator_tokens(registry: RegistryService) -> None:
    token = registry.create_operator_token("ops")
    assert registry.check_operator_token(token)
    assert not registry.check_operator_token(token + "x")
