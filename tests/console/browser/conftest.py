"""The demo city on loopback and Debian's headless Chromium, for the console's browser tests.

The hub and the departments' nodes run as real processes (``qiao.demo.city.Deployment``, as
``qiao demo`` and the integration tests start them), the demo backends in a thread; Chromium
is driven by Playwright over the DevTools protocol with the browser Debian installed, so
nothing is downloaded at run time. Without Chromium (or Playwright) the tests skip with a
one-line reason, except under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from qiao.demo.city import Deployment
from qiao.demo.people import DemoCity as CityData
from tests.conftest import IN_CI

if TYPE_CHECKING:  # Playwright itself is imported only once Chromium is known to be there
    from playwright.sync_api import Browser, BrowserContext

CHROMIUM = os.environ.get("QIAO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Screenshots of the main pages, for people to look at (git-ignored; CI keeps the folder).
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
# Every wait on the page is bounded: a step that takes longer has failed.
STEP_MS = 15_000


def _missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, one browser for the module (a context per test).

    Module-scoped, not session-scoped: Playwright's sync API runs an event loop in this
    thread while it is open, and the asyncio tests of later modules need the thread free."""
    reason = _missing()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class DemoCity:
    """The running demo: the hub's address, the departments' nodes and the people's secrets."""

    dep: Deployment
    people: dict[str, dict[str, Any]]  # sign-in name -> users.json entry
    data: CityData  # the people, vehicles and records behind the demo backends

    @property
    def hub_url(self) -> str:
        return self.dep.hub_url


@pytest.fixture(scope="module")
def demo(chromium: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCity]:
    """A hub with the demo city's catalog, people and agreements; the nodes of public
    security (the provider in these tests, with its demo backend), transport and market
    regulation (with public security, the ledger's witnesses), and the Donghu district office
    (the applicant). Started after the browser, so a machine without Chromium skips before
    starting any process."""
    from qiao.demo.backends import public_security
    from qiao.demo.people import build_city
    from tests.integration.conftest import LoopThread

    data_dir: Path = tmp_path_factory.mktemp("console-browser")
    dep = Deployment(data_dir=data_dir)
    data = build_city()
    loop = LoopThread()
    try:
        dep.backend_urls = {"police": loop.serve(public_security(data))}
        reg = dep.start_hub()
        dep.start_nodes(reg, only={"police", "transport", "market", "district"})
        users = json.loads((dep.data_dir / "users.json").read_text(encoding="utf-8"))
        yield DemoCity(dep, {u["username"]: u for u in users["users"]}, data)
    finally:
        dep.stop()
        loop.close()


@pytest.fixture
def context(chromium: Browser, demo: DemoCity) -> Iterator[BrowserContext]:
    """A browser of its own (cookies, language) for one test, in Chinese as a Chinese
    official's browser would ask for it (Accept-Language)."""
    ctx = chromium.new_context(
        base_url=demo.hub_url, locale="zh-CN", viewport={"width": 1280, "height": 900}
    )
    ctx.set_default_timeout(STEP_MS)
    ctx.set_default_navigation_timeout(STEP_MS)
    try:
        yield ctx
    finally:
        ctx.close()
