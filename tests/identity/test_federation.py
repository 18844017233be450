"""Sign-in delegated to an external OIDC identity provider: a second hub on loopback plays
the provincial unified identity platform (省统一身份认证平台); no network beyond loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import update

from qiao.config import ExternalIdpSettings
from qiao.db import session_factory
from qiao.identity.federation import FederationRefused, map_claims
from qiao.identity.oidc_models import FederationState
from qiao.identity.roles import Role
from tests.identity.test_oidc import A, B, Hub, free_port, start_hub

IDP = "province"


@dataclass
class Pair:
    idp: Hub  # the provincial platform
    city: Hub  # the city's hub, delegating to it


def _pair(db_url: str, tmp_path: Path, **idp_conf: Any) -> Iterator[Pair]:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/api/v1/session/external/{IDP}/callback"
    for province in start_hub(f"sqlite:///{tmp_path / 'idp.db'}", tmp_path / "idp"):
        r = httpx.post(
            f"{province.url}/api/v1/orgs/{A}/oidc-clients",
            headers=province.admin(A),
            json={"name": "市数据交换中心", "redirect_uris": [callback]},
        )
        assert r.status_code == 201, r.text
        client = r.json()
        conf = {
            "issuer": province.url,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "scope": "openid profile qiao",
            "username_claim": "preferred_username",
            "org_claim": "org",
            "roles_claim": "roles",
            "role_map": {"approver": "approver", "data-steward": "data-steward"},
            **idp_conf,
        }
        for city in start_hub(db_url, tmp_path / "city", port=port, external_idps={IDP: conf}):
            yield Pair(province, city)


@pytest.fixture
def pair(db_url: str, tmp_path: Path) -> Iterator[Pair]:
    yield from _pair(db_url, tmp_path)


def _start(p: Pair, idp_cookie: str) -> httpx.Response:
    """The browser: start at the city hub, sign in at the province, come back."""
    with httpx.Client(follow_redirects=False) as b:
        r = b.get(f"{p.city.url}/api/v1/session/external/{IDP}/start", params={"next": "/x"})
        assert r.status_code == 303, r.text
        to_idp = r.headers["location"]
        assert to_idp.startswith(p.idp.url + "/oauth2/authorize?")
        q = parse_qs(urlsplit(to_idp).query)
        assert q["code_challenge_method"] == ["S256"] and q["nonce"] and q["state"]
        r = b.get(to_idp, headers={"Cookie": f"qiao_session={idp_cookie}"})
        assert r.status_code == 302, r.text
        return httpx.get(r.headers["location"], follow_redirects=False)


def test_delegated_sign_in_maps_and_provisions_the_user(pair: Pair) -> None:
    back = _start(pair, pair.idp.sign_in("chen.jing"))
    assert back.status_code == 303, back.text
    assert back.headers["location"] == "/x"
    cookie = back.cookies["qiao_session"]
    me = httpx.get(f"{pair.city.url}/api/v1/session", cookies={"qiao_session": cookie})
    assert me.status_code == 200, me.text
    body = me.json()
    text = str(body)
    assert f"{IDP}:chen.jing" in text and A in text and "approver" in text
    # signing in again finds the same user
    again = _start(pair, pair.idp.sign_in("chen.jing"))
    assert again.status_code == 303, again.text


def test_a_replayed_or_forged_callback_is_refused(pair: Pair) -> None:
    idp_cookie = pair.idp.sign_in("lu.xin")
    with httpx.Client(follow_redirects=False) as b:
        r = b.get(f"{pair.city.url}/api/v1/session/external/{IDP}/start")
        r = b.get(r.headers["location"], headers={"Cookie": f"qiao_session={idp_cookie}"})
        callback = r.headers["location"]
    assert httpx.get(callback).status_code == 303
    replay = httpx.get(callback)
    assert replay.status_code == 403
    assert replay.json()["type"] == "urn:qiao:problem:hub:external-sign-in-refused"
    q = parse_qs(urlsplit(callback).query)
    for params in ({"code": q["code"][0], "state": "made-up"}, {"state": q["state"][0]}, {}):
        r = httpx.get(callback.split("?")[0], params=params)
        assert r.status_code == 403, params
    r = httpx.get(callback.split("?")[0], params={"error": "access_denied", "state": "s"})
    assert r.status_code == 403 and "access_denied" in r.json()["detail"]
    r = httpx.get(f"{pair.city.url}/api/v1/session/external/nowhere/start")
    assert r.status_code == 404


@pytest.mark.parametrize("tamper", ["nonce", "code_verifier"])
def test_nonce_and_pkce_are_checked(pair: Pair, tamper: str) -> None:
    idp_cookie = pair.idp.sign_in("guo.wei")
    with httpx.Client(follow_redirects=False) as b:
        r = b.get(f"{pair.city.url}/api/v1/session/external/{IDP}/start")
        r = b.get(r.headers["location"], headers={"Cookie": f"qiao_session={idp_cookie}"})
        callback = r.headers["location"]
    # What an attacker who injects a stolen code into another browser's callback would face:
    # the nonce (in the ID token) and the PKCE verifier (at the token endpoint) don't match.
    with session_factory(pair.city.registry.engine).begin() as s:
        s.execute(update(FederationState).values({tamper: "x" * 43}))
    r = httpx.get(callback)
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "urn:qiao:problem:hub:external-sign-in-refused"


def test_organizations_outside_the_allowed_list_are_refused(db_url: str, tmp_path: Path) -> None:
    for p in _pair(db_url, tmp_path, allowed_orgs=[B]):
        r = _start(p, p.idp.sign_in("xu.lan"))
        assert r.status_code == 403
        assert A in r.json()["detail"]


CONF = ExternalIdpSettings(
    issuer="https://idp.fj.gov.cn",
    client_id="c",
    org_claim="org",
    roles_claim="groups",
    role_map={"审批": "approver", "sjgly": "data-steward"},
)


def test_claim_mapping_rules() -> None:
    known = {A, B}
    u = map_claims(
        IDP,
        CONF,
        {"preferred_username": "zhang", "org": A.lower(), "groups": ["审批", "platform-admin"]},
        known,
    )
    # a group named like a Qiao role gives nothing unless mapped; unknown groups neither
    assert u.username == f"{IDP}:zhang" and u.org == A and u.roles == {Role.APPROVER}
    assert map_claims(
        IDP, CONF, {"preferred_username": "z", "org": A, "groups": "sjgly"}, known
    ).roles == {Role.DATA_STEWARD}
    # platform-admin is never granted from outside: mapping it is refused with the settings
    with pytest.raises(ValidationError, match="platform-admin"):
        ExternalIdpSettings.model_validate(
            {**CONF.model_dump(), "role_map": {"root": "platform-admin"}}
        )
    with pytest.raises(ValidationError, match="unknown role"):
        ExternalIdpSettings.model_validate({**CONF.model_dump(), "role_map": {"x": "root"}})
    bad: list[dict[str, Any]] = [
        {"org": A},  # no username
        {"preferred_username": "z"},  # no organization
        {"preferred_username": "z", "org": "91350100M000100Y44"},  # bad check character
        {"preferred_username": "z", "org": "91350100M000100Y43"[:-1]},  # too short
        {"preferred_username": "z", "org": "12350100MB0001002X"},  # not registered here
        {"preferred_username": "z" * 101, "org": A},
    ]
    for claims in bad:
        with pytest.raises(FederationRefused):
            map_claims(IDP, CONF, claims, known)
    mfa = CONF.model_copy(update={"require_mfa": True})
    with pytest.raises(FederationRefused):
        map_claims(IDP, mfa, {"preferred_username": "z", "org": A, "amr": ["pwd"]}, known)
    assert map_claims(
        IDP, mfa, {"preferred_username": "z", "org": A, "amr": ["pwd", "otp"]}, known
    ).amr == ("pwd", "otp")
