"""The ledger end to end: records reach the log, witnesses cosign, receipts verify offline."""

from __future__ import annotations

import json
from typing import Any

import httpx

from qiao.ledger.policy import Policy
from qiao.ledger.receipt import parse_receipt, verify_receipt
from tests.integration.conftest import City, wait_for

T = ("transport", "traffic-enforcement")


def _receipt(city: City, xid: str, role: str | None = None) -> bytes:
    url = f"{city.dep.hub_url}/ledger/receipts/{xid}" + (f"?role={role}" if role else "")

    def get() -> bytes | None:
        r = httpx.get(url)
        return r.content if r.status_code == 200 else None

    return wait_for(get)  # type: ignore[no-any-return]


def test_exchange_receipt_verifies_offline(city: City) -> None:
    r = httpx.get(
        city.url("transport", "police", "echo"),
        headers=city.headers(*T, **{"X-Qiao-Purpose": "audit-test", "X-Qiao-User": "officer-9"}),
    )
    assert r.status_code == 200
    xid = r.headers["x-qiao-id"]
    policy = Policy.parse(httpx.get(f"{city.dep.hub_url}/ledger/policy").text)
    for role in ("consumer", "provider"):
        receipt = _receipt(city, xid, role)
        index = parse_receipt(receipt).index
        entry = httpx.get(f"{city.dep.hub_url}/ledger/entries/{index}").content
        fields = json.loads(entry)
        assert fields["exchange_id"] == xid and fields["role"] == role
        assert fields["purpose"] == "audit-test" and fields["end_user"] == "officer-9"
        assert fields["request_hash"] == r.headers["x-qiao-request-hash"]
        assert "path" not in fields  # query strings can hold identifiers: never on the ledger
        statement = verify_receipt(receipt, entry, policy)
        assert str(index) in statement
        # The receipt is for this entry only.
        other = entry.replace(b"officer-9", b"officer-8")
        try:
            verify_receipt(receipt, other, policy)
        except Exception as exc:
            assert "inclusion" in str(exc).lower() or "root" in str(exc).lower()
        else:
            raise AssertionError("a different entry verified")


def test_every_record_reaches_the_ledger_once(city: City) -> None:
    ids = []
    for _ in range(20):
        r = httpx.get(city.url("transport", "police", "echo"), headers=city.headers(*T))
        ids.append(r.headers["x-qiao-id"])
    for xid in ids:
        _receipt(city, xid)
    status = httpx.get(f"{city.dep.hub_url}/ledger/status").json()
    assert status["size"] >= 40
    # Each exchange maps to exactly its two records (consumer and provider).
    for xid in ids[:5]:
        roles = []
        for role in ("consumer", "provider"):
            index = parse_receipt(_receipt(city, xid, role)).index
            roles.append(
                json.loads(httpx.get(f"{city.dep.hub_url}/ledger/entries/{index}").content)["role"]
            )
        assert roles == ["consumer", "provider"]


def test_checkpoint_is_cosigned_by_a_quorum(city: City) -> None:
    status = wait_for(
        lambda: (s := httpx.get(f"{city.dep.hub_url}/ledger/status").json())["cosigned_size"] and s
    )
    assert status["quorum"] == 2 and len(status["witnesses"]) == 3
    note = httpx.get(f"{city.dep.hub_url}/ledger/checkpoint").text
    assert note.count("\n— ") >= 3  # the log's signature and at least two cosignatures
    tile = httpx.get(f"{city.dep.hub_url}/ledger/tile/0/000.p/1")
    assert tile.status_code == 200 and len(tile.content) == 32
    bad = httpx.get(f"{city.dep.hub_url}/ledger/tile/0/x.p/1")
    assert bad.status_code in (400, 404)
    assert bad.headers["content-type"].startswith("application/problem+json")


def test_unsigned_or_foreign_submissions_are_refused(city: City) -> None:
    from qiao import pki
    from qiao.ledger.exchanges import encode_batch, sign_batch

    url = f"{city.dep.hub_url}/api/v1/ledger/submissions"
    transport = city.dep.nodes["transport"]
    key = pki.load_key_pem((transport.data_dir / "node.key").read_bytes())
    fingerprint = pki.fingerprint(pki.load_cert_pem((transport.data_dir / "node.pem").read_bytes()))
    record = {"record_id": 999_999, "exchange_id": "forged", "role": "consumer"}

    def post(node: str, fp: str, batch: bytes, signature: str) -> httpx.Response:
        return httpx.post(
            url,
            json={"node": node, "fingerprint": fp, "batch": batch.decode(), "signature": signature},
        )

    def refused(r: httpx.Response, status: int = 403) -> None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")

    batch = encode_batch("transport-node", [record])
    # Not a registered certificate; not this node's certificate.
    refused(post("transport-node", "0" * 64, batch, sign_batch(key, batch)))
    refused(post("police-node", fingerprint, batch, sign_batch(key, batch)))
    # Signed by the right key, then altered; or signed, but for another node.
    refused(
        post(
            "transport-node",
            fingerprint,
            batch.replace(b"forged", b"forger"),
            sign_batch(key, batch),
        )
    )
    other = encode_batch("police-node", [record])
    refused(post("transport-node", fingerprint, other, sign_batch(key, other)))
    # Well signed but not a batch of records.
    empty = encode_batch("transport-node", [])
    refused(post("transport-node", fingerprint, empty, sign_batch(key, empty)), 422)
    refused(httpx.post(url, content=b"{"), 422)


def test_administrative_actions_are_on_the_ledger(city: City) -> None:
    hashes: dict[str, str] = {}  # agreement id -> the SHA-256 its ledger entry records

    def actions() -> dict[str, set[str]]:
        size = httpx.get(f"{city.dep.hub_url}/ledger/status").json()["size"]
        found: dict[str, set[str]] = {}
        for index in range(size):
            e = json.loads(httpx.get(f"{city.dep.hub_url}/ledger/entries/{index}").content)
            if e["type"] == "admin":
                found.setdefault(e["action"], set()).add(e["actor"])
                if e["action"].startswith("agreement.") and "sha256" in e["detail"]:
                    hashes[e["detail"]["agreement"]] = e["detail"]["sha256"]
        return found

    found = wait_for(lambda: (a := actions()).get("node.enroll") and a)
    assert {
        "organization.add",
        "app.add",
        "resource.add",
        "request.submit",
        "request.approve",
        "agreement.create",
        "agreement.subscribe",
        "enrollment-token.create",
        "node.enroll",
    } <= set(found)
    assert all(actor.startswith("enrollment:") for actor in found["node.enroll"])
    # Each agreement's hash is on the ledger: the one the nodes verify and enforce.
    from qiao.agreements.service import AgreementService
    from qiao.identity.roles import CLI

    agreement_id = city.dep.sharing.agreements["violations"]
    stored = AgreementService(city.registry).get(CLI, agreement_id)
    assert hashes[agreement_id] == stored.sha256
    assert all(actor.startswith("cli:") for actor in found["organization.add"])


def test_records_link_their_receipt_and_qiao_verify_checks_it(city: City, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from qiao.cli import app

    r = httpx.get(city.url("transport", "police", "echo"), headers=city.headers(*T))
    xid = r.headers["x-qiao-id"]
    receipt = _receipt(city, xid, "consumer")
    runner = CliRunner()
    cfg = str(city.dep.nodes["transport"].config)
    out = runner.invoke(app, ["node", "--config", cfg, "records", "--json", "--id", xid])
    assert out.exit_code == 0, out.output
    link = json.loads(out.stdout)["receipt"]
    assert link.endswith(f"/ledger/receipts/{xid}?role=consumer")
    assert httpx.get(
        link.replace(city.dep.node_settings["hub_url"], city.dep.hub_url)
    ).content.startswith(b"c2sp.org/tlog-proof@v1")
    index = parse_receipt(receipt).index
    files = {
        "receipt": receipt,
        "policy": httpx.get(f"{city.dep.hub_url}/ledger/policy").content,
        "entry": httpx.get(f"{city.dep.hub_url}/ledger/entries/{index}").content,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ok = runner.invoke(
        app,
        [
            "verify",
            str(tmp_path / "receipt"),
            "--policy",
            str(tmp_path / "policy"),
            "--entry",
            str(tmp_path / "entry"),
        ],
    )
    assert ok.exit_code == 0 and f"entry {index} is in log" in ok.stdout
    (tmp_path / "entry").write_bytes(files["entry"].replace(b"consumer", b"provider"))
    bad = runner.invoke(
        app,
        [
            "verify",
            str(tmp_path / "receipt"),
            "--policy",
            str(tmp_path / "policy"),
            "--entry",
            str(tmp_path / "entry"),
        ],
    )
    assert bad.exit_code == 1 and "does not verify" in bad.output
