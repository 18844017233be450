"""The hub's log: entries and C2SP tiles in the hub's database, and the checkpoints it signs.

Appending a batch is one transaction: the entries get the next dense indices, their RFC 9162
§2.1.1 leaf hashes go into the level-0 tiles, every tile the batch fills sends its subtree
hash one tile level up (c2sp.org/tlog-tiles "Merkle Tree"), and the log's size moves on. A
batch therefore touches only the right edge of the tree: at most one partial tile per level
is read, whatever the log's size, and memory stays bounded by the batch.

Proofs read the tree through ``get_hash(level, index)`` (see :mod:`qiao.ledger.merkle`): a
complete subtree at tree level ``8L + k`` is the root of ``2**k`` consecutive hashes of one
tile at tile level ``L``, so a proof reads one tile per tile level.

One writer at a time, across processes: on PostgreSQL every append and signature takes a
transaction-level advisory lock first; on SQLite the transaction starts with BEGIN IMMEDIATE,
which takes the database's write lock before anything is read. Two hub replicas can then
never hand out one index twice or build two trees from one prefix (a fork).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    any_,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from qiao.db import utcnow
from qiao.ledger import merkle, note, tiles
from qiao.ledger.errors import LedgerError, NoteError, ProofError
from qiao.ledger.merkle import HASH_SIZE
from qiao.ledger.models import (
    MAX_SOURCE_KEY,
    LedgerCheckpoint,
    LedgerEntry,
    LedgerState,
    LedgerTile,
)

log = logging.getLogger("qiao.ledger.store")
_T = TypeVar("_T")

TILE_WIDTH = tiles.TILE_WIDTH
TILE_HEIGHT = tiles.TILE_HEIGHT
_FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE

# Core tables: the store works with rows, not ORM objects (thousands per batch).
_ENTRIES = cast(Table, LedgerEntry.__table__)
_TILES = cast(Table, LedgerTile.__table__)
_CHECKPOINTS = cast(Table, LedgerCheckpoint.__table__)
_STATE = cast(Table, LedgerState.__table__)
_STATE_ID = 1

# The advisory lock every writer of the log takes on PostgreSQL: a fixed 64-bit key, derived
# from a name so that it does not collide with other users of advisory locks by accident.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"qiao.ledger.store/writer").digest()[:8], "big", signed=True
)
# Source keys are looked up in chunks: well below SQLite's limit of 32,766 bound variables.
_LOOKUP_CHUNK = 900
# verify() reads entries and tiles page by page, so its memory does not grow with the log.
_ENTRY_PAGE = 4096
_TILE_PAGE = 64
# verify() proves consistency around mismatching checkpoints only (see _CheckpointCheck).
_MAX_CONSISTENCY_CHECKS = 1000


class ForkRefused(LedgerError):
    """Signing would contradict a checkpoint the log signed before (a fork or a rollback)."""


class LedgerStore:
    """The transparency log on the hub's database (SQLite or PostgreSQL).

    ``signer`` is the log's Ed25519 note key; ``origin`` the checkpoint origin line
    (c2sp.org/tlog-checkpoint), by convention the signer's key name.
    """

    def __init__(
        self, engine: Engine, signer: note.Signer, origin: str, *, cache_tiles: int = 256
    ) -> None:
        note.Checkpoint(origin, 0, merkle.EMPTY_ROOT)  # a bad origin fails now, not at signing
        self._engine = engine
        self._signer = signer
        self._origin = origin
        self._verifier = signer.verifier()
        self._cache = _TileCache(cache_tiles)
        self._dialect = engine.dialect.name
        self._insert_entries = _RawInsert(engine)

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def verifier(self) -> note.Verifier:
        """The key that verifies this log's checkpoints."""
        return self._verifier

    # --- writing ----------------------------------------------------------------------------
    def append(self, entries: Sequence[tuple[str, bytes]]) -> list[int]:
        """Store a batch of ``(source_key, entry)`` and return each entry's index.

        All of the batch commits in one transaction, integrated into the tiles, or none of
        it does. An entry whose source key is already in the log (or earlier in the batch)
        is not appended again: it gets the index it already has.
        """
        if not entries:
            return []
        for key, data in entries:
            if not 0 < len(key) <= MAX_SOURCE_KEY:
                raise ValueError(f"source key {key[:40]!r} is not 1 to {MAX_SOURCE_KEY} chars")
            # Entry bundles carry each entry with a uint16 length (c2sp.org/tlog-tiles).
            if len(data) > tiles.MAX_ENTRY_SIZE:
                raise ValueError(
                    f"entry {key!r} is {len(data)} bytes, more than {tiles.MAX_ENTRY_SIZE}"
                )
        with self._writing() as conn:
            size = self._locked_size(conn)
            assigned = self._existing(conn, entries)
            indices: list[int] = []
            rows: list[tuple[int, bytes, str]] = []
            leaves: list[bytes] = []
            leaf_hash = merkle.leaf_hash
            for key, data in entries:
                idx = assigned.get(key)
                if idx is None:
                    idx = assigned[key] = size + len(rows)
                    rows.append((idx, data, key))
                    leaves.append(leaf_hash(data))
                indices.append(idx)
            if rows:
                self._insert_entries(conn, rows)
                self._integrate(conn, size, leaves)
                conn.execute(
                    update(_STATE)
                    .where(_STATE.c.id == _STATE_ID)
                    .values(size=size + len(rows), updated_at=utcnow())
                )
        return indices

    def sign_checkpoint(self, size: int | None = None) -> bytes:
        """Sign and store a checkpoint (c2sp.org/tlog-checkpoint) for the current size, or
        for ``size`` (at most the current size; a caller that read the size before may
        name it, since appends can go on in between).

        Refuses (:class:`ForkRefused`) rather than sign a root that contradicts a stored
        checkpoint: another root for a signed size, a smaller size after a larger one, or a
        tree that does not extend the last signed one (design brief: "The log must never
        sign two inconsistent checkpoints"). The check and the insert share the writer's
        lock, so two replicas cannot both pass the check. At an already signed size it
        answers the stored checkpoint.
        """
        with self._writing() as conn:
            current = self._locked_size(conn)
            if size is None:
                size = current
            elif not 0 <= size <= current:
                raise ValueError(f"cannot sign size {size}: the log has {current} entries")
            # Fresh reads, not the shared cache: the signature must cover what the database
            # holds now, whatever this process saw before.
            tree = _TreeReader(conn, _TileCache(TILE_HEIGHT * 4))
            root = merkle.root_hash(size, tree.get_hash)
            latest = conn.execute(
                select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.root_hash, _CHECKPOINTS.c.note)
                .order_by(_CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            if latest is not None:
                signed_size, signed_root, signed_note = latest
                if signed_size > size:
                    raise ForkRefused(
                        f"the log signed size {signed_size} before: refusing to sign the smaller "
                        f"size {size} (the log has {current} entries; rolled back?)"
                    )
                if signed_size == size:
                    if signed_root != root:
                        raise ForkRefused(
                            f"size {size} was signed with root {_b64(signed_root)}, the tiles "
                            f"now give {_b64(root)}: refusing to sign a second root"
                        )
                    return bytes(signed_note)
                if signed_size > 0:
                    # RFC 9162 §2.1.4: the new tree must extend the signed one.
                    proof = merkle.consistency_proof(signed_size, size, tree.get_hash)
                    try:
                        merkle.verify_consistency(signed_size, size, proof, signed_root, root)
                    except ProofError as exc:
                        raise ForkRefused(
                            f"the tree of size {size} does not extend the signed checkpoint "
                            f"of size {signed_size}: {exc}"
                        ) from exc
            signed = note.sign_note(
                note.Checkpoint(self._origin, size, root).format(), [self._signer]
            )
            conn.execute(
                insert(_CHECKPOINTS).values(
                    size=size, root_hash=root, note=signed, created_at=utcnow()
                )
            )
        log.info("signed checkpoint %d", size)
        return signed

    # --- reading ----------------------------------------------------------------------------
    def size(self) -> int:
        with self._engine.connect() as conn:
            return _read_size(conn)

    def entry(self, index: int) -> bytes:
        """The entry at ``index``; IndexError when there is none."""
        with self._engine.connect() as conn:
            data = conn.execute(
                select(_ENTRIES.c.entry).where(_ENTRIES.c.idx == index)
            ).scalar_one_or_none()
        if data is None:
            raise IndexError(f"no ledger entry {index}")
        return bytes(data)

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """``(index, entry)`` from ``start`` in index order, read page by page (an audit that
        reads the whole log keeps one page in memory, whatever the log's size)."""
        after = start - 1
        while True:
            with self._engine.connect() as conn:
                page = conn.execute(
                    select(_ENTRIES.c.idx, _ENTRIES.c.entry)
                    .where(_ENTRIES.c.idx > after)
                    .order_by(_ENTRIES.c.idx)
                    .limit(_ENTRY_PAGE)
                ).all()
            if not page:
                return
            for idx, data in page:
                after = int(idx)
                yield after, bytes(data)

    def index_of(self, source_key: str) -> int | None:
        with self._engine.connect() as conn:
            idx = conn.execute(
                select(_ENTRIES.c.idx).where(_ENTRIES.c.source_key == source_key)
            ).scalar_one_or_none()
        return None if idx is None else int(idx)

    def get_hash(self, level: int, index: int) -> bytes:
        """MTH of the complete subtree of ``2**level`` leaves from leaf ``index * 2**level``.

        IndexError when that subtree is not complete yet.
        """
        with self._engine.connect() as conn:
            return _TreeReader(conn, self._cache).get_hash(level, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]) (RFC 9162 §2.1.1); the current size by default."""
        with self._engine.connect() as conn:
            return self._proving(conn, size, merkle.root_hash)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 proof that entry ``index`` is in the tree of ``size``."""
        with self._engine.connect() as conn:
            return self._proving(
                conn, size, lambda n, get_hash: merkle.inclusion_proof(index, n, get_hash)
            )

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that the tree of ``new_size`` extends that of ``old_size``."""
        with self._engine.connect() as conn:
            return self._proving(
                conn, new_size, lambda n, get_hash: merkle.consistency_proof(old_size, n, get_hash)
            )

    def _proving(
        self, conn: Connection, size: int | None, prove: Callable[[int, merkle.GetHash], _T]
    ) -> _T:
        """Run ``prove(size, get_hash)`` on the stored tiles.

        An explicit size is not looked up first (one query less per proof): a tree larger
        than the log needs a subtree that ends at its last leaf, which no tile holds yet.
        """
        if size is None:
            size = _read_size(conn)
        try:
            return prove(size, _TreeReader(conn, self._cache).get_hash)
        except IndexError:
            current = _read_size(conn)
            if size > current:
                raise ValueError(
                    f"tree size {size} is larger than the log's size {current}"
                ) from None
            raise

    def latest_checkpoint(self) -> bytes | None:
        """The signed note of the largest checkpoint signed so far."""
        with self._engine.connect() as conn:
            data = conn.execute(
                select(_CHECKPOINTS.c.note).order_by(_CHECKPOINTS.c.size.desc()).limit(1)
            ).scalar_one_or_none()
        return None if data is None else bytes(data)

    def tile(self, level: int, index: int, width: int = TILE_WIDTH) -> bytes | None:
        """The first ``width`` hashes of a hash tile, or None while it has fewer.

        c2sp.org/tlog-tiles: a partial tile ``.p/<W>`` holds exactly W hashes; the tile keeps
        growing after that, but its first W hashes never change, so they can be served
        from the stored (wider) tile.
        """
        tiles.Tile(level, index, width)  # ValueError for a level, index or width out of range
        with self._engine.connect() as conn:
            try:
                data = _TreeReader(conn, self._cache).tile(level, index, width)
            except IndexError:
                return None
        return data[: width * HASH_SIZE]

    def entry_bundle(self, index: int, width: int = TILE_WIDTH) -> bytes | None:
        """Entries ``index * 256`` to ``index * 256 + width - 1`` as a c2sp.org/tlog-tiles
        entry bundle, or None while the log does not hold them all."""
        tiles.Tile(0, index, width, entries=True)
        start = index * TILE_WIDTH
        with self._engine.connect() as conn:
            if start + width > _read_size(conn):
                return None
            rows = conn.execute(
                select(_ENTRIES.c.entry)
                .where(_ENTRIES.c.idx >= start, _ENTRIES.c.idx < start + width)
                .order_by(_ENTRIES.c.idx)
            ).all()
        if len(rows) != width:
            return None  # a hole in the entries: verify() says which
        return tiles.encode_bundle([bytes(r[0]) for r in rows])

    # --- auditing ---------------------------------------------------------------------------
    def verify(self, full: bool = True, *, max_findings: int = 1000) -> list[str]:
        """Check the stored log against itself; one line per discrepancy, [] when all good.

        - ``full``: re-derive every leaf hash from the stored entries and compare it with the
          level-0 tiles, naming the entry's index; and recompute each checkpoint's root from
          the entries themselves, so tiles rewritten to match altered entries are caught too.
        - Always: each tile has the width the log's size implies, and each full tile hashes
          to the hash the tile above holds for it (tlog-tiles "Merkle Tree"); each checkpoint
          is signed by this log's key for this origin, its stored root is the signed one, it
          is not for a size beyond the log's, and its root is the tree's root at its size.
          Checkpoints that all match one tree are consistent with each other; a pair
          around a mismatch is also checked with a consistency proof from the tiles.

        Memory stays bounded: entries, tiles and checkpoints are read page by page. After
        ``max_findings`` lines the rest are counted in a last line.
        """
        findings = _Findings(max_findings)
        with self._snapshot() as conn:
            size = _read_size(conn)
            _check_tiles(conn, size, findings)
            checkpoints = _CheckpointCheck(conn, self._origin, self._verifier, size, findings)
            if full:
                _check_entries(conn, size, checkpoints, findings)
            else:
                tree = _TreeReader(conn, _TileCache(64))
                for cp in checkpoints:
                    if cp.size > size:
                        continue
                    try:
                        root = merkle.root_hash(cp.size, tree.get_hash)
                    except IndexError as exc:
                        findings.add(f"checkpoint {cp.size}: the tiles cannot give its root: {exc}")
                        continue
                    checkpoints.compare(cp, root, "the stored tiles")
            checkpoints.finish(_TreeReader(conn, _TileCache(64)).get_hash)
        return findings.lines()

    # --- internals --------------------------------------------------------------------------
    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one state of the log throughout, so that appends
        running beside a long verify() cannot look like discrepancies."""
        with self._engine.connect() as conn:
            if self._dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if self._dialect == "sqlite":
                    # pysqlite sends no BEGIN before a SELECT; in WAL mode an explicit one
                    # pins the snapshot at the first read until the end of the transaction.
                    conn.exec_driver_sql("BEGIN")
                yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction that holds the log's single-writer lock from its first statement."""
        with self._engine.connect() as conn:
            if self._dialect == "postgresql":
                # Under READ COMMITTED every statement after the lock sees what the previous
                # holder committed; REPEATABLE READ would keep the snapshot taken while
                # waiting for the lock, and two writers could append at the same index.
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                if self._dialect == "sqlite":
                    # pysqlite begins transactions lazily, as readers; two could read the
                    # same size. BEGIN IMMEDIATE takes the write lock first (waiting up to
                    # busy_timeout), so the second writer reads the first one's result.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif self._dialect == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                    )
                yield conn

    def _locked_size(self, conn: Connection) -> int:
        size = conn.execute(
            select(_STATE.c.size).where(_STATE.c.id == _STATE_ID)
        ).scalar_one_or_none()
        if size is None:
            # The first writer creates the row, under the lock.
            conn.execute(insert(_STATE).values(id=_STATE_ID, size=0, updated_at=utcnow()))
            return 0
        return int(size)

    def _existing(self, conn: Connection, entries: Sequence[tuple[str, bytes]]) -> dict[str, int]:
        """Indices of the batch's source keys that the log already holds."""
        wanted = {key: data for key, data in entries}
        keys = list(wanted)
        columns = (_ENTRIES.c.source_key, _ENTRIES.c.idx, _ENTRIES.c.entry)
        queries = []
        if self._dialect == "postgresql":
            # One array parameter: thousands of IN (...) parameters cost more than the lookup.
            keys_param = bindparam("keys", keys, type_=postgresql.ARRAY(String))
            queries.append(select(*columns).where(_ENTRIES.c.source_key == any_(keys_param)))
        else:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[i : i + _LOOKUP_CHUNK]
                queries.append(select(*columns).where(_ENTRIES.c.source_key.in_(chunk)))
        found: dict[str, int] = {}
        differs = 0
        for query in queries:
            for key, idx, data in conn.execute(query):
                found[key] = int(idx)
                differs += bytes(data) != wanted[key]
        if differs:
            # The log keeps what it appended first; a caller sending other bytes under the
            # same key is worth a look, but must not make its whole batch fail forever.
            log.warning("%d resubmitted entries differ from the ones in the log", differs)
        return found

    def _integrate(self, conn: Connection, old_size: int, leaves: list[bytes]) -> None:
        """Add ``leaves`` (leaf hashes of entries ``old_size`` on) to the tiles.

        At tile level L the new hashes are those of tree level 8L: the leaf hashes at L = 0,
        above that the subtree hash of each tile of level L - 1 that the batch filled
        (c2sp.org/tlog-tiles "Merkle Tree"). Each level reads at most its partial tile.
        """
        level = 0
        before = old_size  # hashes at tree level 8 * level before this batch
        added = leaves
        rows: list[dict[str, Any]] = []
        while added:
            tile_index, offset = divmod(before, TILE_WIDTH)
            buf = bytearray()
            if offset:
                stored = conn.execute(
                    select(_TILES.c.hashes).where(
                        _TILES.c.level == level, _TILES.c.index == tile_index
                    )
                ).scalar_one_or_none()
                if stored is None or len(stored) != offset * HASH_SIZE:
                    have = "no tile" if stored is None else f"{len(stored)} bytes"
                    raise LedgerError(
                        f"{tiles.tile_path(level, tile_index, offset)} should hold {offset} "
                        f"hashes at log size {old_size}, the store has {have}: run verify"
                    )
                buf += stored
            filled: list[bytes] = []
            for h in added:
                buf += h
                if len(buf) == _FULL_TILE_BYTES:
                    full = bytes(buf)
                    rows.append(
                        {"level": level, "index": tile_index, "width": TILE_WIDTH, "hashes": full}
                    )
                    filled.append(_subtree_root(full, 0, TILE_WIDTH))
                    tile_index += 1
                    buf = bytearray()
            if buf:
                width = len(buf) // HASH_SIZE
                rows.append(
                    {"level": level, "index": tile_index, "width": width, "hashes": bytes(buf)}
                )
            added = filled
            before //= TILE_WIDTH
            level += 1
        # A partial tile is replaced as it grows (and by its full self once complete).
        ins = (pg_insert if self._dialect == "postgresql" else sqlite_insert)(_TILES)
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[_TILES.c.level, _TILES.c.index],
                set_={"width": ins.excluded.width, "hashes": ins.excluded.hashes},
            ),
            rows,
        )


class _RawInsert:
    """The entries' INSERT, compiled once and run with the driver's own bulk path: COPY on
    PostgreSQL, executemany on SQLite.

    SQLAlchemy's per-row work (parameter processing, cache keys) costs more than the insert
    itself at thousands of rows per batch (as for exchange records, see BENCHMARKS.md). The
    timestamp's bind processor runs once per batch, so the stored value is what the ORM
    would write.
    """

    _COLUMNS = ("idx", "entry", "source_key", "created_at")

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self._copy = dialect.name == "postgresql"
        compiled = insert(_ENTRIES).compile(dialect=dialect, column_keys=list(self._COLUMNS))
        self._sql = str(compiled)
        # Positional drivers (sqlite3: "?") take tuples in the compiled order.
        order = list(compiled.positiontup or []) if compiled.positional else list(self._COLUMNS)
        self._order = [self._COLUMNS.index(name) for name in order]
        self._named = not compiled.positional
        processor = _ENTRIES.c.created_at.type.bind_processor(dialect)
        self._stamp: Callable[[Any], Any] = processor or (lambda value: value)

    def __call__(self, conn: Connection, rows: list[tuple[int, bytes, str]]) -> None:
        stamp = self._stamp(utcnow())
        if self._copy:
            # COPY runs on the transaction's own connection, so it commits or rolls back
            # with the rest of the batch; about twice as fast as a pipelined executemany.
            raw: Any = conn.connection.driver_connection
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY {_ENTRIES.name} ({', '.join(self._COLUMNS)}) FROM STDIN") as copy,
            ):
                for idx, data, key in rows:
                    copy.write_row((idx, data, key, stamp))
            return
        params: list[Any]
        if self._named:
            params = [dict(zip(self._COLUMNS, (*row, stamp), strict=True)) for row in rows]
        elif self._order == [0, 1, 2, 3]:
            params = [(idx, data, key, stamp) for idx, data, key in rows]
        else:
            params = [tuple((*row, stamp)[i] for i in self._order) for row in rows]
        conn.exec_driver_sql(self._sql, params)


# --- reading the tree from tiles -------------------------------------------------------------
@dataclass
class _CachedTile:
    data: bytes
    # Every complete subtree hash inside the tile, bottom level first (built on first use;
    # valid for as long as the tile's data, which never changes).
    levels: list[list[bytes]] | None = None


class _TileCache:
    """A small LRU of tiles by (level, index). A tile's hashes never change once stored, it
    only grows, so a cached prefix stays valid and a longer read replaces it."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._tiles: OrderedDict[tuple[int, int], _CachedTile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, level: int, index: int, width: int) -> _CachedTile | None:
        with self._lock:
            cached = self._tiles.get((level, index))
            if cached is None or len(cached.data) < width * HASH_SIZE:
                return None
            self._tiles.move_to_end((level, index))
            return cached

    def put(self, level: int, index: int, data: bytes) -> _CachedTile:
        tile = _CachedTile(data)
        if self._capacity <= 0:
            return tile
        with self._lock:
            held = self._tiles.get((level, index))
            if held is not None and len(held.data) >= len(data):
                return held
            self._tiles[(level, index)] = tile
            self._tiles.move_to_end((level, index))
            while len(self._tiles) > self._capacity:
                self._tiles.popitem(last=False)
        return tile


class _TreeReader:
    """``get_hash`` over the stored tiles, on one connection, through the tile cache."""

    def __init__(self, conn: Connection, cache: _TileCache) -> None:
        self._conn = conn
        self._cache = cache

    def tile(self, level: int, index: int, width: int) -> bytes:
        return self._tile(level, index, width).data

    def _tile(self, level: int, index: int, width: int) -> _CachedTile:
        cached = self._cache.get(level, index, width)
        if cached is not None:
            return cached
        data = self._conn.execute(
            select(_TILES.c.hashes).where(_TILES.c.level == level, _TILES.c.index == index)
        ).scalar_one_or_none()
        if data is None or len(data) < width * HASH_SIZE:
            raise IndexError(f"{tiles.tile_path(level, index, width)} is not stored")
        return self._cache.put(level, index, bytes(data))

    def get_hash(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0:
            raise IndexError(f"no subtree at level {level}, index {index}")
        tile_level, k = divmod(level, TILE_HEIGHT)
        first = index << k  # position of the subtree's first hash at tree level 8L
        tile_index, offset = divmod(first, TILE_WIDTH)
        count = 1 << k
        try:
            tile = self._tile(tile_level, tile_index, offset + count)
        except IndexError:
            raise IndexError(
                f"the subtree at level {level}, index {index} is not complete in the log"
            ) from None
        if k == 0:
            return tile.data[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]
        # Proofs ask for several subtrees of the same few tiles: hash each tile's inner
        # nodes once (at most 255) and keep them with the cached tile.
        if tile.levels is None:
            tile.levels = _inner_levels(tile.data)
        return tile.levels[k][offset >> k]


def _inner_levels(data: bytes) -> list[list[bytes]]:
    """Every complete subtree hash over a tile's hashes: level k holds the roots of its
    aligned runs of 2**k hashes (a partial tile's last run may be incomplete: left out)."""
    level = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
    levels = [level]
    sha256 = hashlib.sha256
    while len(level) > 1:
        # RFC 9162 §2.1.1 node hash, inlined: the call to merkle.node_hash would cost a
        # third of the time here (tests compare the results with merkle's MemoryTree).
        level = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        levels.append(level)
    return levels


def _subtree_root(data: bytes, offset: int, count: int) -> bytes:
    """The root of ``count`` (a power of two) hashes of a tile from position ``offset``."""
    start = offset * HASH_SIZE
    return _inner_levels(data[start : start + count * HASH_SIZE])[-1][0]


def _read_size(conn: Connection) -> int:
    size = conn.execute(select(_STATE.c.size).where(_STATE.c.id == _STATE_ID)).scalar_one_or_none()
    return 0 if size is None else int(size)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --- verification ----------------------------------------------------------------------------
class _Findings:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: list[str] = []
        self._more = 0

    def add(self, line: str) -> None:
        if len(self._lines) < self._limit:
            self._lines.append(line)
        else:
            self._more += 1

    def lines(self) -> list[str]:
        if self._more:
            return [*self._lines, f"… and {self._more} more findings"]
        return list(self._lines)


def _tile_widths(size: int, level: int) -> tuple[int, int]:
    """(full tiles, width of the partial tile or 0) at ``level`` for a log of ``size``."""
    return divmod(size >> (TILE_HEIGHT * level), TILE_WIDTH)


def _check_tiles(conn: Connection, size: int, findings: _Findings) -> None:
    """Every tile has the width the size implies, and every full tile hashes to the hash the
    tile above holds for it. Reads each level's tiles in pages, one parent tile at a time."""
    level = 0
    while True:
        full, partial = _tile_widths(size, level)
        expected_tiles = full + (1 if partial else 0)
        parent_index = -1
        parent: bytes | None = None
        next_index = 0
        after = -1
        while True:
            page = conn.execute(
                select(_TILES.c.index, _TILES.c.width, _TILES.c.hashes)
                .where(_TILES.c.level == level, _TILES.c.index > after)
                .order_by(_TILES.c.index)
                .limit(_TILE_PAGE)
            ).all()
            if not page:
                break
            for index, width, hashes in page:
                index, hashes = int(index), bytes(hashes)
                after = index
                if index >= expected_tiles:
                    findings.add(
                        f"{_stored_tile(level, index)}: stored, but a log of size {size} "
                        f"has only {expected_tiles} tiles at level {level}"
                    )
                    continue
                if index > next_index:
                    findings.add(_missing_tiles(size, level, next_index, index - 1))
                next_index = index + 1
                want = TILE_WIDTH if index < full else partial
                path = tiles.tile_path(level, index, want)
                if width != want or len(hashes) != want * HASH_SIZE:
                    findings.add(
                        f"{path}: holds {len(hashes)} bytes (width {width}), a log of size "
                        f"{size} needs {want} hashes here"
                    )
                    continue
                if want != TILE_WIDTH:
                    continue
                # tlog-tiles "Merkle Tree": the tile's subtree hash is hash (index % 256) of
                # tile (index // 256) one level up.
                if index // TILE_WIDTH != parent_index:
                    parent_index = index // TILE_WIDTH
                    parent = conn.execute(
                        select(_TILES.c.hashes).where(
                            _TILES.c.level == level + 1, _TILES.c.index == parent_index
                        )
                    ).scalar_one_or_none()
                    parent = None if parent is None else bytes(parent)
                at = (index % TILE_WIDTH) * HASH_SIZE
                if parent is None or len(parent) < at + HASH_SIZE:
                    continue  # the parent's own check reports it missing or short
                if _subtree_root(hashes, 0, TILE_WIDTH) != parent[at : at + HASH_SIZE]:
                    parent_full, parent_partial = _tile_widths(size, level + 1)
                    parent_width = TILE_WIDTH if parent_index < parent_full else parent_partial
                    findings.add(
                        f"{path}: its hashes do not hash to hash {index % TILE_WIDTH} of "
                        f"{tiles.tile_path(level + 1, parent_index, parent_width)}: one of "
                        "the two tiles was altered"
                    )
        if next_index < expected_tiles:
            findings.add(_missing_tiles(size, level, next_index, expected_tiles - 1))
        if expected_tiles == 0:
            break
        level += 1
    # Anything stored above the top level is left over from a larger (rolled back?) log.
    extra = conn.execute(
        select(_TILES.c.level, _TILES.c.index).where(_TILES.c.level > level).limit(10)
    ).all()
    for tile_level, index in extra:
        findings.add(
            f"{_stored_tile(tile_level, index)}: stored, but a log of size {size} has no "
            f"tiles at level {tile_level}"
        )


def _stored_tile(level: int, index: int) -> str:
    """A stored tile's path, also for a row whose level or index no valid tile has (a row
    altered in the database must be reported, not crash the report)."""
    try:
        return tiles.tile_path(level, index)
    except ValueError:
        return f"tile row (level {level}, index {index})"


def _missing_tiles(size: int, level: int, first: int, last: int) -> str:
    full, partial = _tile_widths(size, level)

    def path(index: int) -> str:
        return tiles.tile_path(level, index, TILE_WIDTH if index < full else partial)

    which = path(first) if first == last else f"{path(first)} to {path(last)}"
    return f"{which}: missing from the stored tiles"


@dataclass
class _StoredCheckpoint:
    size: int
    root: bytes  # the root the note signs (or the stored column, if the note is unreadable)
    matches_tree: bool = False
    readable: bool = False


@dataclass
class _CheckpointCheck:
    """Checks each stored checkpoint's note as it is read, in order of size; the caller
    compares each with the tree's root at its size."""

    conn: Connection
    origin: str
    verifier: note.Verifier
    size: int
    findings: _Findings
    # Only neighbours of mismatches are kept for the consistency checks in finish(), and at
    # most _MAX_CONSISTENCY_CHECKS of them, so memory stays bounded here too.
    _suspects: list[tuple[_StoredCheckpoint, _StoredCheckpoint]] = field(default_factory=list)
    _previous: _StoredCheckpoint | None = None

    def __iter__(self) -> Iterator[_StoredCheckpoint]:
        after = -1
        while True:
            page = self.conn.execute(
                select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.root_hash, _CHECKPOINTS.c.note)
                .where(_CHECKPOINTS.c.size > after)
                .order_by(_CHECKPOINTS.c.size)
                .limit(_ENTRY_PAGE)
            ).all()
            if not page:
                return
            for size, root, signed in page:
                after = int(size)
                yield self._open(int(size), bytes(root), bytes(signed))

    def _open(self, size: int, root: bytes, signed: bytes) -> _StoredCheckpoint:
        cp = _StoredCheckpoint(size, root)
        try:
            checkpoint, _sigs = note.open_checkpoint(signed, [self.verifier])
        except NoteError as exc:
            self.findings.add(
                f"checkpoint {size}: its note does not verify with the log key: {exc}"
            )
            return cp
        if checkpoint.origin != self.origin:
            self.findings.add(
                f"checkpoint {size}: signed for origin {checkpoint.origin!r}, not {self.origin!r}"
            )
        if checkpoint.size != size:
            self.findings.add(f"checkpoint {size}: its note is for size {checkpoint.size}")
        if checkpoint.root_hash != root:
            self.findings.add(
                f"checkpoint {size}: the stored root {_b64(root)} is not the signed root "
                f"{_b64(checkpoint.root_hash)}"
            )
        cp.root, cp.readable = checkpoint.root_hash, True
        if size > self.size:
            self.findings.add(
                f"checkpoint {size}: signed for more entries than the log's {self.size}: "
                "entries were removed from the end, or the log's size was rolled back"
            )
        return cp

    def compare(self, cp: _StoredCheckpoint, root: bytes, source: str) -> None:
        """Compare a checkpoint's signed root with the tree's root at its size."""
        cp.matches_tree = cp.root == root
        previous = self._previous
        if not cp.matches_tree:
            since = (
                f"; checkpoint {previous.size} before it still matches"
                if previous and previous.matches_tree
                else ""
            )
            self.findings.add(
                f"checkpoint {cp.size}: its signed root {_b64(cp.root)} is not the root "
                f"{_b64(root)} recomputed from {source}{since}"
            )
        if (
            previous is not None
            and not (previous.matches_tree and cp.matches_tree)
            and len(self._suspects) < _MAX_CONSISTENCY_CHECKS
        ):
            self._suspects.append((previous, cp))
        self._previous = cp

    def finish(self, get_hash: merkle.GetHash) -> None:
        """Consistency proofs (RFC 9162 §2.1.4) from the stored tiles between neighbouring
        checkpoints where one did not match the tree: says whether the log signed two
        inconsistent checkpoints, or its stored data changed after signing."""
        for old, new in self._suspects:
            if not (old.readable and new.readable) or new.size > self.size or old.size == 0:
                continue
            try:
                proof = merkle.consistency_proof(old.size, new.size, get_hash)
                merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
            except IndexError:
                continue
            except ProofError as exc:
                self.findings.add(
                    f"checkpoints {old.size} and {new.size}: not consistent according to the "
                    f"stored tiles: {exc}"
                )


def _check_entries(
    conn: Connection, size: int, checkpoints: _CheckpointCheck, findings: _Findings
) -> None:
    """Stream the entries in index order: each leaf hash against the level-0 tile, holes and
    extra rows, and each checkpoint's root against the root of the entries up to its size."""
    tree = _Frontier()
    pending = iter(checkpoints)
    cp = next(pending, None)
    tile_index = -1
    tile: bytes | None = None

    def stored_leaf(i: int) -> bytes | None:
        nonlocal tile_index, tile
        if i // TILE_WIDTH != tile_index:
            tile_index = i // TILE_WIDTH
            data = conn.execute(
                select(_TILES.c.hashes).where(_TILES.c.level == 0, _TILES.c.index == tile_index)
            ).scalar_one_or_none()
            tile = None if data is None else bytes(data)
        at = (i % TILE_WIDTH) * HASH_SIZE
        if tile is None or len(tile) < at + HASH_SIZE:
            return None
        return tile[at : at + HASH_SIZE]

    def add(h: bytes) -> None:
        nonlocal cp
        tree.append(h)
        while cp is not None and cp.size <= tree.size:
            if cp.size == tree.size:
                checkpoints.compare(cp, tree.root(), "the stored entries")
            cp = next(pending, None)

    while cp is not None and cp.size == 0:  # the empty tree's checkpoint
        checkpoints.compare(cp, merkle.EMPTY_ROOT, "the stored entries")
        cp = next(pending, None)

    expected = 0
    after = -1
    while True:
        page = conn.execute(
            select(_ENTRIES.c.idx, _ENTRIES.c.entry)
            .where(_ENTRIES.c.idx > after)
            .order_by(_ENTRIES.c.idx)
            .limit(_ENTRY_PAGE)
        ).all()
        if not page:
            break
        for idx, data in page:
            idx = after = int(idx)
            if idx >= size:
                findings.add(
                    f"entry {idx}: stored beyond the log's size {size} (inserted, or the "
                    "log's size was rolled back)"
                )
                continue
            if idx > expected:
                what = (
                    f"entry {expected}"
                    if idx == expected + 1
                    else (f"entries {expected} to {idx - 1}")
                )
                findings.add(f"{what}: missing from the stored entries (deleted?)")
                # Carry on with the tiles' leaf hashes, so that the rest is checked as usual.
                for gap in range(expected, idx):
                    add(stored_leaf(gap) or bytes(HASH_SIZE))
            leaf = merkle.leaf_hash(bytes(data))
            stored = stored_leaf(idx)
            if stored is not None and stored != leaf:
                findings.add(
                    f"entry {idx}: its leaf hash is not hash {idx % TILE_WIDTH} of "
                    f"{_level0_path(idx, size)}: the entry or the tile was altered, or rows "
                    "were moved"
                )
            add(leaf)
            expected = idx + 1
    if expected < size:
        what = f"entry {expected}" if expected == size - 1 else f"entries {expected} to {size - 1}"
        findings.add(f"{what}: missing from the stored entries (deleted?)")
        for gap in range(expected, size):
            add(stored_leaf(gap) or bytes(HASH_SIZE))
    # Checkpoints beyond the log's size were reported when read; drain them.
    while cp is not None:
        cp = next(pending, None)


def _level0_path(idx: int, size: int) -> str:
    index = idx // TILE_WIDTH
    full, partial = _tile_widths(size, 0)
    return tiles.tile_path(0, index, TILE_WIDTH if index < full else partial)


class _Frontier:
    """The right edge of a Merkle tree being rebuilt leaf by leaf: the roots of its perfect
    subtrees, largest first (O(log n) hashes). Its root at any size is those roots folded
    from the right, as RFC 9162 §2.1.1 splits the tree."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        node = leaf
        n = self.size
        while n & 1:  # each trailing one bit closes a perfect subtree
            node = merkle.node_hash(self._stack.pop(), node)
            n >>= 1
        self._stack.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return merkle.EMPTY_ROOT
        root = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            root = merkle.node_hash(left, root)
        return root
