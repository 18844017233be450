"""Accessibility checks that need no browser: colour contrast of the stylesheet's pairs
(WCAG 2.2 §1.4.3, 4.5:1 for text), a label for every form control, a language on every
page, and the landmarks a screen reader jumps between."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qiao.console import i18n
from tests.console.conftest import A, Hub, sign_in
from tests.console.pages import Page

CSS = (Path(i18n.__file__).parent / "static" / "console.css").read_text()
# (text, background) custom properties used together in console.css.
PAIRS = [
    ("text", "bg"),
    ("text", "panel"),
    ("muted", "bg"),
    ("muted", "panel"),
    ("link", "bg"),
    ("link", "panel"),
    ("on-accent", "accent"),
    ("accent", "bg"),
    ("header-text", "header-bg"),
    ("header-bg", "header-text"),
    ("alert-text", "alert-bg"),
    ("note-text", "note-bg"),
    ("tag-unconditional-text", "tag-unconditional-bg"),
    ("tag-conditional-text", "tag-conditional-bg"),
    ("tag-none-text", "tag-none-bg"),
]


def colours() -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})\s*;", CSS))


def luminance(hex_colour: str) -> float:
    """Relative luminance (WCAG 2.2, definition "relative luminance")."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula_matches_known_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # just fails AA


@pytest.mark.parametrize(("fg", "bg"), PAIRS)
def test_text_colours_meet_aa_contrast(fg: str, bg: str) -> None:
    c = colours()
    assert contrast(c[fg], c[bg]) >= 4.5, f"{fg} on {bg}: {contrast(c[fg], c[bg]):.2f}:1"


def test_focus_is_visible() -> None:
    assert re.search(r":focus-visible\s*\{[^}]*outline:\s*3px solid", CSS)


def test_pages_label_controls_and_have_landmarks(hub: Hub, client: TestClient) -> None:
    pages = {"sign-in": client.get("/console/sign-in").text}
    sign_in(hub, client, "steward")
    for path in (
        "/console/",
        "/console/catalog?q=违法",
        f"/console/catalog/{A}/traffic-violations",
    ):
        pages[path] = client.get(path).text
    for name, html in pages.items():
        page = Page.parse(html)
        assert page.all("html")[0].attrs.get("lang") in ("zh-Hans", "en"), name
        assert len(page.all("main")) == 1 and page.all("header"), name
        assert len(page.all("h1")) == 1, name
        labelled = {e.attrs["for"] for e in page.all("label") if "for" in e.attrs}
        for control in page.all("input") + page.all("select"):
            if control.attrs.get("type") == "hidden":
                continue
            assert control.attrs.get("id") in labelled or control.attrs.get("aria-label"), (
                f"{name}: {control.tag} {control.attrs} has no label"
            )
        if name != "sign-in":
            navs = page.all("nav")
            assert navs and all(n.attrs.get("aria-label") for n in navs), name
