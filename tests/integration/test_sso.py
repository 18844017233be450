"""App credentials on the real exchange path: the hub's OIDC access tokens verified by the
consumer node against the hub's JWKS (the user in the token becoming X-Qiao-User and the
exchange record's end user), and scoped, revocable, expiring API keys."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import update

from qiao.config import HubSettings
from qiao.db import make_engine, session_factory, utcnow
from qiao.exchange.keys import ApiKeyService
from qiao.exchange.models import ApiKey
from qiao.identity.access_tokens import SigningKeys, issue_access_token, node_audience
from qiao.ledger.receipt import parse_receipt
from tests.integration.conftest import City
from tests.integration.test_exchange import problem, records
from tests.integration.test_ledger import _receipt

T = ("transport", "traffic-enforcement")


def hub_keys(city: City) -> tuple[SigningKeys, str]:
    """The hub's own signing keys, from its database (as the hub's token endpoint uses them)."""
    s = HubSettings.load(city.dep.data_dir / "hub" / "hub.toml")
    sessions = session_factory(make_engine(s.database_url))
    return SigningKeys(sessions, timedelta(days=7)), city.dep.hub_url


def token(city: City, **override: Any) -> str:
    keys, issuer = hub_keys(city)
    dep = city.dep
    claims: dict[str, Any] = {
        "issuer": issuer,
        "audience": [node_audience(dep.instance, dep.codes["transport"]), issuer],
        "client_id": "qc_traffic",
        "subject": "user:officer.chen",
        "scope": "openid qiao",
        "ttl": timedelta(minutes=5),
        "extra": {"app": dep.client(*T)},
    }
    claims.update(override)
    return issue_access_token(keys, **claims)


def call(city: City, bearer: str, resource: str = "echo", **headers: str) -> httpx.Response:
    return httpx.get(
        city.url("transport", "police", resource, "/who"),
        headers={
            "X-Qiao-Client": city.dep.client(*T),
            "Authorization": f"Bearer {bearer}",
            "X-Qiao-Purpose": "integration-test",  # one the lab agreements allow
            **headers,
        },
        timeout=30,
    )


def test_an_access_token_names_the_user_in_the_exchange(city: City) -> None:
    r = call(city, token(city), **{"X-Qiao-Purpose": "enforcement"})
    assert r.status_code == 200, r.text
    sent = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert sent["x-qiao-user"] == "user:officer.chen"
    xid = r.headers["x-qiao-id"]
    for dept in ("transport", "police"):
        (rec,) = records(city, dept, xid)
        assert rec["end_user"] == "user:officer.chen"
    # ... and the ledger entry: who looked, when, and why.
    receipt = _receipt(city, xid, "consumer")
    entry = httpx.get(f"{city.dep.hub_url}/ledger/entries/{parse_receipt(receipt).index}")
    fields = json.loads(entry.content)
    assert fields["end_user"] == "user:officer.chen" and fields["purpose"] == "enforcement"


def test_the_app_cannot_override_the_tokens_user(city: City) -> None:
    r = call(city, token(city), **{"X-Qiao-User": "user:the.mayor"})
    assert r.status_code == 200, r.text
    sent = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert sent["x-qiao-user"] == "user:officer.chen"
    (rec,) = records(city, "transport", r.headers["x-qiao-id"])
    assert rec["end_user"] == "user:officer.chen"


def test_access_tokens_the_node_refuses(city: City) -> None:
    dep = city.dep
    keys, issuer = hub_keys(city)
    kid, _ = keys.current()
    now = int(time.time())
    forged = jwt.encode(
        {"alg": "RS256", "kid": kid, "typ": "at+jwt"},
        {
            "iss": issuer,
            "aud": [node_audience(dep.instance, dep.codes["transport"])],
            "sub": "user:x",
            "client_id": "qc_traffic",
            "app": dep.client(*T),
            "exp": now + 300,
        },
        RSAKey.generate_key(2048, private=True),
    )
    bad = {
        "another organization's nodes": token(
            city, audience=[node_audience(dep.instance, dep.codes["police"])]
        ),
        "another instance": token(
            city, audience=[node_audience("CN-OTHER", dep.codes["transport"])]
        ),
        "expired": token(city, ttl=timedelta(seconds=-120)),
        "another issuer": token(city, issuer="https://hub.other-city.gov.cn"),
        "another app": token(city, extra={"app": dep.client("transport", "other-app")}),
        "no app": token(city, extra={}),
        "forged signature": forged,
    }
    for why, tok in bad.items():
        body = problem(call(city, tok), 401, "urn:qiao:problem:client:bad-credential")
        assert body["detail"], why
    # A token asked for sign-in alone does not let the app call the exchange for the user.
    body = problem(
        call(city, token(city, scope="openid profile")), 403, "urn:qiao:problem:client:out-of-scope"
    )
    assert "'qiao'" in body["detail"]


def test_scoped_api_keys(city: City) -> None:
    keys = ApiKeyService(make_engine(city.dep.node_db_url("transport")))
    client = city.dep.client(*T)
    police = city.dep.codes["police"]
    scoped = keys.create(client, scopes=[f"{police}/vehicle-violations"], ttl=timedelta(days=1))
    # outside its scope
    problem(call(city, scoped.secret, "echo"), 403, "urn:qiao:problem:client:out-of-scope")
    # inside its scope
    r = httpx.get(
        city.url("transport", "police", "vehicle-violations"),
        params={"plate": city.city.violations[0].plate},
        headers={
            "X-Qiao-Client": client,
            "Authorization": f"Bearer {scoped.secret}",
            "X-Qiao-Purpose": "traffic-enforcement",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    # whole-organization scope
    org_wide = keys.create(client, scopes=[f"{police}/*"], ttl=timedelta(days=1))
    assert call(city, org_wide.secret, "echo").status_code == 200
    # revoked: refused (the node's cache holds a verdict for at most a few seconds)
    assert keys.revoke(org_wide.key_id)
    deadline = time.monotonic() + 10
    while call(city, org_wide.secret).status_code == 200:
        assert time.monotonic() < deadline, "revocation did not reach the node"
        time.sleep(0.5)
    problem(call(city, org_wide.secret), 401, "urn:qiao:problem:client:bad-credential")
    # expired
    expiring = keys.create(client, scopes=["*"], ttl=timedelta(days=1))
    with make_engine(city.dep.node_db_url("transport")).begin() as c:
        c.execute(
            update(ApiKey)
            .where(ApiKey.key_id == expiring.key_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    problem(call(city, expiring.secret), 401, "urn:qiao:problem:client:bad-credential")
    # another app's key
    other = keys.create(city.dep.client("transport", "other-app"), ttl=timedelta(days=1))
    problem(call(city, other.secret), 401, "urn:qiao:problem:client:bad-credential")
