"""The log over HTTP as c2sp.org/tlog-tiles: checkpoint, hash tiles, entry bundles, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from qiao.db import make_engine, migrate
from qiao.hub.app import _install_problem_handlers
from qiao.ledger import merkle, note, tiles
from qiao.ledger.store import LedgerStore
from qiao.ledger.views import FULL_TILE_CACHE, PARTIAL_TILE_CACHE, ledger_router
from qiao.problems import PROBLEM_CONTENT_TYPE

ORIGIN = "hub.qiao.example/ledger"
SIZE = 700  # two full level-0 tiles and one of 188; a level-1 tile of 2


def make_entry(i: int) -> bytes:
    return b'{"i":%d}' % i


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    migrate("hub", url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> LedgerStore:
    return LedgerStore(engine, note.Signer.generate(ORIGIN), ORIGIN)


@pytest.fixture
def client(store: LedgerStore) -> Iterator[TestClient]:
    app = FastAPI()
    _install_problem_handlers(app)
    app.include_router(ledger_router(store), prefix="/ledger")
    with TestClient(app) as c:
        yield c


@pytest.fixture
def tree(store: LedgerStore) -> merkle.MemoryTree:
    store.append([(f"k:{i}", make_entry(i)) for i in range(SIZE)])
    return merkle.MemoryTree(merkle.leaf_hash(make_entry(i)) for i in range(SIZE))


def expected_tile(tree: merkle.MemoryTree, level: int, index: int, width: int) -> bytes:
    first = index * tiles.TILE_WIDTH
    return b"".join(tree.get_hash(8 * level, first + j) for j in range(width))


def assert_problem(r: httpx.Response, status: int, type_suffix: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = r.json()
    assert body["status"] == status
    assert body["type"].endswith(type_suffix)
    assert body["detail"]


def test_checkpoint(client: TestClient, store: LedgerStore, tree: merkle.MemoryTree) -> None:
    assert_problem(client.get("/ledger/checkpoint"), 404, ":not-found")
    signed = store.sign_checkpoint()
    r = client.get("/ledger/checkpoint")
    assert r.status_code == 200
    assert r.content == signed
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    checkpoint, _ = note.open_checkpoint(r.content, [store.verifier])
    assert (checkpoint.size, checkpoint.root_hash) == (SIZE, tree.root())


@pytest.mark.parametrize(
    ("level", "index", "width"),
    [(0, 0, 256), (0, 1, 256), (0, 2, 188), (0, 2, 1), (0, 0, 17), (1, 0, 2), (1, 0, 1)],
)
def test_hash_tiles(
    client: TestClient, tree: merkle.MemoryTree, level: int, index: int, width: int
) -> None:
    r = client.get(f"/ledger/{tiles.tile_path(level, index, width)}")
    assert r.status_code == 200, r.text
    assert r.content == expected_tile(tree, level, index, width)
    assert r.headers["content-type"] == "application/octet-stream"
    full = width == tiles.TILE_WIDTH
    assert r.headers["cache-control"] == (FULL_TILE_CACHE if full else PARTIAL_TILE_CACHE)


def test_entry_bundles(client: TestClient, tree: merkle.MemoryTree) -> None:
    r = client.get("/ledger/tile/entries/001")
    assert r.status_code == 200
    assert r.headers["cache-control"] == FULL_TILE_CACHE
    assert tiles.decode_bundle(r.content, 256) == [make_entry(i) for i in range(256, 512)]
    r = client.get("/ledger/tile/entries/002.p/188")
    assert r.status_code == 200
    assert r.headers["cache-control"] == PARTIAL_TILE_CACHE
    entries = tiles.decode_bundle(r.content, 188)
    assert [merkle.leaf_hash(e) for e in entries] == [tree.get_hash(0, i) for i in range(512, 700)]


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/002",  # not full yet
        "tile/0/002.p/189",  # wider than the log
        "tile/0/003.p/1",
        "tile/1/000",
        "tile/2/000.p/1",
        "tile/entries/002",
        "tile/entries/002.p/189",
        "tile/entries/x001/000",
    ],
)
def test_missing_tiles_are_404(client: TestClient, tree: merkle.MemoryTree, path: str) -> None:
    assert_problem(client.get(f"/ledger/{path}"), 404, ":not-found")


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",  # N in 3-digit groups
        "tile/0/0000",
        "tile/00/000",
        "tile/0/000.p/256",  # a full tile has no .p/
        "tile/0/000.p/0",
        "tile/0/x000/001",  # no empty leading group
        "tile/64/000",
        "tile/entries/000.p/007",
        "tile/-1/000",
        "tile/0/000/",
        "tile/data/000",
    ],
)
def test_malformed_paths_are_400(client: TestClient, tree: merkle.MemoryTree, path: str) -> None:
    assert_problem(client.get(f"/ledger/{path}"), 400, ":bad-tile-path")
