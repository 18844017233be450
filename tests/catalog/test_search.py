"""Search: Chinese substrings of 1, 2 and 3+ characters, filters, paging and hostile text.

Every query is checked against a plain-Python reference (substring of the normalized
fields, ordered by provider then code), so SQLite and PostgreSQL must give the same rows.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from qiao import problems
from qiao.catalog.models import CatalogResource
from qiao.catalog.search import SearchQuery, normalize
from qiao.catalog.service import CatalogService
from qiao.catalog.spec import Classification, ResourceStatus, SharingMethod, SharingType
from qiao.identity.roles import CLI
from qiao.problems import Problem
from tests.catalog.conftest import A, B, spec

RESOURCES = [
    (A, "traffic-violations", "机动车交通违法记录", "道路交通安全违法行为", "conditional"),
    (A, "driver-licenses", "机动车驾驶证信息", "驾驶证状态与记分", "conditional"),
    (A, "household", "户籍人口基本信息", "常住人口户籍登记", "none"),
    (B, "business-licenses", "企业营业执照信息", "市场主体登记信息 100% 公开", "unconditional"),
    (B, "violations", "市场监管行政处罚", '企业违法违规处罚 OR NEAR "quoted" _x_', "unconditional"),
    (B, "food-safety", "食品安全抽检结果", "食品抽检 'quote", "unconditional"),
]


@pytest.fixture
def loaded(catalog: CatalogService) -> CatalogService:
    for org, code, name, abstract, sharing in RESOURCES:
        methods = ["service", "dataset"] if code.endswith("licenses") else ["service"]
        catalog.publish(
            CLI,
            spec(
                provider=org,
                code=code,
                name=name,
                abstract=abstract,
                sharing_type=sharing,
                legal_basis="" if sharing == "unconditional" else "法规",
                sharing_conditions="仅限核查" if sharing == "conditional" else "",
                sharing_methods=methods,
                classification="basic" if code == "household" else "departmental",
                keywords=[],
            ),
        )
    catalog.deprecate(CLI, A, "driver-licenses")
    return catalog


def _reference(catalog: CatalogService, q: SearchQuery) -> list[tuple[str, str]]:
    with catalog.registry._sessions() as s:
        rows = list(s.scalars(select(CatalogResource)))
    needle = normalize(q.text)
    out = [
        (r.org_code, r.code)
        for r in rows
        if needle in r.search_text
        and (q.provider is None or r.org_code == q.provider)
        and (q.sharing_type is None or r.sharing_type == q.sharing_type.value)
        and (q.classification is None or r.classification == q.classification.value)
        and (q.status is None or r.status == q.status.value)
        and (q.sharing_method is None or f",{q.sharing_method.value}," in r.sharing_methods)
    ]
    return sorted(out, key=lambda k: (k[0].encode(), k[1].encode()))


QUERIES = [
    SearchQuery("违"),
    SearchQuery("违法"),
    SearchQuery("违法行为"),
    SearchQuery("驾驶证"),
    SearchQuery("信息"),
    SearchQuery("市公安局"),  # the provider's name
    SearchQuery("号牌"),  # an item name
    SearchQuery("违法行为代码"),  # a data element name
    SearchQuery("  机动车   交通 "),
    SearchQuery(""),
    SearchQuery("信息", provider=B),
    SearchQuery("信息", status=ResourceStatus.PUBLISHED),
    SearchQuery("", sharing_type=SharingType.UNCONDITIONAL),
    SearchQuery("", sharing_method=SharingMethod.DATASET),
    SearchQuery("", classification=Classification.BASIC),
    SearchQuery("不存在的东西"),
]


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: repr(q.text))
def test_results_match_the_reference(loaded: CatalogService, q: SearchQuery) -> None:
    page = loaded.search(q)
    expected = _reference(loaded, q)
    assert [(h.org, h.code) for h in page.hits] == expected[: q.limit]
    assert page.total == len(expected)


def test_short_and_long_queries_find_what_people_expect(loaded: CatalogService) -> None:
    # Every resource has the item 违法行为, so 2 characters find all; 户籍 finds one.
    assert loaded.search(SearchQuery("违法")).total == len(RESOURCES)
    assert [h.code for h in loaded.search(SearchQuery("户籍")).hits] == ["household"]
    assert [h.code for h in loaded.search(SearchQuery("执")).hits] == ["business-licenses"]
    hit = loaded.search(SearchQuery("交通违法")).hits[0]
    assert (hit.org, hit.code, hit.version, hit.sharing_type) == (
        A,
        "traffic-violations",
        1,
        "conditional",
    )
    assert loaded.search(SearchQuery("驾驶证")).hits[0].status == "deprecated"


def test_paging_is_deterministic(loaded: CatalogService) -> None:
    everything = [(h.org, h.code) for h in loaded.search(SearchQuery("", limit=200)).hits]
    paged: list[tuple[str, str]] = []
    for offset in range(0, 6, 2):
        page = loaded.search(SearchQuery("", limit=2, offset=offset))
        assert page.total == len(RESOURCES)
        paged += [(h.org, h.code) for h in page.hits]
    assert paged == everything and len(everything) == len(RESOURCES)
    assert loaded.search(SearchQuery("", limit=2, offset=100)).hits == []


HOSTILE = [
    '"',
    '""',
    "'",
    "OR",
    " OR NEAR",
    'NEAR("a" "b")',
    "*",
    "违*",
    "%",
    "100%",
    "_",
    "_x_",
    "\\",
    "'; DROP TABLE catalog_resources; --",
    '"quoted"',
    "^AND NOT:",
    "违法 OR 食品",
    "(",
    "x" * 500,
    # Found by reliability/test_fuzz_hub.py: a NUL ended FTS5's quoted phrase early, and the
    # search answered 500 ("unterminated string"); PostgreSQL refuses the parameter.
    "违\x00法",
    "abc\x00",
    "\x00",
]


@pytest.mark.parametrize("needle", HOSTILE)
def test_query_syntax_is_plain_text(loaded: CatalogService, needle: str) -> None:
    q = SearchQuery(needle)
    page = loaded.search(q)
    expected = _reference(loaded, SearchQuery(needle[:200]))
    assert [(h.org, h.code) for h in page.hits] == expected
    with loaded.registry._sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogResource)) == len(RESOURCES)


def test_literal_wildcards_match_only_themselves(loaded: CatalogService) -> None:
    assert [h.code for h in loaded.search(SearchQuery("100%")).hits] == ["business-licenses"]
    assert [h.code for h in loaded.search(SearchQuery("_x_")).hits] == ["violations"]
    assert [h.code for h in loaded.search(SearchQuery(" OR NEAR")).hits] == ["violations"]
    assert loaded.search(SearchQuery("%")).total == 1


def test_index_follows_new_versions(loaded: CatalogService) -> None:
    loaded.publish(
        CLI,
        spec(
            provider=B,
            code="food-safety",
            name="食品安全抽检",
            abstract="新摘要",
            sharing_type="unconditional",
            legal_basis="",
            sharing_conditions="",
        ),
    )
    assert loaded.search(SearchQuery("新摘要")).total == 1
    assert loaded.search(SearchQuery("食品抽检 'quote")).total == 0
    with loaded.registry._sessions() as s:
        if s.get_bind().dialect.name == "sqlite":
            # The FTS table agrees with its content table after updates.
            s.execute(text("INSERT INTO catalog_search(catalog_search) VALUES ('integrity-check')"))


@pytest.mark.parametrize("needle", ["违法", "信", "机动车", "信息"])
def test_small_pages_of_common_terms_walk_the_order_index(
    loaded: CatalogService, needle: str
) -> None:
    # total² > (offset + limit) · rows: SQLite walks the (org, code) index instead of
    # sorting; the rows must be the same either way.
    expected = _reference(loaded, SearchQuery(needle))
    got = []
    for offset in range(len(expected)):
        page = loaded.search(SearchQuery(needle, limit=1, offset=offset))
        assert page.total == len(expected)
        got += [(h.org, h.code) for h in page.hits]
    assert got == expected


def test_counts_stop_at_the_cap_and_pages_at_the_window(
    loaded: CatalogService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qiao.catalog import search as search_mod

    monkeypatch.setattr(search_mod, "COUNT_CAP", 3)
    for needle in ("", "信息", "违法", "机动车"):
        page = loaded.search(SearchQuery(needle, limit=2))
        expected = _reference(loaded, SearchQuery(needle))
        assert page.total == min(3, len(expected))
        assert page.total_exact == (len(expected) <= 3)
        assert [(h.org, h.code) for h in page.hits] == expected[:2]
    with pytest.raises(Problem) as exc:
        loaded.search(SearchQuery("信息", limit=20, offset=search_mod.MAX_WINDOW - 10))
    assert exc.value.kind is problems.VALIDATION
