"""App API keys at a node: shown once, stored as a hash, expiring and revocable.

A key reads ``qk_<key id>_<secret>``; the key id finds the row, and the secret's SHA-256 is
compared in constant time. Keys are 256-bit random values, so a fast hash is enough (there is
nothing to brute-force). Verified keys are cached briefly so the hot path stays in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from qiao.db import utcnow
from qiao.exchange.models import ApiKey

_CACHE_SECONDS = 5.0  # how long a revocation may take to reach the hot path


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    client: str
    secret: str
    expires_at: datetime | None


class ApiKeyService:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, str | None]] = {}

    def create(self, client: str, *, label: str = "", ttl: timedelta | None = None) -> IssuedKey:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        expires = utcnow() + ttl if ttl else None
        with self._engine.begin() as conn:
            conn.execute(
                insert(ApiKey).values(
                    key_id=key_id,
                    client=client,
                    label=label,
                    expires_at=expires,
                    secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                )
            )
        return IssuedKey(key_id, client, f"qk_{key_id}_{secret}", expires)

    def revoke(self, key_id: str) -> bool:
        with self._engine.begin() as conn:
            n = conn.execute(
                update(ApiKey)
                .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
        self._cache.clear()
        return bool(n)

    def list(self) -> list[ApiKey]:
        with Session(self._engine) as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))

    def client_for(self, presented: str) -> str | None:
        """The client id the key belongs to, or None if the key is unknown, expired or revoked."""
        now = time.monotonic()
        # Cache by digest so plaintext keys are not kept around in memory.
        cache_key = hashlib.sha256(presented.encode()).hexdigest()
        hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        client = self._lookup(presented)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[cache_key] = (now, client)
        return client

    def _lookup(self, presented: str) -> str | None:
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "qk" or not parts[1] or not parts[2]:
            return None
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    ApiKey.client, ApiKey.secret_hash, ApiKey.expires_at, ApiKey.revoked_at
                ).where(ApiKey.key_id == parts[1])
            ).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        digest = hashlib.sha256(parts[2].encode()).hexdigest()
        return row.client if hmac.compare_digest(digest, row.secret_hash) else None
