"""`qiao demo` as a user runs it: --check must pass, --json must hand out a working call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _qiao(*args: str) -> list[str]:
    return [sys.executable, "-m", "qiao", *args]


def test_demo_check_passes(tmp_path: Path) -> None:
    r = subprocess.run(
        _qiao("demo", "--check", "--base-port", "0", "--data-dir", str(tmp_path / "demo")),
        capture_output=True,
        text=True,
        timeout=180,
        # Wide enough that the summary table does not wrap the names checked below.
        env={**os.environ, "COLUMNS": "250"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo check: passed" in r.stderr
    for expected in [
        "vehicle violations",
        "agreement masking: location to the district",
        "enterprise credit",
        "violations (no agreement)",
        "violations (request refused)",
        "epidemic statistics before the emergency",
        "emergency declared by two administrators",
        "emergency access flagged for review",
        "both nodes recorded",
        # The streams (issue 7): delivered by webhook, masked, in order, once each.
        "events published during the check delivered by webhook",
        "accidents masked by the agreement",
        "updates in published order per partition key",
        "no duplicates at the receivers",
        "a delivery with a wrong signature is refused",
    ]:
        assert expected in r.stderr
    assert "FAILED" not in r.stderr


def test_demo_json_gives_a_working_sample_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _qiao("demo", "--json", "--base-port", "0", "--data-dir", str(tmp_path / "demo")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        ready = json.loads(line)
        assert ready["hub_url"].startswith("http://127.0.0.1:")
        assert ready["console_url"] == ready["hub_url"] + "/console/"
        # The console answers there: its sign-in page, in Chinese by default.
        page = httpx.get(ready["console_url"] + "sign-in")
        assert page.status_code == 200 and 'lang="zh-Hans"' in page.text
        s = ready["sample"]
        r = httpx.request(s["method"], s["url"], headers=s["headers"])
        assert r.status_code == 200 and r.json()["violations"]
        assert httpx.get(ready["hub_url"] + "/healthz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        # Everything it started is gone.
        time.sleep(0.5)
        try:
            httpx.get(ready["hub_url"] + "/healthz", timeout=1)
            raise AssertionError("the hub is still running")
        except httpx.ConnectError:
            pass
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_demo_refuses_to_delete_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    r = subprocess.run(
        _qiao("demo", "--check", "--base-port", "0", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "not a demo data directory" in r.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
