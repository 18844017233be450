"""App credentials at a node: scoped, expiring, rotatable API keys, and the hub's OIDC access
tokens.

An API key reads ``qk_<key id>_<secret>``; the key id finds the row, and the secret's SHA-256
is compared in constant time. Keys are 256-bit random values, so a fast hash is enough (there
is nothing to brute-force). Every key expires (default 90 days, at most ``max_ttl``) and names
the resources it may call: ``{provider org}/{resource}``, ``{provider org}/*`` or ``*``.
Rotation issues a new key and lets the old one keep working for a grace period, so an app can
be redeployed without an outage. Verified keys are cached briefly so the hot path stays in
memory.

An app may instead present an access token the hub issued (a JWT, RFC 9068) to an OIDC client
bound to the app; the node verifies it against the hub's JWKS, fetched once and cached
(``HubTokens``), without asking the hub per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from qiao.db import utcnow
from qiao.exchange.models import ApiKey
from qiao.identity.access_tokens import AccessToken, TokenRefused, verify_access_token

log = logging.getLogger("qiao.exchange.keys")

_CACHE_SECONDS = 5.0  # how long a revocation may take to reach the hot path
DEFAULT_TTL = timedelta(days=90)
DEFAULT_MAX_TTL = timedelta(days=365)
DEFAULT_GRACE = timedelta(hours=24)
ALL_RESOURCES = "*"


class KeyPolicyError(ValueError):
    """A key request outside the node's policy (no expiry, too long, malformed scope)."""


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check and normalize scope entries: ``*``, ``{org}/*`` or ``{org}/{resource}``."""
    out: list[str] = []
    for raw in scopes:
        for item in (s.strip() for s in raw.split(",")):
            if not item:
                continue
            if item != ALL_RESOURCES:
                org, sep, resource = item.partition("/")
                if not sep or not org or not resource or "/" in resource or len(item) > 100:
                    raise KeyPolicyError(
                        f"scope {item!r} is not *, {{org}}/* or {{org}}/{{resource}}"
                    )
            if item not in out:
                out.append(item)
    if not out:
        raise KeyPolicyError("a key needs at least one scope (e.g. 11350100MB0001234X/vehicles)")
    return tuple(out)


def scope_allows(scopes: Iterable[str], provider_org: str, resource: str) -> bool:
    for s in scopes:
        if s in (ALL_RESOURCES, f"{provider_org}/*", f"{provider_org}/{resource}"):
            return True
    return False


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    client: str
    secret: str
    expires_at: datetime | None
    scopes: tuple[str, ...] = (ALL_RESOURCES,)


@dataclass(frozen=True)
class KeyGrant:
    """What a verified key lets its holder do."""

    key_id: str
    client: str
    scopes: tuple[str, ...]

    def allows(self, provider_org: str, resource: str) -> bool:
        return scope_allows(self.scopes, provider_org, resource)


class ApiKeyService:
    def __init__(self, engine: Engine, *, max_ttl: timedelta = DEFAULT_MAX_TTL) -> None:
        self._engine = engine
        self._max_ttl = max_ttl
        self._cache: dict[str, tuple[float, KeyGrant | None]] = {}

    def create(
        self,
        client: str,
        *,
        label: str = "",
        ttl: timedelta | None = None,
        scopes: Iterable[str] = (ALL_RESOURCES,),
    ) -> IssuedKey:
        """Issue a key (its secret is returned once and never stored). Every key expires:
        ``ttl`` defaults to 90 days and may not exceed the node's maximum."""
        ttl = DEFAULT_TTL if ttl is None else ttl
        if ttl > self._max_ttl:
            raise KeyPolicyError(
                f"a key may live at most {self._max_ttl.days} days on this node "
                f"(asked {ttl.days}); rotate it instead"
            )
        return self._insert(client, label, utcnow() + ttl, parse_scopes(scopes))

    def _insert(
        self, client: str, label: str, expires: datetime, scopes: tuple[str, ...]
    ) -> IssuedKey:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            conn.execute(
                insert(ApiKey).values(
                    key_id=key_id,
                    client=client,
                    label=label,
                    expires_at=expires,
                    scopes=" ".join(scopes),
                    secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                )
            )
        return IssuedKey(key_id, client, f"qk_{key_id}_{secret}", expires, scopes)

    def rotate(
        self, key_id: str, *, grace: timedelta = DEFAULT_GRACE, ttl: timedelta | None = None
    ) -> IssuedKey:
        """A new key for the same app and scopes; the old one keeps working for ``grace``
        (or until its own expiry, if sooner), then expires."""
        ttl = DEFAULT_TTL if ttl is None else ttl
        if ttl > self._max_ttl:
            raise KeyPolicyError(f"a key may live at most {self._max_ttl.days} days")
        now = utcnow()
        with Session(self._engine) as s, s.begin():
            old = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if old is None or old.revoked_at is not None or _expired(old.expires_at, now):
                raise KeyError(key_id)
            client, label, scopes = old.client, old.label, tuple(old.scopes.split())
            until = now + grace
            if old.expires_at is None or old.expires_at > until:
                old.expires_at = until
        issued = self._insert(client, label, now + ttl, scopes or (ALL_RESOURCES,))
        with self._engine.begin() as conn:
            conn.execute(
                update(ApiKey).where(ApiKey.key_id == key_id).values(replaced_by=issued.key_id)
            )
        self._cache.clear()
        return issued

    def revoke(self, key_id: str) -> bool:
        with self._engine.begin() as conn:
            n = conn.execute(
                update(ApiKey)
                .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
        self._cache.clear()
        return bool(n)

    def list(self, client: str | None = None) -> list[ApiKey]:
        with Session(self._engine) as s:
            q = select(ApiKey).order_by(ApiKey.id)
            if client is not None:
                q = q.where(ApiKey.client == client)
            return list(s.scalars(q))

    def check(self, presented: str) -> KeyGrant | None:
        """What the key allows, or None if it is unknown, expired or revoked."""
        now = time.monotonic()
        # Cache by digest so plaintext keys are not kept around in memory.
        cache_key = hashlib.sha256(presented.encode()).hexdigest()
        hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        grant = self._lookup(presented)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[cache_key] = (now, grant)
        return grant

    def client_for(self, presented: str) -> str | None:
        """The client id the key belongs to, or None if the key is unknown, expired or revoked."""
        grant = self.check(presented)
        return grant.client if grant else None

    def _lookup(self, presented: str) -> KeyGrant | None:
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "qk" or not parts[1] or not parts[2]:
            return None
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    ApiKey.client,
                    ApiKey.secret_hash,
                    ApiKey.expires_at,
                    ApiKey.revoked_at,
                    ApiKey.scopes,
                ).where(ApiKey.key_id == parts[1])
            ).one_or_none()
        if row is None or row.revoked_at is not None or _expired(row.expires_at, utcnow()):
            return None
        digest = hashlib.sha256(parts[2].encode()).hexdigest()
        if not hmac.compare_digest(digest, row.secret_hash):
            return None
        return KeyGrant(parts[1], row.client, tuple(row.scopes.split()))


def _expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


class HubKeysUnavailable(Exception):
    """The hub's signing keys could not be fetched (and none are cached)."""


class HubTokens:
    """Verifies the hub's access tokens at a node against the hub's JWKS.

    The discovery document and JWKS are fetched from ``hub_url`` at first use and kept; an
    unknown ``kid`` (the hub rotated its key) triggers one refetch, at most every
    ``min_refresh`` seconds so a flood of forged tokens cannot make the node hammer the hub.
    """

    def __init__(
        self,
        hub_url: str,
        audience: str,
        *,
        max_age: float = 3600.0,
        min_refresh: float = 30.0,
    ) -> None:
        self._hub_url = hub_url.rstrip("/")
        self.audience = audience
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._issuer = ""
        self._jwks: dict[str, Any] | None = None
        self._fetched = 0.0
        self._failed_at = -1e9  # monotonic time of the last failed fetch
        self._failure = ""
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            meta = await _get_json(s, f"{self._hub_url}/.well-known/openid-configuration")
            jwks = await _get_json(s, str(meta["jwks_uri"]))
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("the JWKS is not a JSON Web Key Set")
        self._issuer, self._jwks, self._fetched = str(meta["issuer"]), jwks, time.monotonic()

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            age = now - self._fetched
            fresh = self._jwks is not None and age < self._max_age
            if fresh and (not force or age < self._min_refresh):
                return
            # A failed fetch is not retried sooner than min_refresh (or RETRY_UNAVAILABLE
            # while no keys are held at all): with the hub away, tokens with unknown key ids
            # must not queue behind one 10-second fetch after another.
            wait = self._min_refresh if self._jwks is not None else RETRY_UNAVAILABLE
            if now - self._failed_at < wait:
                if self._jwks is None:
                    raise HubKeysUnavailable(self._failure)
                return
            try:
                await self._fetch()
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                self._failed_at, self._failure = time.monotonic(), str(exc) or repr(exc)
                log.warning("could not fetch the hub's signing keys: %s", exc)
                if self._jwks is None:
                    raise HubKeysUnavailable(self._failure) from exc

    async def verify(self, token: str) -> AccessToken:
        if self._jwks is None or time.monotonic() - self._fetched > self._max_age:
            await self._refresh(force=False)
        assert self._jwks is not None
        kids = {k.get("kid") for k in self._jwks.get("keys", [])}
        if _kid(token) not in kids:
            await self._refresh(force=True)
        return verify_access_token(token, self._jwks, issuer=self._issuer, audience=self.audience)


# The hub's discovery document and JWKS are a few kilobytes; a larger answer is refused
# unread rather than buffered whole.
MAX_DOCUMENT_BYTES = 256 * 1024
# While no keys are held at all, how soon a failed fetch may be tried again (seconds).
RETRY_UNAVAILABLE = 5.0


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    parts: list[bytes] = []
    size = 0
    async with session.get(url) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
            parts.append(chunk)
    return json.loads(b"".join(parts))


def _kid(token: str) -> str:
    import base64
    import json

    try:
        head = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        return str(header.get("kid", ""))
    except (ValueError, UnicodeDecodeError):
        return ""


__all__ = [
    "ApiKeyService",
    "HubKeysUnavailable",
    "HubTokens",
    "IssuedKey",
    "KeyGrant",
    "KeyPolicyError",
    "TokenRefused",
    "parse_scopes",
    "scope_allows",
]
