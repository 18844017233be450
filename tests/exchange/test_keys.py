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


# --- the hub's signing keys at the node (HubTokens) -------------------------------------------
def _token_with_kid(kid: str) -> str:
    import base64
    import json

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': kid, 'typ': 'at+jwt'})}.{part({'sub': 'x'})}.c2ln"


async def test_an_unreachable_hub_is_not_asked_again_for_every_token() -> None:
    """Tokens with unknown key ids while the hub's JWKS cannot be fetched: the node tries
    once per min_refresh, not once per token (nor does each token wait for a fetch)."""
    import asyncio

    import pytest
    from aiohttp import web

    from qiao.exchange.keys import HubKeysUnavailable, HubTokens
    from qiao.identity.access_tokens import TokenRefused

    hits = {"n": 0}
    state = {"up": True}

    async def discovery(request: web.Request) -> web.Response:
        hits["n"] += 1
        if not state["up"]:
            return web.Response(status=503)
        base = f"http://{request.host}"
        return web.json_response({"issuer": base, "jwks_uri": f"{base}/jwks"})

    async def jwks(_r: web.Request) -> web.Response:
        return web.json_response({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        tokens = HubTokens(f"http://127.0.0.1:{port}", "aud", min_refresh=0.3)
        with pytest.raises(TokenRefused):  # fetched once, then the forged token is refused
            await tokens.verify(_token_with_kid("k1"))
        assert hits["n"] == 1
        await asyncio.sleep(0.35)  # past min_refresh: an unknown key id may refetch now
        state["up"] = False
        results = await asyncio.gather(
            *(tokens.verify(_token_with_kid(f"rotated-{i}")) for i in range(30)),
            return_exceptions=True,
        )
        assert all(isinstance(r, TokenRefused) for r in results), results
        assert hits["n"] == 2  # one refetch for thirty unknown key ids
        # With no keys at all, an outage answers at once (and is retried only after a pause).
        cold = HubTokens(f"http://127.0.0.1:{port}", "aud")
        for _ in range(10):
            with pytest.raises(HubKeysUnavailable):
                await cold.verify(_token_with_kid("k1"))
        assert hits["n"] == 3
    finally:
        await runner.cleanup()


async def test_an_oversized_key_set_is_refused_unread() -> None:
    import pytest
    from aiohttp import web

    from qiao.exchange.keys import MAX_DOCUMENT_BYTES, HubKeysUnavailable, HubTokens

    async def discovery(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response({"issuer": base, "jwks_uri": f"{base}/jwks"})

    async def jwks(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"keys": [' + b" " * (MAX_DOCUMENT_BYTES * 2))
        return resp

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with pytest.raises(HubKeysUnavailable, match="more than"):
            await HubTokens(f"http://127.0.0.1:{port}", "aud").verify(_token_with_kid("k1"))
    finally:
        await runner.cleanup()
