"""HTTP: the log as c2sp.org/tlog-tiles, for mirrors, monitors and auditors.

``GET <prefix>/checkpoint`` and ``GET <prefix>/tile/...`` with the paths the spec defines, so
a generic tlog client (or a plain file mirror) can read the hub's log. Full tiles never
change and are cacheable for a year; partial tiles and the checkpoint move as the log grows.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from qiao import problems
from qiao.ledger.errors import TileError
from qiao.ledger.store import LedgerStore
from qiao.ledger.tiles import TILE_WIDTH, parse_tile_path
from qiao.problems import Problem

# A tile path that is not the one canonical spelling of a tile is the client's mistake (400),
# not a missing resource: tlog-tiles names every tile by exactly one path.

TEXT = "text/plain; charset=utf-8"
# c2sp.org/tlog-tiles "Tiles": full tiles are immutable and may be cached indefinitely.
FULL_TILE_CACHE = "public, max-age=31536000, immutable"
# A partial tile is superseded by a wider one soon; a short lifetime spares the hub bursts of
# identical requests without keeping clients behind the log for long.
PARTIAL_TILE_CACHE = "public, max-age=10"


def ledger_router(store: LedgerStore) -> APIRouter:
    router = APIRouter(tags=["ledger"])

    @router.get("/checkpoint", response_class=Response)
    def log_checkpoint() -> Response:
        """The latest checkpoint the log signed (c2sp.org/tlog-checkpoint signed note)."""
        signed = store.latest_checkpoint()
        if signed is None:
            raise Problem(problems.NOT_FOUND, "the log has not signed a checkpoint yet")
        return Response(signed, media_type=TEXT, headers={"Cache-Control": "no-cache"})

    @router.get("/tile/{path:path}", response_class=Response)
    def log_tile(path: str) -> Response:
        """A hash tile ``tile/<L>/<N>[.p/<W>]`` or an entry bundle
        ``tile/entries/<N>[.p/<W>]`` (c2sp.org/tlog-tiles)."""
        try:
            t = parse_tile_path("tile/" + path)
        except TileError as exc:
            raise Problem(problems.BAD_TILE_PATH, str(exc)) from exc
        if t.entries:
            data = store.entry_bundle(t.index, t.width)
        else:
            data = store.tile(t.level, t.index, t.width)
        if data is None:
            raise Problem(
                problems.NOT_FOUND,
                f"{t.path()} is not in the log yet"
                + ("" if t.width < TILE_WIDTH else "; a partial tile .p/<W> may be"),
            )
        cache = FULL_TILE_CACHE if t.width == TILE_WIDTH else PARTIAL_TILE_CACHE
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": cache}
        )

    return router
