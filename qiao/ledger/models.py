"""The log's tables on the hub: entries, C2SP tiles, signed checkpoints and the log's size.

The entries are the log; everything else is derived from them and can be re-derived
(``LedgerStore.verify`` does exactly that). Tiles are stored rather than recomputed so that a
proof or a tile request at any log size reads a handful of rows, never the whole tree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import HubBase, UTCDateTime, utcnow

# An idempotency key such as ``exchange:<node>:<record id>``.
MAX_SOURCE_KEY = 255

# BigInteger on PostgreSQL: a log outgrows 2^31 entries long before it is retired. On SQLite
# an INTEGER PRIMARY KEY is the rowid itself, the fastest key there is (and 64-bit anyway).
_Index = BigInteger().with_variant(Integer, "sqlite")


class LedgerEntry(HubBase):
    """One log entry: the exact bytes whose RFC 9162 leaf hash is in the tree at ``idx``."""

    __tablename__ = "ledger_entries"

    idx: Mapped[int] = mapped_column(_Index, primary_key=True, autoincrement=False)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    # Chosen by the caller, so a batch sent again (its answer was lost) is not appended twice.
    source_key: Mapped[str] = mapped_column(String(MAX_SOURCE_KEY), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerTile(HubBase):
    """A c2sp.org/tlog-tiles hash tile: up to 256 concatenated 32-byte hashes.

    Tile ``index`` at ``level`` L holds the hashes at Merkle tree level 8L, positions
    ``index * 256`` onwards. The right-most tile of each level is partial (``width`` < 256)
    and is replaced as the log grows; every other tile is full and never changes.
    """

    __tablename__ = "ledger_tiles"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    width: Mapped[int] = mapped_column(SmallInteger)
    hashes: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerCheckpoint(HubBase):
    """A c2sp.org/tlog-checkpoint the log signed: at most one per size, never a fork."""

    __tablename__ = "ledger_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[bytes] = mapped_column(LargeBinary)  # the signed note, verbatim
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerState(HubBase):
    """One row (``id`` 1): how many entries the tiles cover, i.e. the log's size."""

    __tablename__ = "ledger_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
