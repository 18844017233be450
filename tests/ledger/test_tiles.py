"""c2sp.org/tlog-tiles paths and entry bundles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qiao.ledger.errors import TileError
from qiao.ledger.tiles import (
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    Tile,
    decode_bundle,
    encode_bundle,
    entries_path,
    parse_tile_path,
    tile_path,
)


@pytest.mark.parametrize(
    ("level", "index", "width", "path"),
    [
        (0, 0, 256, "tile/0/000"),
        (0, 1234067, 256, "tile/0/x001/x234/067"),  # the spec's example
        (1, 999, 256, "tile/1/999"),
        (1, 1000, 256, "tile/1/x001/000"),
        (2, 1000000, 256, "tile/2/x001/x000/000"),
        (0, 273, 112, "tile/0/273.p/112"),  # tree of 70,000: the partial level-0 tile
        (1, 1, 17, "tile/1/001.p/17"),
        (2, 0, 1, "tile/2/000.p/1"),
        (63, 5, 255, "tile/63/005.p/255"),
    ],
)
def test_tile_paths(level: int, index: int, width: int, path: str) -> None:
    assert tile_path(level, index, width) == path
    assert parse_tile_path(path) == Tile(level, index, width)


@pytest.mark.parametrize(
    ("index", "width", "path"),
    [
        (0, 256, "tile/entries/000"),
        (1234067, 256, "tile/entries/x001/x234/067"),
        (273, 112, "tile/entries/273.p/112"),
    ],
)
def test_entries_paths(index: int, width: int, path: str) -> None:
    assert entries_path(index, width) == path
    assert parse_tile_path(path) == Tile(0, index, width, entries=True)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile/0/",
        "tile/00/000",  # leading zero in L
        "tile/64/000",  # L above 63
        "tile/-1/000",
        "tile/0/0",
        "tile/0/0000",
        "tile/0/x001",  # the last group has no x
        "tile/0/001/234",  # every group but the last has one
        "tile/0/x000/001",  # 1 is 001, not x000/001
        "tile/0/000.p/0",
        "tile/0/000.p/256",  # a full tile has no .p suffix
        "tile/0/000.p/012",
        "tile/0/000.p/",
        "tile/0/000/",
        "/tile/0/000",
        "tile/0/000\n",
        "tile/0/\u0660\u0660\u0660",  # Arabic-Indic digits are not ASCII digits
        "tile/data/000",
        "tile/entries/000.p/300",
        "tile/1/entries/000",
    ],
)
def test_malformed_paths_are_rejected(path: str) -> None:
    with pytest.raises(TileError):
        parse_tile_path(path)


@pytest.mark.parametrize(
    ("level", "index", "width"),
    [(-1, 0, 256), (64, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)],
)
def test_impossible_tiles_are_refused(level: int, index: int, width: int) -> None:
    with pytest.raises(ValueError):
        tile_path(level, index, width)


def test_entry_bundles_sit_at_level_zero() -> None:
    with pytest.raises(ValueError, match="level 0"):
        Tile(1, 0, entries=True)


@given(
    level=st.integers(min_value=0, max_value=63),
    index=st.integers(min_value=0, max_value=2**64),
    width=st.integers(min_value=1, max_value=TILE_WIDTH),
    entries=st.booleans(),
)
def test_paths_round_trip(level: int, index: int, width: int, entries: bool) -> None:
    tile = Tile(0 if entries else level, index, width, entries)
    assert parse_tile_path(tile.path()) == tile


def test_bundle_encoding() -> None:
    assert encode_bundle([b"", b"ab"]) == b"\x00\x00\x00\x02ab"
    assert decode_bundle(b"\x00\x00\x00\x02ab") == [b"", b"ab"]
    assert encode_bundle([]) == b""
    biggest = b"\xff" * MAX_ENTRY_SIZE
    assert decode_bundle(encode_bundle([biggest]), width=1) == [biggest]


@given(st.lists(st.binary(max_size=300), max_size=TILE_WIDTH))
def test_bundles_round_trip(entries: list[bytes]) -> None:
    assert decode_bundle(encode_bundle(entries), width=len(entries)) == entries


@pytest.mark.parametrize(
    ("data", "width", "reason"),
    [
        (b"\x00", None, "truncated length"),
        (b"\x00\x01a\x00", None, "entry 1 has a truncated length"),
        (b"\x00\x05ab", None, "needs 5 bytes"),
        (b"\x00\x00" * (TILE_WIDTH + 1), None, "more than 256"),
        (b"\x00\x01a", 2, "holds 1 entries, its path says 2"),
    ],
)
def test_malformed_bundles_are_rejected(data: bytes, width: int | None, reason: str) -> None:
    with pytest.raises(TileError, match=reason):
        decode_bundle(data, width)


def test_unencodable_bundles_are_refused() -> None:
    with pytest.raises(ValueError, match="65536 bytes"):
        encode_bundle([b"\x00" * (MAX_ENTRY_SIZE + 1)])
    with pytest.raises(ValueError, match="at most 256"):
        encode_bundle([b""] * (TILE_WIDTH + 1))
