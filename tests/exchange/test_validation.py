"""Validation on the data path, with a real node pair in one process: the consumer and provider
gateways on their own listeners (the provider's over mutual TLS with hub-style certificates),
a signed global configuration whose resource carries the catalog's schemas, and a backend that
answers valid, invalid, non-JSON, compressed and oversized bodies."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from sqlalchemy import Engine

from qiao import pki, signing
from qiao.catalog.schema import derive_schemas
from qiao.config import NodeSettings, ServiceSettings
from qiao.db import make_engine, migrate
from qiao.exchange import protocol as p
from qiao.exchange.consumer import ConsumerGateway
from qiao.exchange.keys import ApiKeyService
from qiao.exchange.provider import ProviderGateway
from qiao.exchange.records import RecordWriter, recent_records
from qiao.globalconf import KIND, GlobalConf
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from tests.agreements.test_policy import KEYS, agreement, public_text, published
from tests.catalog.violations import (
    CIVIL_ID,
    PROVIDER,
    VALID_RECORD,
    violation_catalog,
)

INSTANCE = "test"
CONSUMER = "91110000802100433B"
APP = f"{INSTANCE}/{CONSUMER}/inspector"
PURPOSE = "traffic-enforcement"
LIMIT = 256 * 1024 + 100_000  # over the small-body threshold, to exercise the bounded read


def backend() -> web.Application:
    def records(n: int, **change: Any) -> dict[str, Any]:
        rows = [dict(VALID_RECORD) for _ in range(n)]
        rows[-1].update(change)
        return {"total": n, "violations": rows}

    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "created":  # a 201 without a body: nothing to check
            return web.Response(status=201, headers={"Location": "/violations/1"})
        if kind == "valid":
            return web.json_response(records(3))
        if kind == "valid-array":
            return web.json_response({"violations": VALID_RECORD})  # one record, no array
        if kind == "invalid":
            return web.json_response(records(4, plate="粤I12345", extra="leak", code="0000"))
        if kind == "missing":
            rows = records(2)
            del rows["violations"][1]["at"]
            return web.json_response(rows)
        if kind == "text":
            return web.Response(text="plate,code\n粤B12345,1625\n", content_type="text/csv")
        if kind == "garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        if kind == "gzip":
            body = gzip.compress(orjson.dumps(records(2)))
            return web.Response(
                body=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if kind == "gzip-bomb":
            body = gzip.compress(b'{"violations": [' + b" " * (LIMIT * 2) + b"]}")
            return web.Response(
                body=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if kind == "big":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"violations": [')
            for _ in range(LIMIT // 1000 + 10):
                await resp.write(b" " * 1000)
            await resp.write(b"]}")
            await resp.write_eof()
            return resp
        if kind == "large-valid":
            return web.json_response(records(1000))  # ~280 KB: checked off the event loop
        if kind == "problem":
            return web.Response(
                body=b'{"type":"urn:example:no-such-plate","status":404}',
                status=404,
                content_type="application/problem+json",
            )
        if kind == "echo":
            body = await request.read()
            return web.json_response(records(1, fine=len(body)))
        raise web.HTTPNotFound()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{kind}", answer)
    return app


@dataclass
class Pair:
    url: str  # the consumer node's app listener
    key: str  # an API key of APP
    consumer_engine: Engine
    provider_engine: Engine
    session: aiohttp.ClientSession
    # Replace the provider's gateway by a fresh one on the same store (a node restart).
    restart_provider: Callable[[], Awaitable[None]] | None = None

    async def call(
        self,
        resource: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        h = {
            p.H_CLIENT: APP,
            "Authorization": f"Bearer {self.key}",
            p.H_PURPOSE: PURPOSE,
            **(headers or {}),
        }
        method = "POST" if data is not None else "GET"
        async with self.session.request(
            method, f"{self.url}/r1/{PROVIDER}/{resource}/{path}", data=data, headers=h
        ) as r:
            return r.status, dict(r.headers), await r.read()

    def records(self, exchange_id: str) -> dict[str, Any]:
        out = {}
        for role, engine in (
            ("consumer", self.consumer_engine),
            ("provider", self.provider_engine),
        ):
            rows = recent_records(engine, exchange_id=exchange_id)
            assert len(rows) == 1, (role, rows)
            out[role] = rows[0]
        return out


def _cert(ca_key: Any, ca: Any, tmp: Path, name: str, org: str) -> tuple[Path, Path, str]:
    key = pki.generate_private_key()
    cert = pki.issue_node_certificate(
        ca_key, ca, pki.create_csr(key, name, org), node_name=name, org_code=org,
        hosts=["127.0.0.1"], days=1,
    )  # fmt: skip
    (tmp / f"{name}.pem").write_bytes(pki.cert_to_pem(cert))
    (tmp / f"{name}.key").write_bytes(pki.key_to_pem(key))
    return tmp / f"{name}.pem", tmp / f"{name}.key", pki.fingerprint(cert)


async def _serve(app: web.Application, ssl: Any = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def pair(tmp_path: Path, db_url: str) -> AsyncIterator[Pair]:
    async with node_pair(tmp_path, db_url) as running:
        yield running


def open_agreements(*resources: str, **terms: Any) -> list[dict[str, Any]]:
    """Signed agreements of the consumer on each resource, in force around now: every field,
    no masking, the purpose PURPOSE (``terms`` change the document)."""
    now = datetime.now(UTC)
    return [
        published(
            agreement(
                **{
                    "id": f"agr-{code.replace('-', '')[:30]}",
                    "resource": {"code": code, "version": 0, "sharing_type": "conditional"},
                    "operations": {"methods": ["GET", "POST"], "paths": ["**"]},
                    "fields": None,
                    "masking": {},
                    "purposes": [PURPOSE],
                    "valid_from": (now - timedelta(days=1)).isoformat(),
                    "valid_until": (now + timedelta(days=1)).isoformat(),
                    "issued_at": (now - timedelta(days=1)).isoformat(),
                    **terms,
                }
            )
        )
        for code in resources
    ]


@contextlib.asynccontextmanager
async def node_pair(
    tmp_path: Path,
    db_url: str,
    backend_app: web.Application | None = None,
    *,
    agreements: list[dict[str, Any]] | None = None,
    consumer_agreements: list[dict[str, Any]] | None = None,
) -> AsyncIterator[Pair]:
    """A consumer and a provider node in this process (also used by bench/validation.py).
    Both nodes get the same signed configuration, with ``agreements`` (published form;
    default: open agreements on both resources) unless ``consumer_agreements`` gives the
    consumer's node others (to see the provider decide on its own)."""
    ca_key, ca = pki.create_ca("test CA")
    (tmp_path / "ca.pem").write_bytes(pki.cert_to_pem(ca))
    c_cert, c_key, c_fp = _cert(ca_key, ca, tmp_path, "consumer-node", CONSUMER)
    p_cert, p_key, p_fp = _cert(ca_key, ca, tmp_path, "provider-node", PROVIDER)
    backend_runner, backend_port = await _serve(backend_app or backend())
    provider_app = web.Application(client_max_size=LIMIT + 1)
    # The provider listener's port goes into the configuration the gateway is built from.
    handlers: dict[str, Any] = {}

    async def provider_route(request: web.Request) -> web.StreamResponse:
        return await handlers["provider"](request)  # type: ignore[no-any-return]

    provider_app.router.add_route("*", "/r1/{tail:.*}", provider_route)
    provider_runner, provider_port = await _serve(
        provider_app, pki.server_context(p_cert, p_key, tmp_path / "ca.pem")
    )
    spec, elements, code_lists = violation_catalog()
    schemas = derive_schemas(spec, elements, code_lists)
    if agreements is None:
        agreements = open_agreements(spec.code, "plain")
    doc = {
        "instance": INSTANCE,
        "serial": 1,
        "issued_at": datetime.now(UTC).isoformat(),
        "organizations": [
            {
                "code": PROVIDER,
                "name": "公安局",
                "apps": [],
                "agreement_key": public_text(KEYS[PROVIDER]),
            },
            {
                "code": CONSUMER,
                "name": "执法局",
                "apps": ["inspector"],
                "agreement_key": public_text(KEYS[CONSUMER]),
            },
        ],
        "revoked": [],
        "nodes": [
            {
                "name": "provider-node",
                "org": PROVIDER,
                "address": f"https://127.0.0.1:{provider_port}",
                "certificates": [{"fingerprint": p_fp}],
            },
            {
                "name": "consumer-node",
                "org": CONSUMER,
                "address": "https://127.0.0.1:1",
                "certificates": [{"fingerprint": c_fp}],
            },
        ],
        "resources": [
            {
                "org": PROVIDER,
                "code": spec.code,
                "name": spec.name,
                "version": 3,
                "schemas": schemas,
                "fields": [item.field for item in spec.items],
                "records_at": spec.records_at,
                "sharing_type": spec.sharing_type.value,
            },
            # As published before the catalog: no version, no schemas.
            {"org": PROVIDER, "code": "plain", "name": "plain"},
        ],
        "ca_certificates": [pki.cert_to_pem(ca).decode()],
        "agreements": agreements,
        "emergencies": [],
    }
    signer = signing.generate_signing_key()
    envelopes = {
        PROVIDER: signing.sign_document(signer, doc, kind=KIND),
        CONSUMER: signing.sign_document(
            signer,
            {
                **doc,
                "agreements": agreements if consumer_agreements is None else consumer_agreements,
            },
            kind=KIND,
        ),
    }
    public = signing.public_key_to_text(signer.public_key())
    engines: list[Engine] = []
    gateways: list[Any] = []
    runners = [backend_runner, provider_runner]
    services = {
        code: ServiceSettings(url=f"http://127.0.0.1:{backend_port}")
        for code in (spec.code, "plain")
    }
    for name, org, fp in (("provider-node", PROVIDER, p_fp), ("consumer-node", CONSUMER, c_fp)):
        data_dir = tmp_path / name
        data_dir.mkdir()
        url = db_url if name == "provider-node" else f"sqlite:///{data_dir / 'node.db'}"
        migrate("node", url)
        engines.append(make_engine(url))
        settings = NodeSettings(
            name=name,
            data_dir=data_dir,
            database_url=url,
            services=services if org == PROVIDER else {},
            max_body_bytes=LIMIT,
            validate_requests=True,
        )
        identity = NodeIdentity(data_dir, name, org, INSTANCE, public, fp)
        conf = ConfigurationCache(
            data_dir, public_key=public, instance=INSTANCE, grace_seconds=3600
        )
        conf.accept(envelopes[org])
        writer = RecordWriter(engines[-1])
        if org == PROVIDER:
            provider = ProviderGateway(settings, identity, conf, writer)
            await provider.start()
            handlers["provider"] = provider.handle
            gateways.append((provider, writer))
            provider_parts = (settings, identity, data_dir)
        else:
            keys = ApiKeyService(engines[-1])
            key = keys.create(APP).secret
            ssl = pki.client_context(c_cert, c_key, tmp_path / "ca.pem")
            consumer = ConsumerGateway(settings, identity, conf, keys, writer, ssl)
            await consumer.start()
            app = web.Application(client_max_size=LIMIT + 1)
            app.router.add_route("*", "/r1/{tail:.*}", consumer.handle)
            runner, port = await _serve(app)
            runners.append(runner)
            gateways.append((consumer, writer))

    async def restart_provider() -> None:
        """Stop the provider's gateway and start a new one from its data directory and store,
        as a node restart would (the new one counts from the records)."""
        old, old_writer = gateways[0]
        await old.close()
        old_writer.close()
        settings, identity, data_dir = provider_parts
        conf = ConfigurationCache(
            data_dir, public_key=public, instance=INSTANCE, grace_seconds=3600
        )
        writer = RecordWriter(engines[0])
        provider = ProviderGateway(settings, identity, conf, writer)
        await provider.start()
        handlers["provider"] = provider.handle
        gateways[0] = (provider, writer)

    try:
        async with aiohttp.ClientSession() as session:
            yield Pair(
                f"http://127.0.0.1:{port}", key, engines[1], engines[0], session, restart_provider
            )
    finally:
        for runner in runners:
            await runner.cleanup()
        for gateway, writer in gateways:
            await gateway.close()
            writer.close()
        for engine in engines:
            engine.dispose()


def _problem(body: bytes) -> dict[str, Any]:
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    return doc


async def test_valid_answer_passes_byte_identical_and_is_recorded(pair: Pair) -> None:
    status, headers, body = await pair.call("vehicle-violations", "valid", headers={p.H_ID: "ok-1"})
    assert status == 200
    assert orjson.loads(body)["total"] == 3
    recs = pair.records("ok-1")
    # Both nodes saw the same bytes as the app did, and the request hash still binds.
    digest = hashlib.sha256(body).hexdigest()
    assert recs["consumer"]["response_hash"] == recs["provider"]["response_hash"] == digest
    assert recs["consumer"]["request_hash"] == recs["provider"]["request_hash"]
    assert headers[p.H_REQUEST_HASH] == recs["consumer"]["request_hash"]
    assert recs["provider"]["problem_type"] == recs["consumer"]["problem_type"] == ""
    status, _, body = await pair.call("vehicle-violations", "valid-array")
    assert status == 200, body


async def test_invalid_answer_is_refused_naming_fields_and_rules_not_values(pair: Pair) -> None:
    status, headers, body = await pair.call(
        "vehicle-violations", "invalid", headers={p.H_ID: "bad-1"}
    )
    assert status == 502
    assert headers["Content-Type"].startswith("application/problem+json")
    doc = _problem(body)
    assert doc["type"] == "urn:qiao:problem:provider:invalid-response"
    assert doc["resource_version"] == 3
    errors = {(e["pointer"], e["keyword"], e.get("rule", "")) for e in doc["errors"]}
    assert ("/violations/3/plate", "format", "plate.authority") in errors
    assert ("/violations/3/code", "enum", "") in errors
    assert ("/violations/3/extra", "additionalProperties", "") in errors
    # Never the offending values: the answer may be personal data.
    assert "粤I12345".encode() not in body and b"leak" not in body and b"0000" not in body
    recs = pair.records("bad-1")
    for role in ("consumer", "provider"):
        assert recs[role]["status"] == 502
        assert recs[role]["problem_type"] == "urn:qiao:problem:provider:invalid-response"
    # Both records hash the problem the app received: the evidence agrees.
    digest = hashlib.sha256(body).hexdigest()
    assert recs["consumer"]["response_hash"] == recs["provider"]["response_hash"] == digest


async def test_missing_required_field_points_at_it(pair: Pair) -> None:
    status, _, body = await pair.call("vehicle-violations", "missing")
    assert status == 502
    assert {"pointer": "/violations/1/at", "keyword": "required"} in _problem(body)["errors"]


@pytest.mark.parametrize(
    ("path", "keyword"),
    [
        ("text", "contentMediaType"),
        ("garbage", "json"),
        ("big", "maxBytes"),
        ("gzip-bomb", "contentEncoding"),
    ],
)
async def test_answers_that_cannot_be_checked_are_refused(
    pair: Pair, path: str, keyword: str
) -> None:
    status, _, body = await pair.call("vehicle-violations", path, headers={p.H_ID: f"x-{path}"})
    assert status == 502
    doc = _problem(body)
    assert doc["type"] == "urn:qiao:problem:provider:invalid-response"
    assert [e["keyword"] for e in doc["errors"]] == [keyword]
    assert pair.records(f"x-{path}")["provider"]["problem_type"] == doc["type"]


async def test_compressed_and_large_valid_answers_pass(pair: Pair) -> None:
    async with pair.session.get(
        f"{pair.url}/r1/{PROVIDER}/vehicle-violations/gzip",
        headers={p.H_CLIENT: APP, "Authorization": f"Bearer {pair.key}", p.H_PURPOSE: PURPOSE},
        auto_decompress=False,
    ) as r:
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
        assert orjson.loads(gzip.decompress(await r.read()))["total"] == 2
    status, _, body = await pair.call("vehicle-violations", "large-valid")
    assert status == 200 and len(orjson.loads(body)["violations"]) == 1000


async def test_backend_problems_and_unschematized_resources_pass_through(pair: Pair) -> None:
    status, _, body = await pair.call("vehicle-violations", "problem", headers={p.H_ID: "nf-1"})
    assert status == 404 and _problem(body)["type"] == "urn:example:no-such-plate"
    # A 201 without a body carries no records: it passes, not a 502.
    status, _, body = await pair.call("vehicle-violations", "created")
    assert status == 201 and body == b"", body
    assert pair.records("nf-1")["consumer"]["problem_type"] == "urn:example:no-such-plate"
    # No schema: anything goes through, streamed as before.
    for path in ("invalid", "text", "big"):
        status, _, body = await pair.call("plain", path)
        assert status == 200, (path, body)


async def test_consumer_checks_request_bodies_before_they_leave(pair: Pair) -> None:
    good = orjson.dumps({"citizen_id": CIVIL_ID})
    status, _, body = await pair.call(
        "vehicle-violations", "echo", data=good,
        headers={"Content-Type": "application/json", p.H_ID: "rq-1"},
    )  # fmt: skip
    assert status == 200
    assert orjson.loads(body)["violations"][0]["fine"] == len(good)  # sent as the app sent it
    recs = pair.records("rq-1")
    assert recs["consumer"]["request_hash"] == recs["provider"]["request_hash"]

    broken = CIVIL_ID[:-1] + ("0" if CIVIL_ID[-1] != "0" else "1")
    for payload, pointer, rule in (
        ({"citizen_id": broken}, "/citizen_id", "citizen-id.check-character"),
        ({}, "/citizen_id", ""),
        ({"citizen_id": CIVIL_ID, "name": "张三"}, "/name", ""),
    ):
        status, _, body = await pair.call(
            "vehicle-violations", "echo", data=orjson.dumps(payload),
            headers={"Content-Type": "application/json", p.H_ID: "rq-2"},
        )  # fmt: skip
        assert status == 422, body
        doc = _problem(body)
        assert doc["type"] == "urn:qiao:problem:client:invalid-request"
        assert doc["errors"][0]["pointer"] == pointer
        assert doc["errors"][0].get("rule", "") == rule
        assert broken.encode() not in body
    status, _, body = await pair.call(
        "vehicle-violations", "echo", data=b"citizen_id=1", headers={"Content-Type": "text/plain"}
    )
    assert status == 422 and _problem(body)["errors"][0]["keyword"] == "contentMediaType"
    # Refused at the consumer: recorded there, never reached the provider.
    rows = recent_records(pair.consumer_engine, exchange_id="rq-2")
    assert len(rows) == 3 and {r["status"] for r in rows} == {422}
    assert not recent_records(pair.provider_engine, exchange_id="rq-2")


def _conf_doc(resources: list[dict[str, Any]], serial: int = 1) -> dict[str, Any]:
    return {
        "instance": INSTANCE,
        "serial": serial,
        "issued_at": datetime.now(UTC).isoformat(),
        "organizations": [],
        "revoked": [],
        "nodes": [],
        "resources": resources,
        "ca_certificates": [],
    }


def test_configurations_compile_schemas_once_and_refuse_broken_ones() -> None:
    spec, elements, code_lists = violation_catalog()
    schemas = derive_schemas(spec, elements, code_lists)
    entry = {"org": PROVIDER, "code": spec.code, "version": 3}
    first = GlobalConf.compile(_conf_doc([{**entry, "schemas": schemas}]))
    # A new configuration (another serial) with the same schemas reuses the compiled ones.
    second = GlobalConf.compile(
        _conf_doc([{**entry, "schemas": orjson.loads(orjson.dumps(schemas))}], 2)
    )
    a, b = first.resources[(PROVIDER, spec.code)], second.resources[(PROVIDER, spec.code)]
    assert a.version == 3 and a.response_schema is not None and a.request_schema is not None
    assert b.response_schema is a.response_schema and b.request_schema is a.request_schema
    # Documents from before the catalog: no version, no schemas, nothing validated.
    old = GlobalConf.compile(_conf_doc([{"org": PROVIDER, "code": "x"}]))
    assert old.resources[(PROVIDER, "x")].version == 0
    assert old.resources[(PROVIDER, "x")].response_schema is None
    broken = {"response": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": 7}}
    with pytest.raises(ValueError, match="unexpected shape"):
        GlobalConf.compile(_conf_doc([{**entry, "schemas": broken}]))
