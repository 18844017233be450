"""The console's languages: Simplified Chinese (the default) and English.

Messages live in Babel catalogs (``locale/<locale>/LC_MESSAGES/messages.po``). They are read
as ``.po`` files when the hub starts, with Babel's own reader, so installing the hub needs no
compile step and the repository holds no generated ``.mo`` files. The message ids are the
English text; the English catalog repeats them so that a missing translation is caught by a
test rather than shown as an id.

Which language a page is in: the ``qiao_lang`` cookie the language switch sets, else the
browser's Accept-Language (RFC 9110 §12.5.4), else Chinese.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
COOKIE = "qiao_lang"


@dataclass(frozen=True)
class Language:
    code: str  # the cookie's value and the page's lang attribute (BCP 47)
    locale: str  # Babel's locale identifier, the catalog's folder
    name: str  # the language's own name, as the switch shows it


CHINESE = Language("zh-Hans", "zh_Hans", "中文")
ENGLISH = Language("en", "en", "English")
LANGUAGES = (CHINESE, ENGLISH)
DEFAULT = CHINESE
_BY_CODE = {lang.code.lower(): lang for lang in LANGUAGES}


def load_translations(lang: Language) -> Translations:
    """The language's catalog, read from its ``.po`` file (fuzzy entries are left out, as
    ``msgfmt`` leaves them out)."""
    with (LOCALE_DIR / lang.locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale=lang.locale)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


def from_code(code: str | None) -> Language | None:
    return _BY_CODE.get((code or "").strip().lower())


def from_accept_language(header: str) -> Language | None:
    """The best of our languages for an Accept-Language header (RFC 9110 §12.5.4): ranges in
    order of their q-values, ``q=0`` meaning "not this one"; any ``zh`` range except the
    Traditional script and regions that write it picks Simplified Chinese, any ``en`` range
    English."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag.strip().lower()))
    for _q, _i, tag in sorted(ranked):
        sub = tag.split("-")
        if sub[0] == "zh" and not {"hant", "tw", "hk", "mo"}.intersection(sub[1:]):
            return CHINESE
        if sub[0] == "en":
            return ENGLISH
        if tag == "*":
            return DEFAULT
    return None


def choose(cookie: str | None, accept_language: str | None) -> Language:
    return from_code(cookie) or from_accept_language(accept_language or "") or DEFAULT
