"""Profiles and figures for the reliability suite.

Every part of the suite measures something a reader of RELIABILITY.md wants as a number:
rounds run, events lost, cases tried, cases detected, megabytes grown. Tests call
:func:`record`; at the end of the run the figures are printed as a table and written to
``test-artifacts/reliability/figures-<profile>.json`` (``python -m reliability.report``
turns that file into RELIABILITY.md's tables).

The profile says how hard to push: ``short`` (the default, what ``make test`` and CI run,
a minute or two in all) or ``full`` (``make reliability``: 20 kill rounds, a 10-minute soak,
thousands of fuzz cases). Set ``QIAO_RELIABILITY=full`` to choose it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ARTIFACTS = Path(os.environ.get("QIAO_ARTIFACTS", "test-artifacts")) / "reliability"


@dataclass(frozen=True)
class Profile:
    name: str  # "short" or "full"

    @property
    def full(self) -> bool:
        return self.name == "full"

    def pick(self, short: T, full: T) -> T:
        """``short`` in the short profile, ``full`` in the full one."""
        return full if self.full else short


def current() -> Profile:
    name = os.environ.get("QIAO_RELIABILITY", "short").strip().lower() or "short"
    if name not in ("short", "full"):
        raise ValueError(f"QIAO_RELIABILITY must be 'short' or 'full', not {name!r}")
    return Profile(name)


PROFILE = current()


@dataclass
class Figure:
    section: str  # crash, tamper, fuzz, authz, soak, limits, network
    name: str  # what was measured, in the reader's words
    value: Any  # a number (or a short string)
    unit: str = ""
    target: str = ""  # what it should be, e.g. "0" or "< 64 MiB"
    ok: bool | None = None  # whether the target was met (None: no target)
    note: str = ""
    test: str = ""


@dataclass
class _Figures:
    items: list[Figure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)


_FIGURES = _Figures()


def record(
    section: str,
    name: str,
    value: Any,
    unit: str = "",
    *,
    target: str = "",
    ok: bool | None = None,
    note: str = "",
) -> None:
    """Record one figure of this run (the current test's id is added by the suite's conftest)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    with _FIGURES.lock:
        _FIGURES.items.append(Figure(section, name, value, unit, target, ok, note, test))


def recorded() -> list[Figure]:
    with _FIGURES.lock:
        return list(_FIGURES.items)


def write(profile: Profile, outcome: dict[str, int]) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"figures-{profile.name}.json"
    doc = {
        "profile": profile.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_FIGURES.started)),
        "seconds": round(time.time() - _FIGURES.started, 1),
        "tests": outcome,
        "machine": _machine(),
        "figures": [asdict(f) for f in recorded()],
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    return path


def _machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def table(figures: list[Figure]) -> list[str]:
    """The figures as fixed-width text lines, grouped by section."""
    if not figures:
        return ["(no figures recorded)"]
    rows = [
        (
            f.section,
            f.name,
            f"{f.value}{(' ' + f.unit) if f.unit else ''}",
            f.target,
            "" if f.ok is None else ("ok" if f.ok else "MISSED"),
        )
        for f in sorted(figures, key=lambda f: f.section)
    ]
    head = ("section", "figure", "value", "target", "")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    out = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(head)).rstrip()]
    out.append("  ".join("-" * w for w in widths).rstrip())
    out += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return out
