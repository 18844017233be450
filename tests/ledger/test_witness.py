"""The node's tlog-witness: every answer of c2sp.org/tlog-witness, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect

from qiao.db import NodeBase, downgrade, make_engine, migrate
from qiao.ledger import merkle, note
from qiao.ledger.witness import (
    ALERT_INCONSISTENT,
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    Witness,
    parse_add_checkpoint,
    witness_routes,
)

ORIGIN = "hub.qiao.example/ledger"
NOW = 1_700_000_000


class Log:
    """A log in memory that signs checkpoints and writes add-checkpoint requests."""

    def __init__(self, origin: str = ORIGIN, signer: note.Signer | None = None) -> None:
        self.origin = origin
        self.signer = signer or note.Signer.generate(origin)
        self.tree = merkle.MemoryTree()

    def grow(self, size: int, salt: bytes = b"") -> Log:
        while self.tree.size < size:
            self.tree.append(merkle.leaf_hash(b"entry %d" % self.tree.size + salt))
        return self

    def body(self, size: int) -> str:
        return note.Checkpoint(self.origin, size, self.tree.root(size)).format()

    def checkpoint(self, size: int) -> bytes:
        return note.sign_note(self.body(size), [self.signer])

    def proof(self, old: int, size: int) -> list[bytes]:
        return merkle.consistency_proof(old, size, self.tree.get_hash) if 0 < old < size else []

    def request(self, old: int, size: int, proof: list[bytes] | None = None) -> bytes:
        proof = self.proof(old, size) if proof is None else proof
        lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        return f"old {old}\n{lines}\n".encode() + self.checkpoint(size)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    migrate("node", db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def log() -> Log:
    return Log().grow(40)


@pytest.fixture
def cosigner() -> note.Cosigner:
    return note.Cosigner.generate("witness.transport.qiao.example")


@pytest.fixture
def witness(engine: Engine, log: Log, cosigner: note.Cosigner) -> Witness:
    return Witness(engine, cosigner, {ORIGIN: log.signer.verifier()})


@pytest.fixture
def bare(log: Log, cosigner: note.Cosigner) -> Iterator[Witness]:
    """A witness over a database without tables: the requests it refuses must not touch it."""
    eng = create_engine("sqlite://")
    yield Witness(eng, cosigner, {ORIGIN: log.signer.verifier()})
    eng.dispose()


def _at(witness: Witness, log: Log, size: int) -> None:
    """Bring the witness to ``size`` from whatever it cosigned."""
    state = witness.state(ORIGIN)
    old = state.size if state else 0
    status, answer = witness.add_checkpoint(log.request(old, size), NOW)
    assert status == 200, answer


# --- 200 -----------------------------------------------------------------------------------


def test_first_checkpoint_is_cosigned_and_stored(witness: Witness, log: Log) -> None:
    assert witness.state(ORIGIN) is None
    status, answer = witness.add_checkpoint(log.request(0, 10), NOW)
    assert status == 200
    line = answer.decode()
    assert line.startswith("— witness.transport.qiao.example ") and line.endswith("\n")
    assert line.count("\n") == 1
    # The cosignature covers the checkpoint body, timestamped with the time given.
    assert note.verify_cosignature(log.body(10).encode(), line, witness.verifier()) == NOW
    # As a log would use it: appended to its signed checkpoint, opened with both keys.
    _, sigs = note.open_note(
        log.checkpoint(10) + answer, [log.signer.verifier(), witness.verifier()]
    )
    assert len(sigs) == 2
    state = witness.state(ORIGIN)
    assert state is not None
    assert (state.size, state.root_hash) == (10, log.tree.root(10))
    assert state.checkpoint == log.checkpoint(10)


def test_advances_with_consistency_proofs(witness: Witness, log: Log) -> None:
    for old, new in [(0, 1), (1, 2), (2, 7), (7, 8), (8, 16), (16, 40)]:
        status, answer = witness.add_checkpoint(log.request(old, new), NOW + new)
        assert status == 200, answer
        assert (
            note.verify_cosignature(log.body(new).encode(), answer.decode(), witness.verifier())
            == NOW + new
        )
    state = witness.state(ORIGIN)
    assert state is not None and state.size == 40
    assert witness.alerts() == []


def test_same_checkpoint_again_is_cosigned_again(witness: Witness, log: Log) -> None:
    _at(witness, log, 12)
    status, _ = witness.add_checkpoint(log.request(12, 12), NOW + 1)
    assert status == 200


def test_extra_signatures_on_the_checkpoint_are_ignored(witness: Witness, log: Log) -> None:
    # "The submitted checkpoint MAY include multiple signatures" -- e.g. other cosignatures.
    other = note.Cosigner.generate("another.witness")
    body = log.request(0, 5) + other.cosign(log.body(5).encode(), NOW).encode()
    assert witness.add_checkpoint(body, NOW)[0] == 200


def test_empty_first_checkpoint(witness: Witness, log: Log) -> None:
    assert witness.add_checkpoint(log.request(0, 0), NOW)[0] == 200
    assert witness.add_checkpoint(log.request(0, 3), NOW)[0] == 200


# --- 400 / 404 / 403: refused before the database is read -----------------------------------


def _malformed(log: Log) -> list[tuple[str, bytes]]:
    good = log.request(0, 5)
    cp = log.checkpoint(5)
    h = base64.b64encode(bytes(32)).decode()
    return [
        ("no blank line", good.replace(b"\n\n", b"\n", 1)),
        ("no old line", b"\n" + cp),
        ("old not a number", b"old five\n\n" + cp),
        ("old with leading zero", b"old 05\n\n" + cp),
        ("old negative", b"old -1\n\n" + cp),
        ("old with two spaces", b"old  0\n\n" + cp),
        ("proof not base64", b"old 0\n!!!\n\n" + cp),
        ("proof hash too short", b"old 0\n" + base64.b64encode(bytes(31)) + b"\n\n" + cp),
        ("proof hash not canonical", b"old 0\n" + h[:-2].encode() + b"B=\n\n" + cp),
        ("64 proof lines", b"old 0\n" + (h + "\n").encode() * 64 + b"\n" + cp),
        ("checkpoint without signatures", b"old 0\n\n" + log.body(5).encode()),
        ("checkpoint size not decimal", b"old 0\n\n" + cp.replace(b"\n5\n", b"\n05\n", 1)),
        ("checkpoint not UTF-8", b"old 0\n\n\xff" + cp),
    ]


def test_malformed_requests_are_400(bare: Witness, log: Log) -> None:
    for what, body in _malformed(log):
        status, answer = bare.add_checkpoint(body, NOW)
        assert status == 400, what
        assert answer.startswith(b"malformed add-checkpoint request: "), what


def test_parse_add_checkpoint(log: Log) -> None:
    req = parse_add_checkpoint(log.request(3, 9))
    assert req.old_size == 3
    assert list(req.proof) == log.proof(3, 9)
    assert req.checkpoint == note.Checkpoint(ORIGIN, 9, log.tree.root(9))
    assert req.signed_note == log.checkpoint(9)


def test_old_larger_than_new_is_400(bare: Witness, log: Log) -> None:
    status, answer = bare.add_checkpoint(log.request(9, 5, proof=[]), NOW)
    assert (status, answer) == (400, b"old size 9 is larger than the checkpoint's size 5\n")


def test_unknown_origin_is_404(bare: Witness) -> None:
    other = Log("other.example/log").grow(3)
    status, answer = bare.add_checkpoint(other.request(0, 3), NOW)
    assert status == 404
    assert b"other.example/log" in answer


def test_bad_log_signature_is_403(bare: Witness, log: Log) -> None:
    # Signed by another key under the log's name: ignored as unknown, so nothing verifies.
    impostor = Log(ORIGIN).grow(5)
    assert bare.add_checkpoint(impostor.request(0, 5), NOW)[0] == 403
    # The log's key, but the text altered after signing.
    forged = log.request(0, 5).replace(
        base64.b64encode(log.tree.root(5)), base64.b64encode(log.tree.root(4))
    )
    status, answer = bare.add_checkpoint(forged, NOW)
    assert status == 403
    assert b"does not verify" in answer


def test_sizes_beyond_storage_are_400(bare: Witness, log: Log) -> None:
    huge = 2**63
    signed = note.sign_note(note.Checkpoint(ORIGIN, huge, bytes(32)).format(), [log.signer])
    assert bare.add_checkpoint(b"old 0\n\n" + signed, NOW)[0] == 400


# --- 409 / 422: checked against what the witness stored ------------------------------------


def test_old_size_other_than_stored_is_409_with_the_stored_size(witness: Witness, log: Log) -> None:
    _at(witness, log, 10)
    for old in (0, 5, 12):
        status, answer = witness.add_checkpoint(log.request(old, 20), NOW)
        assert (status, answer) == (409, b"10\n"), old
    # Never cosigned: the stored size is 0.
    fresh = Log("fresh.example/log").grow(4)
    w2 = Witness(
        witness._engine, note.Cosigner.generate("w2"), {fresh.origin: fresh.signer.verifier()}
    )
    assert w2.add_checkpoint(fresh.request(2, 4), NOW) == (409, b"0\n")
    state = witness.state(ORIGIN)
    assert state is not None and state.size == 10
    assert witness.alerts() == []


def test_bad_proof_is_422_and_an_alert(witness: Witness, log: Log) -> None:
    _at(witness, log, 10)
    proof = log.proof(10, 20)
    proof[0] = bytes(32)
    status, answer = witness.add_checkpoint(log.request(10, 20, proof), NOW)
    assert status == 422
    assert b"not consistent with the checkpoint of size 10" in answer
    state = witness.state(ORIGIN)
    assert state is not None and state.size == 10  # not advanced
    (alert,) = witness.alerts()
    assert alert.kind == ALERT_INCONSISTENT and alert.origin == ORIGIN
    assert "may have forked" in alert.detail
    # The evidence: the refused request and the signed checkpoint cosigned before it.
    assert alert.evidence == log.request(10, 20, proof)
    assert alert.cosigned == log.checkpoint(10)
    # The same request replayed is the same incident: refused again, alerted once.
    assert witness.add_checkpoint(log.request(10, 20, proof), NOW)[0] == 422
    assert len(witness.alerts()) == 1


def test_forked_history_is_422_and_an_alert(witness: Witness, log: Log) -> None:
    """The hub shows this witness a history that rewrote entry 3: caught, not cosigned."""
    _at(witness, log, 10)
    fork = Log(ORIGIN, log.signer)
    fork.grow(3)
    fork.tree.append(merkle.leaf_hash(b"rewritten entry 3"))
    fork.grow(20)
    # A proof that is valid within the forked tree, from ITS size-10 root.
    status, answer = witness.add_checkpoint(fork.request(10, 20), NOW)
    assert status == 422
    assert answer.startswith(b"checkpoint of size 20 is not consistent")
    (alert,) = witness.alerts()
    assert alert.kind == ALERT_INCONSISTENT
    assert "size 10" in alert.detail and "size 20" in alert.detail
    assert alert.created_at.tzinfo is not None
    # The honest history still advances.
    assert witness.add_checkpoint(log.request(10, 20), NOW)[0] == 200


def test_forked_checkpoint_of_the_same_size_is_409_and_an_alert(witness: Witness, log: Log) -> None:
    # c2sp.org/tlog-witness: same size, different root -> 409 (the body is the stored size).
    _at(witness, log, 10)
    fork = Log(ORIGIN, log.signer).grow(10, salt=b" forked")
    status, answer = witness.add_checkpoint(fork.request(10, 10), NOW)
    assert (status, answer) == (409, b"10\n")
    (alert,) = witness.alerts()
    assert "two different checkpoints of size 10" in alert.detail
    assert alert.evidence.endswith(fork.checkpoint(10))
    assert alert.cosigned == log.checkpoint(10)
    state = witness.state(ORIGIN)
    assert state is not None and state.root_hash == log.tree.root(10)


def test_nonempty_proof_where_none_is_needed_is_422_without_alert(
    witness: Witness, log: Log
) -> None:
    # "The proof MUST be empty if the old size is zero"; equal sizes have nothing to prove.
    status, _ = witness.add_checkpoint(log.request(0, 5, proof=[bytes(32)]), NOW)
    assert status == 422
    _at(witness, log, 5)
    status, _ = witness.add_checkpoint(log.request(5, 5, proof=[bytes(32)]), NOW)
    assert status == 422
    assert witness.alerts() == []


def test_alerts_newest_first(witness: Witness, log: Log) -> None:
    _at(witness, log, 10)
    fork = Log(ORIGIN, log.signer).grow(20, salt=b"x")
    for size in (11, 12, 13):
        bad = fork.request(10, size, log.proof(10, size))
        assert witness.add_checkpoint(bad, NOW)[0] == 422
    alerts = witness.alerts()
    assert all(f"size {s} " in a.detail for a, s in zip(alerts, (13, 12, 11), strict=True))
    assert [a.id for a in alerts] == sorted((a.id for a in alerts), reverse=True)
    assert len(witness.alerts(limit=2)) == 2


# --- atomicity -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 10])
def test_concurrent_requests_advance_once(
    witness: Witness, log: Log, start: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's rollback race: N requests from the same old size, only one may advance."""
    if start:
        _at(witness, log, start)
    # Widen the window between reading the stored size and writing the new one: without the
    # lock every request would see the same old size and all would "advance".
    original = Witness._check

    def slow_check(self: Witness, *args: Any) -> Any:
        threading.Event().wait(0.05)
        return original(self, *args)

    monkeypatch.setattr(Witness, "_check", slow_check)
    sizes = [start + i for i in range(1, 7)]
    requests = {size: log.request(start, size) for size in sizes}
    barrier = threading.Barrier(len(sizes))
    results: dict[int, tuple[int, bytes]] = {}

    def submit(size: int) -> None:
        barrier.wait()
        results[size] = witness.add_checkpoint(requests[size], NOW)

    threads = [threading.Thread(target=submit, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [s for s, (status, _) in results.items() if status == 200]
    assert len(results) == len(sizes)
    assert len(winners) == 1, results
    (winner,) = winners
    for size, (status, answer) in results.items():
        if size != winner:
            assert (status, answer) == (409, f"{winner}\n".encode())
    state = witness.state(ORIGIN)
    assert state is not None
    assert (state.size, state.root_hash) == (winner, log.tree.root(winner))


# --- the HTTP route ------------------------------------------------------------------------


async def test_route(witness: Witness, log: Log) -> None:
    app = web.Application()
    app.add_routes(witness_routes(witness))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/witness/add-checkpoint", data=log.request(0, 8))
        assert r.status == 200
        assert r.content_type == "text/plain"
        line = await r.text()
        assert note.verify_cosignature(log.body(8).encode(), line, witness.verifier()) > 0

        r = await client.post("/witness/add-checkpoint", data=log.request(0, 9))
        assert r.status == 409
        assert r.headers["Content-Type"] == SIZE_CONTENT_TYPE
        assert await r.read() == b"8\n"

        r = await client.post("/witness/add-checkpoint", data=b"old 0\n\nnonsense")
        assert r.status == 400

        r = await client.post("/witness/add-checkpoint", data=b"x" * (MAX_REQUEST_BYTES + 1))
        assert r.status == 413

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            for _ in range(5):
                yield b"y" * (MAX_REQUEST_BYTES // 4)

        r = await client.post("/witness/add-checkpoint", data=chunks())
        assert r.status == 413

        r = await client.get("/witness/add-checkpoint")
        assert r.status == 405


# --- the migration -------------------------------------------------------------------------


def test_migration_matches_the_models(engine: Engine, db_url: str) -> None:
    tables = {"witness_state", "witness_alerts"}
    assert tables <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), NodeBase.metadata)
    ours = [d for d in diff if any(t in repr(d) for t in tables)]
    assert ours == []
    engine.dispose()
    downgrade("node", db_url, "0001")
    eng = make_engine(db_url)
    assert not tables & set(inspect(eng).get_table_names())
    eng.dispose()


@pytest.mark.parametrize(
    "column,value",
    [("size", 9), ("size", 0), ("root_hash", bytes(32)), ("checkpoint", b"not a note\n\n")],
)
def test_altered_state_is_refused_and_alerted(
    witness: Witness, log: Log, engine: Engine, column: str, value: Any
) -> None:
    # The stored size and root must still be the log-signed checkpoint stored with them:
    # someone with the node's database could otherwise rewind the witness or make it cosign
    # another history (reliability/test_tamper.py).
    from sqlalchemy import update

    from qiao.ledger.witness import ALERT_STATE_DAMAGED
    from qiao.ledger.witness_models import WitnessState

    _at(witness, log, 10)
    with engine.begin() as c:
        c.execute(update(WitnessState).values({column: value}))
    for _ in range(2):
        status, answer = witness.add_checkpoint(log.request(10, 20), NOW)
        assert status == 500 and b"witness state damaged" in answer
        status, _ = witness.add_checkpoint(log.request(value if column == "size" else 10, 20), NOW)
        assert status == 500
    (alert,) = witness.alerts()  # one incident, however often the log asks
    assert alert.kind == ALERT_STATE_DAMAGED and "altered" in alert.detail


def test_a_state_moved_to_another_origin_is_refused(
    witness: Witness, log: Log, engine: Engine
) -> None:
    # With its row renamed, the log would look new to the witness and start from size 0.
    from sqlalchemy import update

    from qiao.ledger.witness import ALERT_STATE_DAMAGED
    from qiao.ledger.witness_models import WitnessState

    _at(witness, log, 10)
    with engine.begin() as c:
        c.execute(update(WitnessState).values(origin="elsewhere/ledger"))
    status, answer = witness.add_checkpoint(log.request(0, 20), NOW)
    assert status == 500 and b"stored under origin 'elsewhere/ledger'" in answer
    (alert,) = witness.alerts()
    assert alert.kind == ALERT_STATE_DAMAGED
