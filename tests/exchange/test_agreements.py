"""Agreements enforced by a real node pair (the consumer's node and the provider's, over
mutual TLS, as in test_validation.py): masking and projection on the wire, tampered, expired,
suspended and revoked agreements, purposes and end users, and quotas that hold under 64
parallel callers and across a provider restart."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from qiao.exchange import protocol as p
from qiao.exchange.provider import load_pseudonym_secret
from qiao.exchange.records import recent_records
from tests.catalog.violations import PROVIDER, VALID_RECORD
from tests.exchange.test_validation import APP, PURPOSE, Pair, node_pair, open_agreements

VIOLATIONS = "vehicle-violations"
PERSON = {
    "plate": "闽A12345",
    "owner": {"name": "张三丰", "mobile": "13800138000", "citizen_id": "350102199003071234"},
    "history": [
        {"plate": "闽A12345", "note": "secret-note-1"},
        {"plate": "闽B54321", "note": "secret-note-2"},
    ],
    "driver_mobile": "13900139000",
}


def backend() -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "valid":
            return web.json_response({"total": 2, "violations": [VALID_RECORD, VALID_RECORD]})
        if kind == "gzip":
            body = gzip.compress(orjson.dumps({"total": 1, "violations": [VALID_RECORD]}))
            return web.Response(
                body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
        if kind == "envelope":
            # A lookup that repeats record fields around the records: the plate it was asked
            # for (masked in the records) and the driver's mobile (not projected at all).
            return web.json_response(
                {
                    "plate": VALID_RECORD["plate"],
                    "driver_mobile": "13800138000",
                    "total": 1,
                    "violations": [VALID_RECORD],
                }
            )
        if kind == "people":
            return web.json_response([PERSON, PERSON])  # the records are the document
        if kind == "text":
            return web.Response(text="plate\n闽A12345\n", content_type="text/csv")
        if kind == "missing":
            return web.Response(status=404, text="no such record")
        if kind == "problem":
            # The backend's own problem, quoting the record in its detail and an extension.
            problem = {
                "type": "https://backend.example/problems/owner-moved",
                "title": "The owner has moved",
                "status": 409,
                "detail": "张三丰 (13800138000) moved",
                "record": PERSON,
            }
            return web.Response(
                status=409,
                body=orjson.dumps(problem),
                content_type="application/problem+json",
                headers={"ETag": '"13800138000"'},
            )
        if kind == "error":
            return web.json_response({"failed_on": PERSON}, status=500)
        if kind == "redirect":
            return web.json_response(
                PERSON, status=302, headers={"Location": "/people/350102199003071234"}
            )
        if kind == "ranged":
            if "Range" in request.headers or "If-None-Match" in request.headers:
                return web.Response(
                    status=206,
                    body=orjson.dumps([PERSON])[:40],
                    content_type="application/json",
                    headers={"Content-Range": "bytes 0-39/400"},
                )
            return web.json_response([PERSON])
        if kind == "partial":
            return web.Response(
                status=206,
                body=orjson.dumps([PERSON])[:40],
                content_type="application/json",
                headers={"Content-Range": "bytes 0-39/400"},
            )
        if kind == "wrapped":
            # Objects and arrays beside the records, unseen by any projection.
            return web.json_response(
                {
                    "total": 1,
                    "cursor": "page-2",
                    "related": [PERSON],
                    "query": {"mobile": "13800138000"},
                    "violations": [VALID_RECORD],
                }
            )
        if kind == "mixed":
            return web.json_response([PERSON, "闽A12345", [PERSON], 7])
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/{kind}", answer)
    return app


def _dir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def _doc(body: bytes) -> Any:
    return orjson.loads(body)


def _masked_violations(**terms: Any) -> list[dict[str, Any]]:
    return open_agreements(
        VIOLATIONS,
        fields=["plate", "code", "occurred_at", "at", "division", "handled"],
        masking={"plate": {"rule": "plate"}},
        **terms,
    ) + open_agreements(
        "plain",
        fields=["plate", "owner.name", "owner.mobile", "history[].plate"],
        masking={
            "plate": {"rule": "plate"},
            "owner.name": {"rule": "name"},
            "owner.mobile": {"rule": "mobile"},
            "history[].plate": {"rule": "pseudonym"},
        },
    )


@pytest.fixture
async def masked(tmp_path: Path, db_url: str) -> AsyncIterator[Pair]:
    async with node_pair(tmp_path, db_url, backend(), agreements=_masked_violations()) as pair:
        yield pair


async def test_answers_leave_projected_and_masked(masked: Pair) -> None:
    status, headers, body = await masked.call(VIOLATIONS, "valid", headers={p.H_ID: "m-1"})
    assert status == 200, body
    doc = _doc(body)
    assert doc["total"] == 2  # outside the records: kept
    for record in doc["violations"]:
        assert set(record) == {"plate", "code", "occurred_at", "at", "division", "handled"}
        assert record["plate"] == "闽A****5"
    for secret in ("13800138000", "闽A12345", "driver_mobile", "fine"):
        assert secret.encode() not in body
    # Both nodes hash what was sent, which is what the app got.
    recs = masked.records("m-1")
    digest = hashlib.sha256(body).hexdigest()
    assert recs["provider"]["response_hash"] == recs["consumer"]["response_hash"] == digest
    assert recs["provider"]["agreement"] == recs["consumer"]["agreement"] == "agr-vehicleviolations"
    assert recs["provider"]["emergency"] == ""
    assert int(headers["Content-Length"]) == len(body)


async def test_the_envelope_cannot_carry_what_the_records_may_not(masked: Pair) -> None:
    status, _, body = await masked.call(VIOLATIONS, "envelope")
    assert status == 200, body
    doc = _doc(body)
    assert doc["plate"] == "闽A****5" == doc["violations"][0]["plate"]  # masked by its rule
    assert "driver_mobile" not in doc  # a record field outside the projection
    assert doc["total"] == 1  # not a record field: the envelope's own
    assert b"13800138000" not in body and "闽A12345".encode() not in body


async def test_compressed_answers_are_masked_and_sent_plain(masked: Pair) -> None:
    async with masked.session.get(
        f"{masked.url}/r1/{PROVIDER}/{VIOLATIONS}/gzip",
        headers={p.H_CLIENT: APP, "Authorization": f"Bearer {masked.key}", p.H_PURPOSE: PURPOSE},
        auto_decompress=False,
    ) as r:
        body = await r.read()
        assert r.status == 200 and "Content-Encoding" not in r.headers
    assert _doc(body)["violations"][0]["plate"] == "闽A****5"


async def test_nested_objects_and_arrays(masked: Pair) -> None:
    status, _, body = await masked.call("plain", "people")
    assert status == 200, body
    people = _doc(body)
    assert len(people) == 2 and people[0] == people[1]
    person = people[0]
    assert set(person) == {"plate", "owner", "history"}
    assert person["plate"] == "闽A****5"
    assert person["owner"] == {"name": "张**", "mobile": "138****8000"}
    pseudonyms = [h["plate"] for h in person["history"]]
    assert all(set(h) == {"plate"} for h in person["history"])
    assert pseudonyms[0].startswith("ps_") and pseudonyms[0] != pseudonyms[1]
    for secret in ("350102199003071234", "secret-note", "13900139000", "张三丰", "闽B54321"):
        assert secret.encode() not in body
    # Stable per agreement: the same plate gives the same pseudonym in every answer.
    _, _, again = await masked.call("plain", "people")
    assert _doc(again)[0]["history"][0]["plate"] == pseudonyms[0]


async def test_non_json_answers_cannot_be_masked_and_do_not_leave(masked: Pair) -> None:
    status, _, body = await masked.call("plain", "text")
    assert status == 502
    assert _doc(body)["type"] == "urn:qiao:problem:provider:invalid-response"
    assert "闽A12345".encode() not in body


SECRETS = ("350102199003071234", "13800138000", "张三丰", "闽A12345", "secret-note")


def _leaks(headers: dict[str, str], body: bytes) -> list[str]:
    seen = body.decode() + "".join(f"{k}: {v}" for k, v in headers.items())
    return [s for s in SECRETS if s in seen]


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        # Not a problem document: RFC 9457 §4.2.1 about:blank with the reason phrase.
        ("missing", 404, {"type": "about:blank", "title": "Not Found", "status": 404}),
        ("error", 500, {"type": "about:blank", "title": "Internal Server Error", "status": 500}),
        ("redirect", 302, {"type": "about:blank", "title": "Found", "status": 302}),
        # The backend's problem keeps its type, title and status, nothing else.
        (
            "problem",
            409,
            {
                "type": "https://backend.example/problems/owner-moved",
                "title": "The owner has moved",
                "status": 409,
            },
        ),
    ],
)
async def test_error_and_redirect_answers_leave_as_minimal_problems(
    masked: Pair, path: str, status: int, expected: dict[str, Any]
) -> None:
    got, headers, body = await masked.call("plain", path, headers={p.H_ID: f"e-{path}"})
    assert got == status
    assert headers["Content-Type"] == "application/problem+json"
    assert _doc(body) == expected
    assert not _leaks(headers, body)
    for name in ("Location", "ETag", "Content-Range"):
        assert name not in headers
    recs = masked.records(f"e-{path}")
    assert recs["provider"]["status"] == recs["consumer"]["status"] == status
    assert recs["provider"]["problem_type"] == expected["type"]
    digest = hashlib.sha256(body).hexdigest()
    assert recs["provider"]["response_hash"] == recs["consumer"]["response_hash"] == digest


async def test_without_masking_backend_problems_pass_through(tmp_path: Path, db_url: str) -> None:
    async with node_pair(tmp_path, db_url, backend(), agreements=open_agreements("plain")) as pair:
        status, _, body = await pair.call("plain", "missing")
        assert status == 404 and body == b"no such record"
        async with pair.session.get(
            f"{pair.url}/r1/{PROVIDER}/plain/redirect",
            headers={p.H_CLIENT: APP, "Authorization": f"Bearer {pair.key}", p.H_PURPOSE: PURPOSE},
            allow_redirects=False,
        ) as r:
            assert r.status == 302 and r.headers["Location"] == "/people/350102199003071234"


async def test_range_is_not_forwarded_and_partial_answers_do_not_leave(masked: Pair) -> None:
    # The backend answers 206 to Range or If-None-Match: neither reaches it, the whole
    # document comes back and is masked.
    ranged = {"Range": "bytes=0-39", "If-None-Match": '"x"'}
    status, headers, body = await masked.call("plain", "ranged", headers=ranged)
    assert status == 200, body
    assert _doc(body)[0]["owner"] == {"name": "张**", "mobile": "138****8000"}
    assert "Content-Range" not in headers and not _leaks(headers, body)
    # A backend that answers 206 anyway: a piece of a document cannot be masked.
    status, headers, body = await masked.call("plain", "partial")
    assert status == 502
    doc = _doc(body)
    assert doc["type"] == "urn:qiao:problem:provider:invalid-response"
    assert doc["errors"] == [{"pointer": "", "keyword": "status", "rule": "206"}]
    assert "Content-Range" not in headers and not _leaks(headers, body)


async def test_envelope_objects_and_arrays_are_dropped(masked: Pair) -> None:
    status, _, body = await masked.call(VIOLATIONS, "wrapped")
    assert status == 200, body
    doc = _doc(body)
    assert set(doc) == {"total", "cursor", "violations"}  # scalars kept, containers gone
    assert doc["total"] == 1 and doc["cursor"] == "page-2"
    assert doc["violations"][0]["plate"] == "闽A****5"
    assert not _leaks({}, body)


async def test_records_that_are_not_objects_become_null(masked: Pair) -> None:
    status, _, body = await masked.call("plain", "mixed")
    assert status == 200, body
    doc = _doc(body)
    assert doc[0]["plate"] == "闽A****5" and doc[1:] == [None, None, None]
    assert not _leaks({}, body)


async def test_pseudonyms_survive_a_renewal(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pseudonym key is the consumer's, the provider's and the resource's, not the
    agreement's: a renewal (another agreement id) gives the consumer the same pseudonyms."""
    from qiao.exchange import provider

    secret = b"p" * 32
    monkeypatch.setattr(provider, "load_pseudonym_secret", lambda data_dir: secret)
    seen: list[list[str]] = []
    for name, terms in (("a", {}), ("b", {"id": "agr-plainrenewed", "renews": "agr-plain"})):
        agreements = open_agreements(
            "plain",
            fields=["history[].plate"],
            masking={"history[].plate": {"rule": "pseudonym"}},
            **terms,
        )
        where = _dir(tmp_path, name)
        async with node_pair(where, db_url, backend(), agreements=agreements) as pair:
            status, _, body = await pair.call("plain", "people", headers={p.H_ID: f"r-{name}"})
            assert status == 200, body
            assert pair.records(f"r-{name}")["provider"]["agreement"] == (
                terms.get("id", "agr-plain")
            )
            seen.append([h["plate"] for h in _doc(body)[0]["history"]])
    assert seen[0] == seen[1] and seen[0][0].startswith("ps_")


async def test_fields_outside_the_projection_cannot_be_asked_for(masked: Pair) -> None:
    for path in ("valid?driver_mobile=13800138000", "valid?fields=plate,fine", "driver_mobile"):
        status, _, body = await masked.call(VIOLATIONS, path, headers={p.H_ID: "f-1"})
        assert status == 403, path
        assert _doc(body)["type"] == "urn:qiao:problem:client:field-not-allowed"
    assert not recent_records(masked.provider_engine, exchange_id="f-1")


async def test_purpose_and_end_user(tmp_path: Path, db_url: str) -> None:
    agreements = open_agreements(VIOLATIONS, conditions={"end_user_required": True})
    async with node_pair(tmp_path, db_url, backend(), agreements=agreements) as pair:
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_PURPOSE: "x"})
        assert status == 403
        doc = _doc(body)
        assert doc["type"] == "urn:qiao:problem:client:purpose-not-allowed"
        assert doc["allowed_purposes"] == [PURPOSE]
        status, _, body = await pair.call(VIOLATIONS, "valid")
        assert _doc(body)["type"] == "urn:qiao:problem:client:end-user-required"
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_USER: "officer-7"})
        assert status == 200, body


def _tampered(published: dict[str, Any]) -> dict[str, Any]:
    changed = {**published["agreement"], "purposes": [*published["agreement"]["purposes"], "x"]}
    return {**published, "agreement": changed}


async def test_tampered_agreement_is_refused_by_both_nodes(tmp_path: Path, db_url: str) -> None:
    good = open_agreements(VIOLATIONS)
    bad = [_tampered(good[0])]
    # Both nodes hold the tampered agreement: the consumer's node refuses, nothing leaves.
    async with node_pair(_dir(tmp_path, "a"), db_url, backend(), agreements=bad) as pair:
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_ID: "t-1"})
        assert status == 403
        doc = _doc(body)
        assert doc["type"] == "urn:qiao:problem:consumer:agreement-invalid"
        assert "SHA-256" in doc["detail"]
        assert not recent_records(pair.provider_engine, exchange_id="t-1")
    # A permissive consumer node (it holds the good one): the provider refuses on its own.
    async with node_pair(
        _dir(tmp_path, "b"), db_url, backend(), agreements=bad, consumer_agreements=good
    ) as pair:
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_ID: "t-2"})
        assert status == 403
        assert _doc(body)["type"] == "urn:qiao:problem:provider:agreement-invalid"
        recs = pair.records("t-2")
        assert recs["provider"]["problem_type"] == "urn:qiao:problem:provider:agreement-invalid"


def _with_state(agreements: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    return [{**a, "state": state, "reason": "检查中"} for a in agreements]


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ("expired", "agreement-expired"),
        ("suspended", "agreement-suspended"),
        ("revoked", "agreement-revoked"),
    ],
)
async def test_expired_suspended_revoked_at_both_nodes(
    tmp_path: Path, db_url: str, change: str, kind: str
) -> None:
    good = open_agreements(VIOLATIONS)
    if change == "expired":
        # In force in January 2026 only.
        bad = open_agreements(
            VIOLATIONS,
            valid_from="2026-01-01T00:00:00+08:00",
            valid_until="2026-02-01T00:00:00+08:00",
            issued_at="2026-01-01T00:00:00+08:00",
        )
    else:
        bad = _with_state(good, change)
    uri = f"urn:qiao:problem:client:{kind}"
    async with node_pair(_dir(tmp_path, "a"), db_url, backend(), agreements=bad) as pair:
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_ID: "s-1"})
        assert (status, _doc(body)["type"]) == (403, uri)
        assert not recent_records(pair.provider_engine, exchange_id="s-1")
    async with node_pair(
        _dir(tmp_path, "b"), db_url, backend(), agreements=bad, consumer_agreements=good
    ) as pair:
        status, _, body = await pair.call(VIOLATIONS, "valid", headers={p.H_ID: "s-2"})
        assert (status, _doc(body)["type"]) == (403, uri)
        assert pair.records("s-2")["provider"]["problem_type"] == uri


async def _parallel(pair: Pair, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    return await asyncio.gather(*(pair.call(VIOLATIONS, "valid") for _ in range(n)))


@pytest.mark.parametrize("consumer_counts", [True, False])
async def test_quota_under_64_parallel_callers_has_no_overshoot(
    tmp_path: Path, db_url: str, consumer_counts: bool
) -> None:
    limited = open_agreements(VIOLATIONS, daily_quota=50)
    # Either both nodes count, or only the provider's (the consumer's node holds a copy
    # without the quota): the provider's count alone must hold too.
    consumer = None if consumer_counts else open_agreements(VIOLATIONS)
    async with node_pair(
        tmp_path, db_url, backend(), agreements=limited, consumer_agreements=consumer
    ) as pair:
        answers = await _parallel(pair, 64)
        statuses = [s for s, _, _ in answers]
        assert statuses.count(200) == 50 and statuses.count(429) == 14
        for status, headers, body in answers:
            if status == 429:
                doc = _doc(body)
                assert doc["type"] == "urn:qiao:problem:client:quota-exhausted"
                assert int(headers["Retry-After"]) == doc["retry_after"] > 0
        provider = recent_records(pair.provider_engine, limit=1000)
        assert sum(r["status"] == 200 for r in provider) == 50
        consumer_rows = recent_records(pair.consumer_engine, limit=1000)
        assert sum(r["status"] == 200 for r in consumer_rows) == 50
        if consumer_counts:
            assert len(provider) == 50  # the consumer's node refused the rest itself


async def test_the_provider_quota_holds_across_a_provider_restart(
    tmp_path: Path, db_url: str
) -> None:
    limited = open_agreements(VIOLATIONS, daily_quota=5)
    permissive = open_agreements(VIOLATIONS)
    async with node_pair(
        tmp_path, db_url, backend(), agreements=limited, consumer_agreements=permissive
    ) as pair:
        assert [s for s, _, _ in await _parallel(pair, 3)] == [200] * 3
        assert pair.restart_provider is not None
        await pair.restart_provider()
        statuses = sorted(s for s, _, _ in await _parallel(pair, 4))
        assert statuses == [200, 200, 429, 429]


def test_the_pseudonym_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    secret = load_pseudonym_secret(tmp_path)
    path = tmp_path / "pseudonym.secret"
    assert len(secret) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_pseudonym_secret(tmp_path) == secret  # a restart keeps the pseudonyms stable
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="32-byte"):
        load_pseudonym_secret(tmp_path)
