"""Reading the console's HTML in tests: what a page contains, with the standard parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]


@dataclass
class Page(HTMLParser):
    """Every start tag of a page, with its attributes, and the text of <label for>."""

    elements: list[Element] = field(default_factory=list)
    inline: list[str] = field(default_factory=list)  # inline scripts, styles, handlers

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._in_script = False

    @classmethod
    def parse(cls, html: str) -> Page:
        page = cls()
        page.feed(html)
        page.close()
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append(Element(tag, a))
        if tag == "script" and "src" not in a:
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style> element")
        for name, value in a.items():
            if name.startswith("on"):
                self.inline.append(f"{tag} {name}= handler")
            if name == "style":
                self.inline.append(f"{tag} style= attribute")
            if name in ("href", "src", "action") and value.lower().startswith("javascript:"):
                self.inline.append(f"{tag} {name}=javascript:")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]
