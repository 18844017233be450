"""The node's copy of the signed global configuration, and its grace period.

The node fetches the configuration from the hub, verifies the hub's signature, and keeps the
last good one on disk. It keeps serving on that copy while the hub is unreachable, until
``grace`` seconds have passed since the hub was last reached; health says how long is left.
A configuration with a bad signature, from another instance, older than the one held, or the
public form without agreements (what the hub sends when it does not accept the node's
signature on the fetch) is refused and the last good one kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from qiao import pki, problems, signing
from qiao.globalconf import KIND, GlobalConf
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem, ProblemType
from qiao.registry.services import REFUSED_HEADER, sign_configuration_fetch

log = logging.getLogger("qiao.node.configuration")
CACHE_FILE = "global-configuration.json"
# How far this node's clock may step back (an NTP correction) without the cache looking altered.
CLOCK_SKEW = 300.0


@dataclass(frozen=True)
class NodeCredentials:
    """What a node signs its configuration fetches with, so that the hub sends it the full
    configuration, agreements and emergencies included (``sign_configuration_fetch``)."""

    node: str
    fingerprint: str  # SHA-256 of the node's certificate, hex
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, identity: NodeIdentity) -> NodeCredentials:
        key = pki.load_key_pem(identity.key_file.read_bytes())
        return cls(identity.name, identity.fingerprint, key)

    def headers(self) -> dict[str, str]:
        """Fresh headers for one fetch: the hub accepts a signed time within 300 s."""
        return sign_configuration_fetch(self.key, self.node, self.fingerprint, int(self.clock()))


class ConfigurationCache:
    def __init__(
        self,
        data_dir: Path,
        *,
        public_key: str,
        instance: str,
        grace_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = data_dir / CACHE_FILE
        self._key = signing.public_key_from_text(public_key)
        self._instance = instance
        self.grace_seconds = grace_seconds
        self._clock = clock
        self.current: GlobalConf | None = None
        self._envelope: Any = None  # the signed form of ``current``, as saved to disk
        self.last_reached: float | None = None  # wall-clock time the hub last answered
        self.last_error = ""
        self.listeners: list[Callable[[GlobalConf], None]] = []
        self._load()

    def _load(self) -> None:
        if not self._path.exists():
            return
        try:
            saved = json.loads(self._path.read_text())
            self.current = self._verify(saved["envelope"])
            self._envelope = saved["envelope"]
            self.last_reached = float(saved["last_reached"])
            # The time the hub was last reached is not signed, and the grace period runs
            # from it: one in the future was moved, to keep serving past the grace period
            # on a configuration the hub may no longer send. (A clock set back by more than
            # the margin has the same effect: the node then waits for the hub, safely.)
            if self.last_reached > self._clock() + CLOCK_SKEW:
                raise ValueError(
                    f"it says the hub was last reached at {self.last_reached:.0f}, later than "
                    "now: the file was altered"
                )
        except (ValueError, KeyError, TypeError) as exc:
            # A damaged cache must not be trusted; the next fetch replaces it.
            log.error("ignoring the cached global configuration: %s", exc)
            self.current, self.last_reached = None, None

    def _verify(self, envelope: Any) -> GlobalConf:
        doc = signing.verify_document(envelope, self._key, kind=KIND)
        conf = GlobalConf.compile(doc)
        if conf.instance != self._instance:
            raise ValueError(f"configuration is for instance {conf.instance}, not {self._instance}")
        return conf

    def _save(self) -> None:
        assert self.current is not None
        tmp = self._path.with_suffix(".tmp")
        data = {"envelope": self._envelope, "last_reached": self.last_reached}
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)

    def accept(self, envelope: Any) -> GlobalConf:
        """Verify and adopt a configuration the hub sent. Raises ``ValueError`` if refused."""
        try:
            conf = self._verify(envelope)
        except ValueError as exc:
            self.last_error = f"refused a configuration from the hub: {exc}"
            log.error(
                "%s; keeping serial %s",
                self.last_error,
                self.current.serial if self.current else None,
            )
            raise
        if self.current is not None and conf.serial < self.current.serial:
            self.last_error = (
                f"refused configuration serial {conf.serial}: older than {self.current.serial}"
            )
            raise ValueError(self.last_error)
        changed = self.current is None or conf.serial != self.current.serial
        self.current, self._envelope = conf, envelope
        self.reached()
        if changed:
            for listener in self.listeners:
                listener(conf)
        return conf

    def reached(self) -> None:
        """The hub answered (perhaps with "not modified"): the grace period starts again."""
        self.last_reached = self._clock()
        self.last_error = ""
        if self.current is not None:
            self._save()

    def remaining(self) -> float:
        if self.last_reached is None:
            return 0.0
        return max(0.0, self.last_reached + self.grace_seconds - self._clock())

    def usable(self, expired: ProblemType = problems.CONFIGURATION_EXPIRED) -> GlobalConf:
        """The configuration to decide with, or a problem saying why there is none."""
        conf = self.current
        if conf is None:
            raise Problem(
                problems.NO_CONFIGURATION,
                "this node has not yet received a global configuration from the hub",
            )
        if self.remaining() <= 0:
            raise Problem(
                expired,
                f"the hub was last reached {_ago(self.last_reached)}; the grace period of "
                f"{self.grace_seconds:.0f} s is over ({self.last_error or 'hub unreachable'})",
            )
        return conf

    def status(self) -> dict[str, Any]:
        conf = self.current
        remaining = self.remaining()
        return {
            "serial": conf.serial if conf else None,
            "issued_at": conf.issued_at.isoformat() if conf else None,
            "last_reached": _iso(self.last_reached),
            "grace_seconds": self.grace_seconds,
            "grace_remaining_seconds": round(remaining, 1),
            "expires_at": _iso(self.last_reached + self.grace_seconds)
            if self.last_reached
            else None,
            "valid": conf is not None and remaining > 0,
            "last_error": self.last_error,
        }


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"at {_iso(ts)}"


class Fetched(StrEnum):
    """How one fetch of the configuration went."""

    CHANGED = "changed"  # a configuration with a new serial was adopted
    UNCHANGED = "unchanged"  # 304, or the same serial again
    FAILED = "failed"  # unreachable, an error status, or a configuration refused


async def fetch_loop(
    cache: ConfigurationCache,
    hub_url: str,
    interval: float,
    session: aiohttp.ClientSession,
    *,
    wait: float = 25.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    credentials: NodeCredentials | None = None,
) -> None:
    """Keep the configuration current until cancelled.

    With ``wait`` > 0 each fetch is a long poll: the hub answers as soon as the serial
    changes, or with 304 after ``wait`` seconds, and the loop asks again at once, so a
    change reaches the node within a second or so. A hub that does not know ``wait``
    answers 304 at once; the loop notices the early answer and falls back to fetching every
    ``interval`` seconds. After a failure it waits 1 s, doubling up to ``interval``, so a
    hub coming back is not met by every node at once while an outage costs little delay;
    the grace period runs on meanwhile (``ConfigurationCache.remaining``). Each fetch is
    signed with ``credentials``; without them the hub sends only the public form, which the
    cache refuses."""
    url = f"{hub_url}/api/v1/global-configuration"
    backoff = 1.0
    while True:
        started = clock()
        outcome = await fetch_once(cache, url, session, wait=wait, credentials=credentials)
        if outcome is Fetched.FAILED:
            await sleep(min(backoff, interval))
            backoff = min(backoff * 2, interval)
            continue
        backoff = 1.0
        if outcome is Fetched.CHANGED:
            continue  # ask at once for the change after this one
        if wait <= 0 or clock() - started < wait / 2:
            await sleep(interval)  # plain polling, or a hub that ignored ``wait``


async def fetch_once(
    cache: ConfigurationCache,
    url: str,
    session: aiohttp.ClientSession,
    *,
    wait: float = 0,
    credentials: NodeCredentials | None = None,
) -> Fetched:
    """Fetch the configuration once, signed with ``credentials``; with ``wait``, let the hub
    hold the answer that long while the serial is the one this node holds."""
    held = cache.current.serial if cache.current else None
    headers = credentials.headers() if credentials is not None else {}
    if held is not None:
        headers["If-None-Match"] = f'"{held}"'
    params = {"wait": str(int(wait))} if wait >= 1 and held is not None else {}
    # The hub holds a long poll for up to ``wait`` seconds; allow that plus the usual 10 s.
    timeout = aiohttp.ClientTimeout(total=10 + (int(wait) if params else 0))
    try:
        async with session.get(url, headers=headers, params=params, timeout=timeout) as r:
            if r.status == 304:
                cache.reached()
                return Fetched.UNCHANGED
            if r.status != 200:
                cache.last_error = f"hub answered {r.status} for the configuration"
                return Fetched.FAILED
            envelope = await r.json(content_type=None)
            # Why the hub did not take this node's signature, if it says (qiao.hub.app).
            refused = r.headers.get(REFUSED_HEADER, "")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        cache.last_error = f"hub unreachable: {exc.__class__.__name__}: {exc}"
        return Fetched.FAILED
    try:
        conf = cache.accept(envelope)
    except ValueError:
        if refused:
            cache.last_error += f" (the hub says: {refused})"
        return Fetched.FAILED
    return Fetched.UNCHANGED if conf.serial == held else Fetched.CHANGED
