"""Full-text search of the catalog, with Chinese substring matching on SQLite and PostgreSQL.

Chinese has no spaces between words, so word tokenizers miss "违法" inside "交通违法记录".
Qiao searches substrings instead, over one lower-cased ``search_text`` per resource (name,
abstract, keywords, provider name, item and data element names):

* 3 characters or more: a trigram index narrows the candidates — SQLite's FTS5 ``trigram``
  tokenizer (a quoted phrase is a substring), PostgreSQL's pg_trgm GIN index serving
  ``LIKE '%…%'`` — and an exact substring test decides, so both databases answer the same.
* 1–2 characters: no trigram index can serve them (a trigram needs three characters).
  Each resource also stores ``short_grams``: every distinct character and every pair of
  adjacent characters of its text that are Chinese ideographs or ASCII letters and digits.
  A 1–2 character query made of such characters is a single exact lookup of that gram —
  an FTS5 ``unicode61`` table on SQLite, a GIN index over the gram array on PostgreSQL —
  which is exact, since a gram is present exactly when it is a substring. Other short
  queries (punctuation, other scripts) scan ``search_text`` with ``instr``/``strpos``.

The query text is always data: it is a bound parameter, FTS5 phrase quotes are doubled and
LIKE wildcards escaped, so ``"``, ``OR``, ``NEAR``, ``*``, ``%``, ``_`` or ``'; DROP TABLE``
are searched for literally. Results are ordered by provider then resource code (byte order
on both databases) and paged with limit/offset; ``total`` counts every match.
``bench/catalog_search.py`` measures all of this at 100,000 resources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, TextClause, false, func, select, text
from sqlalchemy.orm import Session

from qiao import problems
from qiao.catalog.models import CatalogResource
from qiao.catalog.spec import Classification, ResourceStatus, SharingMethod, SharingType
from qiao.problems import Problem

MAX_QUERY = 200
MAX_LIMIT = 200
# Counting stops here: a substring such as "证" can match half of a city's catalog, and an
# exact count of that costs a scan of every match. Pages reach as far (GitHub's search
# stops at 1,000 results; Elasticsearch counts to 10,000 by default).
COUNT_CAP = 1000
MAX_WINDOW = 1000


def normalize(query: str) -> str:
    """The form both the index and the query use: lower-case, whitespace runs as one space
    (so a query never spans the line breaks between fields)."""
    return " ".join(query.lower().split())


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    provider: str | None = None
    sharing_type: SharingType | None = None
    sharing_method: SharingMethod | None = None
    classification: Classification | None = None
    status: ResourceStatus | None = None
    limit: int = 20
    offset: int = 0


@dataclass(frozen=True)
class SearchHit:
    org: str
    code: str
    name: str
    provider_name: str
    sharing_type: str
    classification: str
    sharing_methods: list[str]
    status: str
    version: int


@dataclass(frozen=True)
class SearchPage:
    total: int
    limit: int
    offset: int
    hits: list[SearchHit] = field(default_factory=list)
    total_exact: bool = True  # False: at least ``total`` (= COUNT_CAP) resources match

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "total_exact": self.total_exact,
            "limit": self.limit,
            "offset": self.offset,
            "hits": [h.__dict__ for h in self.hits],
        }


@dataclass
class _Plan:
    conds: list[ColumnElement[bool] | TextClause]
    # On SQLite, when the text test is exactly one FTS5 match and nothing else filters, the
    # count can come from the FTS table alone (no lookups into the wide resource rows).
    fts_count: TextClause | None = None
    # The same conditions with the FTS5 match written so that SQLite cannot drive the query
    # from it (a unary "+" makes a term unusable for an index), for walking the order index.
    walk_conds: list[ColumnElement[bool] | TextClause] | None = None


def _plan(s: Session, q: SearchQuery) -> _Plan:
    r = CatalogResource
    conds: list[ColumnElement[bool] | TextClause] = []
    if q.provider:
        conds.append(r.org_code == q.provider.upper())
    if q.sharing_type:
        conds.append(r.sharing_type == q.sharing_type.value)
    if q.classification:
        conds.append(r.classification == q.classification.value)
    if q.status:
        conds.append(r.status == q.status.value)
    if q.sharing_method:
        # ",service,events," holds enum values only, so this LIKE has no user text in it.
        conds.append(r.sharing_methods.like(f"%,{q.sharing_method.value},%"))
    needle = normalize(q.text)[:MAX_QUERY]
    if not needle:
        return _Plan(conds)
    if "\x00" in needle:
        # No indexed text holds a NUL (PostgreSQL's text cannot), so nothing matches; and
        # the query must not reach the database: FTS5 reads a NUL as the end of the query
        # ("unterminated string"), and PostgreSQL refuses the parameter outright.
        conds.append(false())
        return _Plan(conds)
    filtered = bool(conds)
    postgres = s.get_bind().dialect.name == "postgresql"
    if len(needle) < 3 and all(map(_gram_char, needle)):
        if postgres:
            # Equivalent to the gram test below, and ~15x cheaper per row when the planner
            # walks rows instead of the index (a common character). It comes first because
            # PostgreSQL keeps the written order of quals of equal cost, so the gram array is
            # only split for rows that already contain the text.
            conds.append(func.strpos(r.search_text, needle) > 0)
            # The same expression as the GIN index (migration 0006), so the index serves it.
            conds.append(
                text(
                    "string_to_array(catalog_resources.short_grams, ' ') "
                    "@> ARRAY[CAST(:gram AS text)]"
                ).bindparams(gram=needle)
            )
            return _Plan(conds)
        return _fts(conds, filtered, "catalog_grams", f'"{needle}"')
    if len(needle) < 3:
        conds.append((func.strpos if postgres else func.instr)(r.search_text, needle) > 0)
        return _Plan(conds)
    if postgres:
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(r.search_text.like(f"%{escaped}%", escape="\\"))
        return _Plan(conds)
    # A quoted FTS5 phrase (quotes doubled) is plain text. The trigram table is case
    # sensitive over already lower-cased text, so a phrase match is exactly a substring.
    return _fts(conds, filtered, "catalog_search", '"' + needle.replace('"', '""') + '"')


def _fts(
    conds: list[ColumnElement[bool] | TextClause], filtered: bool, table: str, phrase: str
) -> _Plan:
    # ``table`` is one of two fixed names, never user text.
    match = text(f"SELECT rowid FROM {table} WHERE {table} MATCH :phrase").bindparams(phrase=phrase)
    walk = [
        *conds,
        text(
            f"+catalog_resources.id IN (SELECT rowid FROM {table} WHERE {table} MATCH :phrase)"
        ).bindparams(phrase=phrase),
    ]
    conds.append(CatalogResource.id.in_(match))
    count = None
    if not filtered:
        count = text(f"SELECT count(*) FROM {table} WHERE {table} MATCH :phrase").bindparams(
            phrase=phrase
        )
    return _Plan(conds, count, walk)


def search(s: Session, q: SearchQuery) -> SearchPage:
    limit = max(1, min(q.limit, MAX_LIMIT))
    offset = max(0, q.offset)
    if offset + limit > MAX_WINDOW:
        raise Problem(
            problems.VALIDATION,
            f"search pages reach the first {MAX_WINDOW} results only (offset + limit); "
            "narrow the query or add filters",
        )
    sqlite = s.get_bind().dialect.name == "sqlite"
    if not sqlite:
        # A generic plan for a prepared search cannot know whether a gram is rare or common
        # and may scan every row; plan each search for its own text.
        s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        # JIT compiling a search whose estimated cost looks high (a common character) costs
        # more than the search itself: tens of milliseconds of LLVM for a query that runs in
        # a few. Interactive lookups are what JIT is wrong for.
        s.execute(text("SET LOCAL jit = off"))
    plan = _plan(s, q)
    r = CatalogResource
    if plan.fts_count is not None:
        total = s.scalar(plan.fts_count) or 0
    else:
        # With other filters, SQLite does better driving from their indexes and testing
        # membership in the FTS match than the other way round.
        where = plan.walk_conds if sqlite and plan.walk_conds is not None else plan.conds
        capped = select(r.id).where(*where).limit(COUNT_CAP + 1).subquery()
        total = s.scalar(select(func.count()).select_from(capped)) or 0
    exact = total <= COUNT_CAP
    total = min(total, COUNT_CAP)
    conds = plan.conds
    if sqlite and plan.walk_conds is not None and (plan.fts_count is None or not exact):
        conds = plan.walk_conds
    elif sqlite and total and plan.walk_conds is not None:
        # Sorting every match costs ~total; walking the (org, code) index until the page is
        # full costs ~(offset+limit)·rows/total. SQLite's planner does not weigh this for
        # FTS matches, so choose here.
        size = s.scalar(select(func.max(r.id))) or 0
        if total * total > (offset + limit) * size:
            conds = plan.walk_conds
    rows = (
        select(
            r.org_code,
            r.code,
            r.name,
            r.provider_name,
            r.sharing_type,
            r.classification,
            r.sharing_methods,
            r.status,
            r.latest_version,
        )
        .where(*conds)
        .order_by(r.org_code, r.code)
        .limit(limit)
        .offset(offset)
    )
    bounded = not sqlite and exact and total > 0 and bool(normalize(q.text))
    if bounded:
        # At most COUNT_CAP matches: fetching them through the text index and sorting them is
        # bounded, whereas walking the (org, code) index can pass tens of thousands of rows
        # when the matches cluster at one provider (the planner assumes they are spread).
        s.execute(text("SET LOCAL enable_indexscan = off"))
    hits = [
        SearchHit(
            org=row[0],
            code=row[1],
            name=row[2],
            provider_name=row[3],
            sharing_type=row[4],
            classification=row[5],
            sharing_methods=[m for m in row[6].split(",") if m],
            status=row[7],
            version=row[8],
        )
        for row in s.execute(rows)
    ]
    if bounded:
        s.execute(text("SET LOCAL enable_indexscan = on"))
    return SearchPage(total=total, limit=limit, offset=offset, hits=hits, total_exact=exact)


def _gram_char(c: str) -> bool:
    """Characters the short-query index covers: ASCII letters and digits, CJK ideographs
    (URO, extension A, compatibility ideographs, extensions B–F). FTS5's unicode61 tokenizer
    treats each of these as a token character, so a gram of them is exactly one token."""
    o = ord(c)
    return (
        ("a" <= c <= "z")
        or ("0" <= c <= "9")
        or 0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x2FA1F
    )


def short_grams(indexed: str) -> str:
    """Every distinct 1- and 2-character gram of the indexed text made of gram characters,
    space-separated, in first-seen order."""
    grams: dict[str, None] = {}
    prev = ""
    for c in indexed:
        if _gram_char(c):
            grams[c] = None
            if prev:
                grams[prev + c] = None
            prev = c
        else:
            prev = ""
    return " ".join(grams)


def search_text(
    *,
    name: str,
    name_en: str,
    abstract: str,
    keywords: tuple[str, ...],
    provider_name: str,
    item_names: list[str],
    element_names: list[str],
) -> str:
    """The indexed text of a resource: one normalized field per line, duplicates dropped."""
    parts: list[str] = []
    for value in (name, name_en, abstract, *keywords, provider_name, *item_names, *element_names):
        norm = normalize(value)
        if norm and norm not in parts:
            parts.append(norm)
    return "\n".join(parts)
