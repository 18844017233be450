"""The catalog pages: Chinese substring search, filters, paging and a resource's detail."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from qiao.identity.roles import CLI
from tests.catalog.conftest import spec
from tests.console.conftest import A, B, Hub, sign_in
from tests.console.pages import Page

ROW_LINK = re.compile(r'<td><a href="/console/catalog/([0-9A-Z]{18})/([a-z0-9-]+)">')


def codes(html: str) -> list[str]:
    return [f"{org}/{code}" for org, code in ROW_LINK.findall(html)]


@pytest.fixture
def browser(hub: Hub, client: TestClient) -> TestClient:
    sign_in(hub, client, "steward")
    return client


def test_two_chinese_characters_find_a_resource(browser: TestClient) -> None:
    r = browser.get("/console/catalog", params={"q": "违法"})
    assert r.status_code == 200
    assert codes(r.text) == [f"{A}/traffic-violations"]
    assert "机动车交通违法记录" in r.text and "共找到 1 项资源" in r.text
    # A substring in the middle of a word (no word breaks in Chinese), and one from the
    # data elements rather than the name.
    assert codes(browser.get("/console/catalog", params={"q": "信用"}).text) == [
        f"{B}/enterprise-credit"
    ]
    assert f"{A}/traffic-violations" in codes(
        browser.get("/console/catalog", params={"q": "号牌"}).text
    )
    none = browser.get("/console/catalog", params={"q": "气象"})
    assert codes(none.text) == [] and "共找到 0 项资源" in none.text


def test_filters_by_provider_and_sharing_type(browser: TestClient) -> None:
    by_b = browser.get("/console/catalog", params={"provider": B})
    assert codes(by_b.text) == [f"{B}/enterprise-credit"]
    assert f'<option value="{B}" selected>' in by_b.text
    free = browser.get("/console/catalog", params={"sharing_type": "unconditional"})
    assert codes(free.text) == [f"{B}/enterprise-credit"]
    both = browser.get("/console/catalog", params={"provider": A, "sharing_type": "unconditional"})
    assert codes(both.text) == []
    # A provider or sharing type that does not exist is ignored, not an error.
    odd = browser.get("/console/catalog", params={"provider": "X", "sharing_type": "maybe"})
    assert odd.status_code == 200 and f"{B}/enterprise-credit" in codes(odd.text)


def test_results_are_paged(hub: Hub, browser: TestClient) -> None:
    for i in range(23):
        hub.app.state.catalog.publish(
            CLI, spec(code=f"batch-{i:02d}", name=f"分页测试资源{i:02d}", keywords=["分页"])
        )
    first = browser.get("/console/catalog", params={"q": "分页测试"})
    assert len(codes(first.text)) == 20 and "共找到 23 项资源" in first.text
    assert "第 1 页，共 2 页" in first.text
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt
    second = browser.get(nxt.group(1).replace("&amp;", "&"))
    assert len(codes(second.text)) == 3
    assert not set(codes(first.text)) & set(codes(second.text))
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    beyond = browser.get("/console/catalog", params={"q": "分页测试", "page": "9999"})
    assert beyond.status_code == 200 and codes(beyond.text) == []


def test_resource_detail_shows_what_a_requester_needs(browser: TestClient) -> None:
    r = browser.get(f"/console/catalog/{A}/traffic-violations")
    assert r.status_code == 200
    text = r.text
    for shown in (
        "机动车交通违法记录",  # name
        "本市机动车道路交通安全违法行为记录",  # abstract
        "甲局",  # provider
        "有条件共享",  # sharing type
        "仅用于行政审批核查",  # conditions
        "《中华人民共和国道路交通安全法》第一百零五条",  # legal basis
        "机动车号牌号码",  # a data element of an item
        "DE0005",
        "urn:qiao:schema:",  # the schema view
    ):
        assert shown in text, shown
    rows = [e for e in Page.parse(text).all("tr")]
    assert len(rows) == 3  # header and the two items
    missing = browser.get(f"/console/catalog/{A}/no-such-thing")
    assert missing.status_code == 404 and "未找到" in missing.text


def test_dashboard_counts_the_catalog(browser: TestClient) -> None:
    r = browser.get("/console/")
    assert r.status_code == 200
    assert "资源总数" in r.text and "本单位发布" in r.text
    assert re.search(r'href="/console/catalog\?sharing_type=unconditional">1</a>', r.text)
