"""Languages: every message in the templates is translated in both catalogs, the switch
changes the page's language, and the browser's Accept-Language chooses when no switch did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from qiao.console import i18n
from tests.console.conftest import Hub, csrf_of, sign_in

CONSOLE = Path(i18n.__file__).parent
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def template_messages() -> dict[str | tuple[str, ...], list[str]]:
    found: dict[str | tuple[str, ...], list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        CONSOLE / "templates",
        method_map=[("**.html", "jinja2")],
        options_map={"**.html": {"extensions": "jinja2.ext.i18n"}},
    ):
        found.setdefault(message, []).append(f"{filename}:{lineno}")
    return found


@pytest.mark.parametrize("lang", i18n.LANGUAGES, ids=lambda lang: lang.locale)
def test_every_template_message_is_translated(lang: i18n.Language) -> None:
    messages = template_messages()
    assert len(messages) > 50  # the extraction found the templates' messages
    with (i18n.LOCALE_DIR / lang.locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale=lang.locale)
    missing, broken = [], []
    for msgid, where in messages.items():
        key = msgid[0] if isinstance(msgid, tuple) else msgid
        entry = catalog.get(key)
        strings = (
            ()
            if entry is None or entry.fuzzy
            else (entry.string if isinstance(entry.string, tuple) else (entry.string,))
        )
        if not strings or not all(strings):
            missing.append(f"{msgid!r} ({where[0]})")
            continue
        wanted = set(PLACEHOLDER.findall(key))
        if any(set(PLACEHOLDER.findall(s)) != wanted for s in strings):
            broken.append(f"{msgid!r}: placeholders differ")
    assert not missing, f"untranslated in {lang.locale}: " + "; ".join(missing)
    assert not broken, "; ".join(broken)


def test_the_switch_changes_the_language(hub: Hub, client: TestClient) -> None:
    page = client.get("/console/sign-in")
    assert '<html lang="zh-Hans">' in page.text and "登录名" in page.text
    r = client.post(
        "/console/language",
        data={"lang": "en", "next": "/console/sign-in", "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"
    assert client.cookies[i18n.COOKIE] == "en"
    page = client.get("/console/sign-in")
    assert '<html lang="en">' in page.text and "Sign-in name" in page.text
    assert "登录名" not in page.text
    # Signed in, the switch works with the session's token and stays on the page.
    sign_in(hub, client, "steward")
    home = client.get("/console/catalog")
    assert "Sharing type" in home.text
    r = client.post(
        "/console/language",
        data={"lang": "zh-Hans", "next": "/console/catalog", "csrf_token": csrf_of(home.text)},
    )
    assert r.headers["location"] == "/console/catalog"
    assert "共享类型" in client.get("/console/catalog").text
    # Without its token the switch changes nothing.
    r = client.post("/console/language", data={"lang": "en", "next": "/console/"})
    assert r.status_code == 403 and client.cookies[i18n.COOKIE] == "zh-Hans"


def test_accept_language_chooses_when_no_cookie_does(hub: Hub, client: TestClient) -> None:
    en = client.get("/console/sign-in", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert '<html lang="en">' in en.text
    zh = client.get("/console/sign-in", headers={"Accept-Language": "fr, zh-CN;q=0.8, en;q=0.5"})
    assert '<html lang="zh-Hans">' in zh.text
    client.cookies.set(i18n.COOKIE, "zh-Hans")
    cookie_wins = client.get("/console/sign-in", headers={"Accept-Language": "en"})
    assert '<html lang="zh-Hans">' in cookie_wins.text


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", None),
        ("en", i18n.ENGLISH),
        ("en-US,en;q=0.9,zh-CN;q=0.8", i18n.ENGLISH),
        ("zh-CN,zh;q=0.9,en;q=0.8", i18n.CHINESE),
        ("zh-Hans-CN", i18n.CHINESE),
        ("en;q=0.2, zh;q=0.7", i18n.CHINESE),
        ("zh-TW, en;q=0.5", i18n.ENGLISH),  # Traditional is not offered: English is next
        ("zh-Hant", None),
        ("en;q=0, fr", None),  # q=0: "not acceptable" (RFC 9110 §12.4.2)
        ("de, *;q=0.1", i18n.DEFAULT),
        ("en;q=abc", None),
    ],
)
def test_accept_language_ranking(header: str, expected: i18n.Language | None) -> None:
    assert i18n.from_accept_language(header) == expected


def test_an_unknown_language_code_falls_back_to_chinese() -> None:
    assert i18n.choose("xx", None) is i18n.CHINESE
    assert i18n.choose(None, None) is i18n.CHINESE
    assert i18n.choose("EN", "zh") is i18n.ENGLISH
