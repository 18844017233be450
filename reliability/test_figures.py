"""The suite's own plumbing: profiles, the figures table and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reliability import figures, report


def test_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIAO_RELIABILITY", "full")
    assert figures.current().full and figures.current().pick(1, 20) == 20
    monkeypatch.setenv("QIAO_RELIABILITY", "")
    assert not figures.current().full and figures.current().pick(1, 20) == 1
    monkeypatch.setenv("QIAO_RELIABILITY", "fast")
    with pytest.raises(ValueError, match="short' or 'full"):
        figures.current()


def test_figures_render_as_a_table_and_as_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figures, "ARTIFACTS", tmp_path)
    monkeypatch.setattr(figures, "_FIGURES", figures._Figures())
    figures.record("crash", "events lost", 0, target="0", ok=True)
    figures.record("tamper", "cases detected", 41, "of 41", note="a | b")
    lines = figures.table(figures.recorded())
    assert lines[0].split() == ["section", "figure", "value", "target"]
    assert any("events lost" in x and x.rstrip().endswith("ok") for x in lines)
    path = figures.write(figures.Profile("short"), {"passed": 2})
    doc = json.loads(path.read_text())
    assert doc["profile"] == "short" and len(doc["figures"]) == 2
    assert doc["figures"][0]["test"].startswith("reliability/test_figures.py::")
    md = report.render(doc)
    assert "### 1. Crash consistency" in md and "### 2. Tamper detection" in md
    assert "| events lost | 0 | 0 | yes |" in md
    assert "cases detected (a \\| b) | 41 of 41" in md
