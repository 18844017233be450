"""The console in a real browser (issue 8): Debian's headless Chromium against the demo city.

A person signs in with a password and a TOTP code, searches the catalog in Chinese, applies
for a conditional resource; the provider's approver finds the application in the inbox and
approves it; an exchange made through the demo shows in the audit page with a verified
receipt; and the language switch turns the page from Chinese to English and back.

The pages are found as a person finds them: by the labels, roles and words on screen, in the
console's own catalogs (``qiao/console/locale``), never by CSS classes. Screenshots of the
main pages are saved under ``test-artifacts/console/``.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import httpx
import pyotp

from qiao.console import i18n
from tests.console.browser.conftest import ARTIFACTS, DemoCity

if TYPE_CHECKING:  # Playwright itself is imported only once Chromium is known to be there
    from playwright.sync_api import BrowserContext, Locator, Page

_zh = i18n.load_translations(i18n.CHINESE)
_en = i18n.load_translations(i18n.ENGLISH)


def zh(msgid: str) -> str:
    """What the Chinese page says for ``msgid`` (the catalog's message ids are English)."""
    text = _zh.gettext(msgid)
    assert text != msgid, f"no Chinese translation for {msgid!r}"
    return text


def en(msgid: str) -> str:
    return _en.gettext(msgid)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, demo: DemoCity, username: str, *, shots: bool = False) -> None:
    """Sign in through the forms, with the TOTP code computed from the person's secret
    (RFC 6238, as their authenticator app would) when they have one."""
    person = demo.people[username]
    page.goto("/console/sign-in")
    page.get_by_label(zh("Sign-in name")).fill(username)
    page.get_by_label(zh("Password")).fill(person["password"])
    if shots:
        shot(page, "01-sign-in")
    page.get_by_role("button", name=zh("Sign in"), exact=True).click()
    if person.get("totp_secret"):
        page.get_by_role("heading", name=zh("Enter your code")).wait_for()
        page.get_by_label(zh("Code or recovery code")).fill(pyotp.TOTP(person["totp_secret"]).now())
        if shots:
            shot(page, "02-code")
        page.get_by_role("button", name=zh("Continue")).click()
    # Signed in: the header offers to sign out, and the page is a console page, not sign-in.
    page.get_by_role("button", name=zh("Sign out")).wait_for()
    assert "/console/sign-in" not in page.url


def nav(page: Page, section: str) -> None:
    """Follow a link of the main navigation (its label in Chinese)."""
    page.get_by_role("navigation", name=zh("Main navigation")).get_by_role(
        "link", name=zh(section)
    ).click()


def test_sign_in_with_password_and_totp(context: BrowserContext, demo: DemoCity) -> None:
    page = context.new_page()
    # A wrong code is refused and the person stays on the code page.
    person = demo.people["transport-approver"]
    page.goto("/console/")
    assert "/console/sign-in" in page.url  # not signed in: sent to sign in
    page.get_by_label(zh("Sign-in name")).fill("transport-approver")
    page.get_by_label(zh("Password")).fill(person["password"])
    page.get_by_role("button", name=zh("Sign in"), exact=True).click()
    code = pyotp.TOTP(person["totp_secret"]).now()
    wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
    page.get_by_label(zh("Code or recovery code")).fill(wrong)
    page.get_by_role("button", name=zh("Continue")).click()
    refused = zh("The code is not right. Wait for the next code, or use a recovery code.")
    assert page.get_by_role("alert").inner_text().strip() == refused
    assert page.get_by_role("button", name=zh("Sign out")).count() == 0

    sign_in(page, demo, "transport-approver", shots=True)
    # The dashboard greets the person with their organization, in Chinese by default.
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    assert page.get_by_text("桥城市交通运输局").first.is_visible()
    assert page.get_by_role("navigation", name=zh("Main navigation")).is_visible()
    shot(page, "03-dashboard")


def test_catalog_search_in_chinese_opens_a_resource(
    context: BrowserContext, demo: DemoCity
) -> None:
    page = context.new_page()
    sign_in(page, demo, "district-app-developer")
    nav(page, "Catalog")
    # Two characters from the middle of 机动车违法记录查询: a substring, not a word prefix.
    page.get_by_role("search").get_by_label(zh("Search"), exact=True).fill("违法")
    page.get_by_role("search").get_by_role("button", name=zh("Search")).click()
    page.wait_for_url(re.compile(r"/console/catalog\?.*q="))
    results = page.get_by_role("table")
    assert results.get_by_role("link", name="机动车违法记录查询").is_visible()
    # Nothing without those two characters is listed (公共自行车站点状态 is in the catalog).
    assert results.get_by_role("link", name="公共自行车站点状态").count() == 0
    shot(page, "04-catalog")
    results.get_by_role("link", name="机动车违法记录查询").click()
    page.get_by_role("heading", name=re.compile("机动车违法记录查询")).first.wait_for()
    assert page.get_by_text("桥城市公安局").first.is_visible()
    assert page.get_by_text(zh("Conditional sharing"), exact=True).first.is_visible()
    assert page.get_by_role("link", name=zh("Apply for access")).is_visible()
    shot(page, "05-resource")


def test_apply_then_the_providers_approver_approves(
    context: BrowserContext, demo: DemoCity
) -> None:
    # Without an agreement the district office's app is refused at the nodes.
    assert violations(demo, "district", "bike-dispatch", "bike-dispatch").status_code == 403
    page = context.new_page()
    # The Donghu district office applies for public security's violation records.
    sign_in(page, demo, "district-org-admin")
    nav(page, "Catalog")
    page.get_by_role("search").get_by_label(zh("Search"), exact=True).fill("违法")
    page.get_by_role("search").get_by_role("button", name=zh("Search")).click()
    page.get_by_role("table").get_by_role("link", name="机动车违法记录查询").click()
    page.get_by_role("link", name=zh("Apply for access")).click()
    page.get_by_label(zh("Purposes (codes, e.g. traffic-enforcement)")).fill("bike-dispatch")
    page.get_by_label(zh("What the data is needed for")).fill("辖区停放秩序管理中核查车辆违法记录")
    page.get_by_label(zh("Legal basis")).fill("《中华人民共和国道路交通安全法》第五条")
    shot(page, "06-apply")
    page.get_by_role("button", name=zh("Submit the application")).click()
    page.get_by_role("heading", name=re.compile(zh("Request"))).first.wait_for()
    request_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert page.get_by_text(zh("Awaiting decision"), exact=True).first.is_visible()

    # Sign out; public security's approver signs in and finds it in the inbox.
    page.get_by_role("button", name=zh("Sign out")).click()
    page.get_by_role("status").filter(has_text=zh("You have signed out.")).wait_for()
    sign_in(page, demo, "police-approver")
    nav(page, "Requests")
    inbox = page.get_by_role("table")
    row = inbox.get_by_role("row").filter(has_text=request_id)
    assert row.get_by_text("桥城市东湖区人民政府办公室").is_visible()
    shot(page, "07-requests-inbox")
    row.get_by_role("link", name=request_id).click()
    page.get_by_role("heading", name=zh("Approve, possibly narrowed")).wait_for()
    # Narrow it: the internal record number is not needed for the stated purpose.
    page.get_by_role("checkbox", name=re.compile("record_id")).uncheck()
    shot(page, "08-request")
    page.get_by_role("button", name=zh("Approve"), exact=True).click()

    # Approved: the request says so and links its agreement, whose signatures verify.
    page.get_by_text(zh("Approved"), exact=True).first.wait_for()
    assert page.get_by_role("button", name=zh("Approve"), exact=True).count() == 0
    page.get_by_role("link", name=re.compile(r"^agr-")).click()
    page.wait_for_url(re.compile(r"/console/agreements/agr-"))
    assert page.get_by_text("桥城市东湖区人民政府办公室").first.is_visible()
    # Narrowed as the approver chose: the internal record number is not among its fields.
    fields = page.get_by_role("table").first
    assert fields.get_by_text("plate", exact=True).is_visible()
    assert fields.get_by_text("record_id", exact=True).count() == 0
    assert page.get_by_text(zh("Verified"), exact=True).count() >= 2  # both parties' signatures
    shot(page, "09-agreement")

    # The agreement reaches both nodes with the next global configuration: the district
    # office's app now gets the records, without the field the approver took out.
    deadline = time.monotonic() + 30
    while (r := violations(demo, "district", "bike-dispatch", "bike-dispatch")).status_code != 200:
        assert time.monotonic() < deadline, f"the approved agreement is not in force: {r.text}"
        time.sleep(0.5)
    records = r.json()["violations"]
    assert records and all("record_id" not in v and "plate" in v for v in records)


def violations(demo: DemoCity, dept: str, app: str, purpose: str) -> httpx.Response:
    """``dept``'s app looks up a vehicle's violations at public security through its node,
    as ``qiao demo`` does."""
    dep, node = demo.dep, demo.dep.nodes[dept]
    return httpx.get(
        f"{node.url}/r1/{dep.codes['police']}/vehicle-violations",
        params={"plate": demo.data.violations[0].plate},
        headers={
            "X-Qiao-Client": dep.client(dept, app),
            "Authorization": f"Bearer {node.api_keys[app]}",
            "X-Qiao-Purpose": purpose,
        },
        timeout=20,
    )


def exchange(demo: DemoCity) -> str:
    """An exchange under the demo's own agreement (transport's, approved narrowed and
    masked when the demo was set up); returns its exchange id."""
    r = violations(demo, "transport", "traffic-enforcement", "traffic-enforcement")
    assert r.status_code == 200, r.text
    return r.headers["X-Qiao-Id"]


def until(page: Page, shown: Locator, what: str, seconds: float = 30.0) -> None:
    """Reload ``page`` until ``shown`` (a locator) is on it: the ledger takes a moment to
    record an exchange and to have its checkpoint cosigned by the witnesses."""
    deadline = time.monotonic() + seconds
    while shown.count() == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not shown within {seconds} s")
        page.wait_for_timeout(500)
        page.reload()


def test_an_exchange_shows_in_the_audit_page_with_a_verified_receipt(
    context: BrowserContext, demo: DemoCity
) -> None:
    xid = exchange(demo)
    page = context.new_page()
    sign_in(page, demo, "police-auditor")
    nav(page, "Audit")
    search = page.get_by_role("search")
    search.get_by_label(zh("Exchange ID")).fill(xid)
    search.get_by_role("button", name=zh("Search")).click()
    page.wait_for_url(re.compile(r"/console/audit\?.*exchange_id="))
    link = page.get_by_role("table").get_by_role("link", name=xid, exact=True)
    until(page, link, "the exchange in the audit search")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=xid, exact=True))
    assert row.get_by_text("vehicle-violations").is_visible()
    assert row.get_by_text("traffic-enforcement", exact=True).is_visible()
    shot(page, "10-audit")
    link.click()
    page.get_by_role("heading", name=zh("Receipt")).wait_for()
    verified = page.get_by_role("status").get_by_text(zh("Verified"), exact=True)
    until(page, verified, "the receipt verified in the page")
    assert page.get_by_text(zh("Not verified"), exact=True).count() == 0
    # The record names the agreement it was made under, and carries no payload: hashes only.
    assert page.get_by_role("link", name=demo.dep.sharing.agreements["violations"]).is_visible()
    assert page.get_by_text(demo.data.violations[0].plate).count() == 0
    shot(page, "10-audit-exchange")


def test_language_switch(context: BrowserContext, demo: DemoCity) -> None:
    page = context.new_page()
    sign_in(page, demo, "market-data-steward")
    nav(page, "Catalog")
    heading = page.get_by_role("heading", level=1)
    assert heading.inner_text() == zh("Catalog")
    page.get_by_role("button", name="English").click()
    page.wait_for_function("document.documentElement.lang === 'en'", timeout=10_000)
    assert heading.inner_text() == en("Catalog")
    assert page.get_by_role("button", name=en("Sign out")).is_visible()
    assert page.url.endswith("/console/catalog")  # the same page, in the other language
    shot(page, "11-catalog-english")
    # The choice is kept (a cookie): the next page is in English too, and back to Chinese.
    page.goto("/console/")
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_role("button", name="中文").click()
    page.wait_for_function("document.documentElement.lang === 'zh-Hans'", timeout=10_000)
    assert page.get_by_role("button", name=zh("Sign out")).is_visible()
