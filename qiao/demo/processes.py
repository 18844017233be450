"""Starting and stopping Qiao processes on loopback: used by the demo city and the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    # JSON strings, numbers and booleans are valid TOML values too.
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value, ensure_ascii=False)


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    """Write a flat TOML file with optional one-level tables and arrays of flat tables
    (``[[webhooks]]``): enough for Qiao's settings."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables:
        for sub, inner in table.items():
            lines.append(f"\n[{name}.{json.dumps(sub)}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in inner.items())
    for name, items in arrays:
        for item in items:
            lines.append(f"\n[[{name}]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Process:
    """One Qiao process (``qiao hub`` or ``qiao node``) with its log file."""

    name: str
    args: list[str]
    log_path: Path
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        env = {**os.environ, **self.env}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "qiao", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent only
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, timeout: float = 30.0, *, want: int = 200) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}; "
                    f"see {self.log_path}:\n{self.tail()}"
                )
            try:
                r = httpx.get(self.health_url, timeout=2)
                if r.status_code == want:
                    return r.json()  # type: ignore[no-any-return]
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not healthy after {timeout}s ({last}); "
            f"see {self.log_path}:\n{self.tail()}"
        )

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        """kill -9: no chance to clean up, as in a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
