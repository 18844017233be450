"""Turn a run's figures into the Markdown tables of RELIABILITY.md.

    python -m reliability.report                      # the latest full run, else the short one
    python -m reliability.report test-artifacts/reliability/figures-short.json

It prints to standard output; RELIABILITY.md is edited by hand around it (what each part
means stays prose, the numbers come from here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from reliability.figures import ARTIFACTS

SECTIONS = {
    "crash": "1. Crash consistency",
    "tamper": "2. Tamper detection",
    "fuzz": "3. Fuzzing and properties",
    "authz": "4. Authorization matrix",
    "soak": "5a. Soak",
    "limits": "5b. Slow clients, huge headers and bodies",
    "network": "6. Network faults",
}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(doc: dict[str, Any]) -> str:
    machine = doc.get("machine", {})
    tests = doc.get("tests", {})
    lines = [
        f"Profile **{doc['profile']}**, started {doc['started']}, {doc['seconds']} s; "
        f"tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
        f"{tests.get('error', 0)} errors, {tests.get('skipped', 0)} skipped.",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB, {machine.get('system', '?')}, "
        f"Python {machine.get('python', '?')}.",
        "",
    ]
    figures = doc.get("figures", [])
    order = list(SECTIONS)
    by_section: dict[str, list[dict[str, Any]]] = {}
    for f in figures:
        by_section.setdefault(f["section"], []).append(f)
    for section in sorted(by_section, key=lambda s: (order.index(s) if s in order else 99, s)):
        lines += [f"### {SECTIONS.get(section, section)}", ""]
        lines += ["| figure | value | target | met |", "| --- | --- | --- | --- |"]
        for f in by_section[section]:
            value = f"{f['value']}{(' ' + f['unit']) if f['unit'] else ''}"
            met = "" if f["ok"] is None else ("yes" if f["ok"] else "**no**")
            name = f["name"] + (f" ({f['note']})" if f.get("note") else "")
            lines.append(f"| {_cell(name)} | {_cell(value)} | {_cell(f['target'])} | {met} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv:
        path = Path(argv[0])
    else:
        full, short = ARTIFACTS / "figures-full.json", ARTIFACTS / "figures-short.json"
        path = full if full.exists() else short
    if not path.exists():
        print(f"no figures at {path}: run `make reliability` first", file=sys.stderr)
        return 1
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
