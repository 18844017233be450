"""c2sp.org/tlog-tiles: the paths of tiles and entry bundles, and the bundle encoding.

A tiled log serves its Merkle tree as static files (``tile/<L>/<N>[.p/<W>]``) and its
entries in bundles (``tile/entries/<N>[.p/<W>]``), so any web server or object store can
serve it and any department can mirror it. Pure functions, no I/O; a malformed path or
bundle raises :class:`TileError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from qiao.ledger.errors import TileError

# tlog-tiles "Merkle Tree": full tiles are exactly 256 hashes wide (8,192 bytes).
TILE_WIDTH = 256
TILE_HEIGHT = 8  # log2(TILE_WIDTH): each tile spans 8 levels of the Merkle tree
# "<L> ... MUST be a decimal ASCII integer between 0 and 63".
MAX_LEVEL = 63
# "Entry bundles are sequences of big-endian uint16 length-prefixed log entries".
MAX_ENTRY_SIZE = 0xFFFF

_LEVEL = r"0|[1-9][0-9]?"
_INDEX = r"(?:x[0-9]{3}/)*[0-9]{3}"
_WIDTH = r"[1-9][0-9]{0,2}"
_TILE_PATH = re.compile(
    rf"tile/(?P<level>{_LEVEL}|entries)/(?P<index>{_INDEX})(?:\.p/(?P<width>{_WIDTH}))?"
)


@dataclass(frozen=True)
class Tile:
    """One tile (``level`` 0-63) or, with ``entries=True``, one entry bundle.

    ``width`` is 256 for a full tile and 1-255 for a partial one.
    """

    level: int
    index: int
    width: int = TILE_WIDTH
    entries: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.level <= MAX_LEVEL:
            raise ValueError(f"tile level {self.level} is not in 0..{MAX_LEVEL}")
        if self.entries and self.level != 0:
            raise ValueError("entry bundles sit at level 0")
        if self.index < 0:
            raise ValueError(f"tile index {self.index} is negative")
        if not 1 <= self.width <= TILE_WIDTH:
            raise ValueError(f"tile width {self.width} is not in 1..{TILE_WIDTH}")

    def path(self) -> str:
        level = "entries" if self.entries else str(self.level)
        partial = f".p/{self.width}" if self.width < TILE_WIDTH else ""
        return f"tile/{level}/{_encode_index(self.index)}{partial}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` for the ``index``-th tile of ``level`` (tlog-tiles)."""
    return Tile(level, index, width).path()


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]`` for the ``index``-th entry bundle (tlog-tiles)."""
    return Tile(0, index, width, entries=True).path()


def parse_tile_path(path: str) -> Tile:
    """The tile a path names, relative to the log prefix; only the canonical spelling passes.

    One tile has one path, so a cache or a mirror never holds the same tile twice: no
    leading zeroes in ``L`` or ``W``, no empty leading groups in ``N``, no ``.p/256``.
    """
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise TileError(f"{path[:80]!r} is not a tile path tile/<L>/<N>[.p/<W>]")
    level_text, index_text, width_text = match.group("level", "index", "width")
    entries = level_text == "entries"
    level = 0 if entries else int(level_text)
    if level > MAX_LEVEL:
        raise TileError(f"tile level {level} in {path!r} is not in 0..{MAX_LEVEL}")
    index = int(index_text.replace("x", "").replace("/", ""))
    width = TILE_WIDTH
    if width_text is not None:
        width = int(width_text)
        if width >= TILE_WIDTH:
            raise TileError(f"partial tile width {width} in {path!r} is not in 1..{TILE_WIDTH - 1}")
    tile = Tile(level, index, width, entries)
    if tile.path() != path:
        raise TileError(f"{path!r} is not the canonical path of its tile, {tile.path()!r}")
    return tile


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"a bundle holds at most {TILE_WIDTH} entries, not {len(entries)}")
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise ValueError(f"entry {i} is {len(entry)} bytes, more than {MAX_ENTRY_SIZE}")
        out += len(entry).to_bytes(2, "big")
        out += entry
    return bytes(out)


def decode_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """The entries of a bundle; with ``width``, exactly that many must be there."""
    entries: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise TileError(f"entry {len(entries)} has a truncated length at byte {offset}")
        size = int.from_bytes(data[offset : offset + 2], "big")
        start = offset + 2
        end = start + size
        if end > len(data):
            raise TileError(
                f"entry {len(entries)} needs {size} bytes at byte {start}, "
                f"the bundle has {len(data) - start}"
            )
        entries.append(bytes(data[start:end]))
        if len(entries) > TILE_WIDTH:
            raise TileError(f"bundle holds more than {TILE_WIDTH} entries")
        offset = end
    if width is not None and len(entries) != width:
        raise TileError(f"bundle holds {len(entries)} entries, its path says {width}")
    return entries


def _encode_index(index: int) -> str:
    """1234067 -> ``x001/x234/067``: 3-digit groups, all but the last prefixed with ``x``.

    The prefix keeps a file name (``067``) from clashing with a directory (``x234``), so a
    plain file system can hold and serve the tree.
    """
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])
