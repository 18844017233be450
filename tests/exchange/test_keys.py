from datetime import timedelta
from pathlib import Path

from qiao.db import make_engine, migrate
from qiao.exchange.keys import ApiKeyService


def _service(url: str) -> ApiKeyService:
    migrate("node", url)
    return ApiKeyService(make_engine(url))


def test_key_lifecycle(db_url: str) -> None:
    keys = _service(db_url)
    issued = keys.create("CN-DEMO/91350100M000100Y43/app", label="t", ttl=timedelta(days=1))
    assert issued.secret.startswith(f"qk_{issued.key_id}_")
    assert keys.client_for(issued.secret) == issued.client
    # The stored form is a hash, never the secret.
    stored = keys.list()[0]
    assert issued.secret.split("_", 2)[2] not in stored.secret_hash
    assert keys.client_for(issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B")) is None
    assert keys.client_for("qk_nope_nope") is None
    assert keys.client_for("garbage") is None
    assert keys.revoke(issued.key_id)
    assert keys.client_for(issued.secret) is None  # revocation clears the cache
    assert not keys.revoke(issued.key_id)


def test_expired_key_is_refused(tmp_path: Path) -> None:
    keys = _service(f"sqlite:///{tmp_path / 'n.db'}")
    issued = keys.create("CN-DEMO/91350100M000100Y43/app", ttl=timedelta(seconds=-1))
    assert keys.client_for(issued.secret) is None
