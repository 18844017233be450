"""The hub's log store on SQLite and PostgreSQL: appends, tiles, proofs, checkpoints, audits."""

from __future__ import annotations

import base64
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text

from qiao.db import HubBase, downgrade, make_engine, migrate
from qiao.ledger import merkle, note, tiles
from qiao.ledger.store import ForkRefused, LedgerStore

ORIGIN = "hub.qiao.example/ledger"
LEDGER_TABLES = {"ledger_entries", "ledger_tiles", "ledger_checkpoints", "ledger_state"}


def make_entry(i: int) -> bytes:
    return b'{"i":%d,"kind":"test","pad":"%s"}' % (i, b"x" * (i % 50))


def batch(start: int, count: int, prefix: str = "k") -> list[tuple[str, bytes]]:
    return [(f"{prefix}:{i}", make_entry(i)) for i in range(start, start + count)]


def memory_tree(size: int) -> merkle.MemoryTree:
    return merkle.MemoryTree(merkle.leaf_hash(make_entry(i)) for i in range(size))


def expected_tile(tree: merkle.MemoryTree, level: int, index: int, width: int) -> bytes:
    """A tile as c2sp.org/tlog-tiles defines it, from the hashes of an in-memory tree."""
    first = index * tiles.TILE_WIDTH
    return b"".join(tree.get_hash(8 * level, first + j) for j in range(width))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    migrate("hub", db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def signer() -> note.Signer:
    return note.Signer.generate(ORIGIN)


@pytest.fixture
def store(engine: Engine, signer: note.Signer) -> LedgerStore:
    return LedgerStore(engine, signer, ORIGIN)


# --- the migration ---------------------------------------------------------------------------


def test_migration_matches_the_models(engine: Engine, db_url: str) -> None:
    assert set(inspect(engine).get_table_names()) >= LEDGER_TABLES
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), HubBase.metadata)
    ours = [d for d in diff if any(t in repr(d) for t in LEDGER_TABLES)]
    assert ours == []
    engine.dispose()
    downgrade("hub", db_url, "0001")
    eng = make_engine(db_url)
    assert not LEDGER_TABLES & set(inspect(eng).get_table_names())
    eng.dispose()
    migrate("hub", db_url)
    eng = make_engine(db_url)
    assert set(inspect(eng).get_table_names()) >= LEDGER_TABLES
    eng.dispose()


# --- appending -------------------------------------------------------------------------------


def test_append_gives_dense_indices_once_per_source_key(store: LedgerStore) -> None:
    assert store.size() == 0
    assert store.append([]) == []
    assert store.append(batch(0, 3)) == [0, 1, 2]
    # Two already stored, two new, and one key twice in the same batch.
    again = [*batch(1, 2), ("k:new", b"new"), ("k:other", b"other"), ("k:new", b"new")]
    assert store.append(again) == [1, 2, 3, 4, 3]
    assert store.size() == 5
    assert store.entry(3) == b"new"
    assert store.index_of("k:other") == 4
    assert store.index_of("k:missing") is None
    with pytest.raises(IndexError):
        store.entry(5)
    # A resubmission with other bytes keeps the first entry (and is logged).
    assert store.append([("k:0", b"changed")]) == [0]
    assert store.entry(0) == make_entry(0)
    assert store.verify() == []


def test_append_refuses_what_a_bundle_cannot_carry(store: LedgerStore) -> None:
    store.append(batch(0, 2))
    with pytest.raises(ValueError, match="65535"):
        store.append([("k:big", b"x" * (tiles.MAX_ENTRY_SIZE + 1)), ("k:ok", b"ok")])
    with pytest.raises(ValueError, match="source key"):
        store.append([("", b"x")])
    assert store.size() == 2
    assert store.index_of("k:ok") is None


def test_one_append_touches_only_the_right_edge(store: LedgerStore, engine: Engine) -> None:
    """A one-entry batch at size 65,535 completes a level-0 and a level-1 tile: still only a
    handful of statements, reading one partial tile per level and no other entries."""
    for start in range(0, 65_535, 16_384):
        store.append(batch(start, min(16_384, 65_535 - start)))
    statements: list[str] = []

    def count(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert store.append(batch(65_535, 1)) == [65_535]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    tile_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT LEDGER_TILES")]
    assert len(tile_reads) <= 3, statements
    assert len(statements) <= 10, statements
    tree = memory_tree(65_536)
    assert store.tile(2, 0, 1) == expected_tile(tree, 2, 0, 1)
    assert store.root() == tree.root()


# --- the tree: tiles and proofs --------------------------------------------------------------


def test_tiles_and_proofs_match_a_memory_tree_across_tile_boundaries(store: LedgerStore) -> None:
    size_target = 70_000
    tree = memory_tree(size_target)
    rng = random.Random(7)
    # Batches of every shape: single entries, ones that end exactly on a tile boundary, and
    # big ones that fill many tiles at once (crossing 256 and 65,536 entries).
    plan = [1, 1, 253, 1, 1, 511, 1, 255, 256, 20_000, 44_256, 3, 1, 4_460]
    assert sum(plan) == size_target
    size = 0
    for count in plan:
        assert store.append(batch(size, count)) == list(range(size, size + count))
        size += count
        assert store.size() == size
        assert store.root() == tree.root(size)
        # The right edge of every tile level is exactly what the spec says it holds.
        level = 0
        while size >> (8 * level):
            full, partial = divmod(size >> (8 * level), tiles.TILE_WIDTH)
            if partial:
                got = store.tile(level, full, partial)
                assert got == expected_tile(tree, level, full, partial), (size, level)
                assert store.tile(level, full) is None  # not full yet
                if partial < 255:
                    assert store.tile(level, full, partial + 1) is None
            if full:
                got = store.tile(level, full - 1)
                assert got == expected_tile(tree, level, full - 1, tiles.TILE_WIDTH)
            level += 1

    # Every full tile, at every level.
    for level in range(3):
        full, partial = divmod(size >> (8 * level), tiles.TILE_WIDTH)
        for index in range(full):
            assert store.tile(level, index) == expected_tile(tree, level, index, 256)
        if partial:
            assert store.tile(level, full, partial) == expected_tile(tree, level, full, partial)

    sizes = [1, 2, 3, 255, 256, 257, 511, 512, 513, 65_535, 65_536, 65_537, 69_999, 70_000]
    sizes += rng.sample(range(1, size_target), 30)
    for n in sizes:
        root = tree.root(n)
        assert store.root(n) == root
        for index in {0, n - 1, n // 2, rng.randrange(n)}:
            proof = store.inclusion_proof(index, n)
            merkle.verify_inclusion(index, n, tree.get_hash(0, index), proof, root)
    pairs = [(1, 2), (255, 256), (256, 257), (65_535, 65_536), (65_536, 70_000), (3, 70_000)]
    pairs += [tuple(sorted(rng.sample(range(1, size_target + 1), 2))) for _ in range(40)]
    for old, new in pairs:
        proof = store.consistency_proof(old, new)
        merkle.verify_consistency(old, new, proof, tree.root(old), tree.root(new))
    with pytest.raises(ValueError, match="larger than the log"):
        store.inclusion_proof(0, size_target + 1)
    with pytest.raises(IndexError):
        store.get_hash(17, 0)  # 131,072 leaves: not complete


def test_partial_tiles_and_entry_bundles(store: LedgerStore) -> None:
    store.append(batch(0, 300))
    tree = memory_tree(300)
    assert store.tile(0, 1, 44) == expected_tile(tree, 0, 1, 44)
    assert store.tile(0, 1, 10) == expected_tile(tree, 0, 1, 10)  # a prefix of the tile
    assert store.tile(0, 1, 45) is None
    assert store.tile(0, 1) is None
    assert store.tile(0, 0, 5) == expected_tile(tree, 0, 0, 5)  # from the full tile
    assert store.tile(1, 0, 1) == expected_tile(tree, 1, 0, 1)
    assert store.tile(1, 0, 2) is None
    assert store.tile(0, 2, 1) is None
    bundle = store.entry_bundle(1, 44)
    assert bundle is not None
    assert tiles.decode_bundle(bundle, 44) == [make_entry(i) for i in range(256, 300)]
    full = store.entry_bundle(0)
    assert full is not None
    assert tiles.decode_bundle(full, 256) == [make_entry(i) for i in range(256)]
    assert store.entry_bundle(1, 45) is None
    assert store.entry_bundle(1) is None
    with pytest.raises(ValueError):
        store.tile(0, 0, 0)


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoints_are_signed_and_consistent(store: LedgerStore, signer: note.Signer) -> None:
    assert store.latest_checkpoint() is None
    store.append(batch(0, 1000))
    first = store.sign_checkpoint()
    checkpoint, sigs = note.open_checkpoint(first, [signer.verifier()])
    assert (checkpoint.origin, checkpoint.size) == (ORIGIN, 1000)
    assert checkpoint.root_hash == store.root(1000) == memory_tree(1000).root()
    assert [s.name for s in sigs] == [ORIGIN]
    assert store.latest_checkpoint() == first
    assert store.sign_checkpoint() == first  # same size: the same checkpoint, not a new one
    store.append(batch(1000, 333))
    second = store.sign_checkpoint()
    newer, _ = note.open_checkpoint(second, [store.verifier])
    assert newer.size == 1333
    proof = store.consistency_proof(1000, 1333)
    merkle.verify_consistency(1000, 1333, proof, checkpoint.root_hash, newer.root_hash)
    assert store.latest_checkpoint() == second
    # A caller that read the size earlier may sign exactly that size, never an older one.
    store.append(batch(1333, 10))
    third, _ = note.open_checkpoint(store.sign_checkpoint(1340), [store.verifier])
    assert (third.size, third.root_hash) == (1340, memory_tree(1340).root())
    with pytest.raises(ForkRefused, match="smaller"):
        store.sign_checkpoint(1339)
    with pytest.raises(ValueError, match="1344"):
        store.sign_checkpoint(1344)
    assert note.open_checkpoint(store.sign_checkpoint(), [store.verifier])[0].size == 1343


def test_signing_an_empty_log(store: LedgerStore) -> None:
    checkpoint, _ = note.open_checkpoint(store.sign_checkpoint(), [store.verifier])
    assert (checkpoint.size, checkpoint.root_hash) == (0, merkle.EMPTY_ROOT)
    store.append(batch(0, 1))
    assert note.open_checkpoint(store.sign_checkpoint(), [store.verifier])[0].size == 1
    assert store.verify() == []


def _rewrite_tile(engine: Engine, level: int, index: int, change: int = 0) -> None:
    with engine.begin() as c:
        hashes = bytes(
            c.execute(
                text('SELECT hashes FROM ledger_tiles WHERE level = :l AND "index" = :i'),
                {"l": level, "i": index},
            ).scalar_one()
        )
        forged = hashes[:change] + bytes([hashes[change] ^ 1]) + hashes[change + 1 :]
        c.execute(
            text('UPDATE ledger_tiles SET hashes = :h WHERE level = :l AND "index" = :i'),
            {"h": forged, "l": level, "i": index},
        )


def test_refuses_to_sign_a_fork(db_url: str, engine: Engine, signer: note.Signer) -> None:
    store = LedgerStore(engine, signer, ORIGIN, cache_tiles=0)
    store.append(batch(0, 300))
    signed = store.sign_checkpoint()
    # Another history of the same size (here: a rewritten tile) must not get a signature.
    _rewrite_tile(engine, 0, 1)
    with pytest.raises(ForkRefused, match="second root"):
        store.sign_checkpoint()
    # Nor may it grow into a larger tree that does not extend the signed one.
    store.append(batch(300, 50))
    with pytest.raises(ForkRefused, match="does not extend"):
        store.sign_checkpoint()
    # Nor may a rolled-back log sign a smaller size.
    with engine.begin() as c:
        c.execute(text("UPDATE ledger_state SET size = 200"))
    with pytest.raises(ForkRefused, match="smaller"):
        store.sign_checkpoint()
    assert store.latest_checkpoint() == signed


# --- verify() --------------------------------------------------------------------------------


@pytest.fixture
def audited(store: LedgerStore) -> LedgerStore:
    """A log of 700 entries (two full level-0 tiles, a partial one, a partial level-1 tile)
    with checkpoints at 256, 600 and 700."""
    store.append(batch(0, 256))
    store.sign_checkpoint()
    store.append(batch(256, 344))
    store.sign_checkpoint()
    store.append(batch(600, 100))
    store.sign_checkpoint()
    assert store.verify() == []
    assert store.verify(full=False) == []
    return store


def _findings(store: LedgerStore, *needles: str) -> list[str]:
    found = store.verify()
    for needle in needles:
        assert any(needle in line for line in found), (needle, found)
    return found


def test_verify_names_an_edited_entry(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE ledger_entries SET entry = :e WHERE idx = 3"), {"e": b"{}"})
    found = _findings(audited, "entry 3:", "tile/0/000", "checkpoint 256:")
    assert not any("entry 4" in line for line in found)
    # Without re-reading the entries the tiles and checkpoints still agree.
    assert audited.verify(full=False) == []


def test_verify_names_a_deleted_entry(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM ledger_entries WHERE idx = 5"))
    found = _findings(audited, "entry 5: missing")
    assert len(found) == 1, found


def test_verify_names_the_last_entry_deleted(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM ledger_entries WHERE idx >= 698"))
    _findings(audited, "entries 698 to 699: missing")


def test_verify_names_swapped_entries(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE ledger_entries SET idx = -1 WHERE idx = 7"))
        c.execute(text("UPDATE ledger_entries SET idx = 7 WHERE idx = 8"))
        c.execute(text("UPDATE ledger_entries SET idx = 8 WHERE idx = -1"))
    _findings(audited, "entry 7:", "entry 8:")


def test_verify_names_an_inserted_entry(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO ledger_entries (idx, entry, source_key, created_at) "
                "VALUES (700, :e, 'k:sneaky', :t)"
            ),
            {"e": b"sneaky", "t": "2026-01-01 00:00:00"},
        )
    _findings(audited, "entry 700: stored beyond the log's size 700")


def test_verify_names_a_corrupted_tile(audited: LedgerStore, engine: Engine) -> None:
    _rewrite_tile(engine, 0, 1, change=32 * 9)  # hash 9 of the second full tile
    found = _findings(audited, "entry 265:", "tile/0/001")
    assert not any(line.startswith("checkpoint") for line in found), found
    assert any("tile/0/001" in line and "tile/1/000.p/2" in line for line in found), found
    assert any("tile/0/001" in line for line in audited.verify(full=False))


def test_verify_names_a_truncated_or_missing_tile(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(
            text('UPDATE ledger_tiles SET hashes = :h WHERE level = 1 AND "index" = 0'),
            {"h": b"\x00" * 32},
        )
        c.execute(text('DELETE FROM ledger_tiles WHERE level = 0 AND "index" = 2'))
    _findings(audited, "tile/1/000.p/2: holds 32 bytes", "tile/0/002.p/188: missing")


def test_verify_names_a_tampered_checkpoint(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        signed = bytes(
            c.execute(text("SELECT note FROM ledger_checkpoints WHERE size = 600")).scalar_one()
        )
        lines = signed.split(b"\n")
        lines[2] = base64.b64encode(b"\x00" * 32)  # the root line
        c.execute(
            text("UPDATE ledger_checkpoints SET note = :n WHERE size = 600"),
            {"n": b"\n".join(lines)},
        )
        c.execute(
            text("UPDATE ledger_checkpoints SET root_hash = :r WHERE size = 256"),
            {"r": b"\x01" * 32},
        )
    found = _findings(audited, "checkpoint 600: its note does not verify", "checkpoint 256:")
    assert not any("entry" in line for line in found), found
    assert any("checkpoint 600" in line for line in audited.verify(full=False))


def test_verify_names_a_checkpoint_beyond_the_log(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE ledger_state SET size = 600"))
    _findings(audited, "checkpoint 700: signed for more entries", "entry 600: stored beyond")


def test_verify_caps_its_findings(audited: LedgerStore, engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE ledger_entries SET entry = :e"), {"e": b"{}"})
    found = audited.verify(max_findings=20)
    assert len(found) == 21
    assert found[-1].endswith("more findings")


def test_verify_sees_one_state_while_appends_go_on(store: LedgerStore) -> None:
    store.append(batch(0, 1000))
    store.sign_checkpoint()
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_appending() -> None:
        n = 1000
        try:
            while not stop.is_set():
                store.append(batch(n, 37))
                n += 37
                if n % 5 == 0:
                    store.sign_checkpoint()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        for _ in range(5):
            assert store.verify() == []
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert store.size() > 1000
    assert store.verify() == []


# --- several writers -------------------------------------------------------------------------


def _writer(
    url: str, signer_text: str, worker: int, batches: int, start: Any, results: Any
) -> None:
    """One hub process: appends its own entries and some that the other also sends."""
    engine = make_engine(url)
    store = LedgerStore(engine, note.Signer.from_text(signer_text), ORIGIN)
    got: dict[str, int] = {}
    try:
        start.wait(60)  # both processes are up and connected: now race
        for b in range(batches):
            entries = [(f"w{worker}:{b}:{i}", b"w%d-%d-%d" % (worker, b, i)) for i in range(40)]
            entries += [(f"shared:{b}:{i}", b"shared-%d-%d" % (b, i)) for i in range(10)]
            got.update(zip((k for k, _ in entries), store.append(entries), strict=True))
            if b % 10 == 9:
                store.sign_checkpoint()
            # Batches arrive a few milliseconds apart, as requests do. (Back to back, SQLite's
            # busy handler, which sleeps between retries, lets one writer finish first.)
            time.sleep(0.003)
    finally:
        engine.dispose()
        results.put((worker, got))


def test_two_processes_append_one_log(db_url: str, engine: Engine, signer: note.Signer) -> None:
    batches = 100
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_writer, args=(db_url, signer.to_text(), w, batches, start, queue))
        for w in (0, 1)
    ]
    for p in workers:
        p.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    store = LedgerStore(engine, signer, ORIGIN)
    size = store.size()
    assert size == 2 * batches * 40 + batches * 10
    shared = {k for k in results[0] if k.startswith("shared:")}
    for key in shared:
        assert results[0][key] == results[1][key], key  # one index, whoever came first
    everything = {**results[0], **results[1]}
    assert sorted(everything.values()) == list(range(size))  # no gaps, no duplicates
    # The two really ran at the same time: their own entries interleave in the log.
    own = [[i for k, i in results[w].items() if k.startswith(f"w{w}:")] for w in (0, 1)]
    assert min(own[0]) < max(own[1]) and min(own[1]) < max(own[0])
    for key, idx in random.Random(1).sample(sorted(everything.items()), 200):
        assert store.index_of(key) == idx
    assert store.verify() == []
    checkpoint, _ = note.open_checkpoint(store.sign_checkpoint(), [signer.verifier()])
    assert checkpoint.size == size


def test_verify_reports_tile_rows_no_tile_can_be(store: LedgerStore, engine: Engine) -> None:
    # A row altered to a level or index outside c2sp.org/tlog-tiles is a finding, not a crash
    # of the audit (reliability/test_tamper.py).
    from sqlalchemy import update

    from qiao.ledger.models import LedgerTile

    store.append(batch(0, 300))
    with engine.begin() as conn:
        conn.execute(update(LedgerTile).where(LedgerTile.level == 1).values(level=30_000))
    findings = store.verify()
    assert any("tile row (level 30000, index 0)" in f for f in findings), findings
