"""A minimal, fast department backend for the benchmarks: one vehicle-violation record."""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web

RECORD = orjson.dumps(
    {
        "plate": "粤B12345",
        "violations": [
            {
                "record_id": "V2026110100001",
                "plate": "粤B12345",
                "code": "1625",
                "description": "驾驶机动车违反道路交通信号灯通行",
                "occurred_at": "2026-11-01T08:15:00+08:00",
                "location": "桥城市滨江区江南大道与长河路交叉口",
                "fine_yuan": 200,
                "points": 6,
                "handled": False,
            }
        ],
    }
)


async def violations(_r: web.Request) -> web.Response:
    return web.Response(body=RECORD, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_get("/violations", violations)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
