"""The reliability suite's shared fixtures: the databases of tests/conftest.py, the profile,
and the figures table printed (and written) at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from reliability.figures import PROFILE, Profile, recorded, table, write
from tests.conftest import IN_CI, pg_admin, pg_databases

__all__ = ["IN_CI", "pg_admin", "pg_databases"]


@pytest.fixture(scope="session")
def profile() -> Profile:
    return PROFILE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "reliability" in item.nodeid.split("/")[0]:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = recorded()
    if not figures:
        return
    stats = terminalreporter.stats
    outcome = {k: len(stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")}
    path = write(PROFILE, outcome)
    terminalreporter.section(f"reliability figures ({PROFILE.name} profile)")
    for line in table(figures):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {path}")
