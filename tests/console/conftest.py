"""A hub with the console, identity and a small catalog, on SQLite, for the console's tests.

One hub per test module (migrations take a moment); tests that lock a name out or move the
clock use names and client addresses of their own, so they do not disturb the others."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qiao.identity.roles import CLI, Role
from tests.catalog.conftest import ELEMENTS, SEX, spec
from tests.identity.support import BASE, PASSWORD, A, B, Hub, make_hub

__all__ = ["BASE", "PASSWORD", "A", "B", "Hub", "csrf_of", "new_client", "sign_in"]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    m = CSRF.search(html)
    assert m, "the page has no form with a CSRF token"
    return m.group(1)


def sign_in(hub: Hub, client: TestClient, username: str, secret: str | None = None) -> Any:
    """Sign in through the console's forms; returns the last response (a redirect)."""
    page = client.get("/console/sign-in")
    r = client.post(
        "/console/sign-in",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    if secret is None:
        return r
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in/code")
    page = client.get(r.headers["location"])
    hub.clock.advance(30)  # a fresh time step: a code is accepted once
    return client.post(
        "/console/sign-in/code",
        data={"code": hub.code(secret), "csrf_token": csrf_of(page.text), "next": "/console/"},
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp: Path = tmp_path_factory.mktemp("console")
    h = make_hub(tmp, f"sqlite:///{tmp / 'hub.db'}", sign_in_max_failures=3)
    catalog = h.app.state.catalog
    catalog.publish_code_list(CLI, SEX)
    for el in ELEMENTS:
        catalog.publish_element(CLI, el)
    catalog.publish(CLI, spec())
    catalog.publish(
        CLI,
        spec(
            code="enterprise-credit",
            name="企业信用信息",
            provider=B,
            abstract="市场主体的登记与信用信息。",
            sharing_type="unconditional",
            sharing_conditions="",
            legal_basis="",
            keywords=["信用"],
            items=[{"field": "name", "name": "企业名称", "element": "DE0002"}],
        ),
    )
    h.user("steward", Role.DATA_STEWARD)
    h.user("approver", Role.APPROVER, totp=True)
    yield h


_addresses = itertools.count(1)


def new_client(hub: Hub) -> TestClient:
    """A browser of its own: its own cookies and its own address (failed sign-ins are
    counted per address too, so one test's failures never lock another test out)."""
    n = next(_addresses)
    address = f"198.51.{n // 250}.{n % 250 + 1}"
    return TestClient(hub.app, base_url=BASE, follow_redirects=False, client=(address, 50000))


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with new_client(hub) as c:
        yield c
