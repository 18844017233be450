"""Small fictional department backends for the demo city (plain aiohttp services).

Each answers in JSON from data generated with a fixed seed (``qiao.demo.people``); none of it
describes real people, vehicles or companies.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from datetime import date, timedelta
from typing import Any

import orjson
from aiohttp import web

from qiao.demo.people import DemoCity, generate_accidents, generate_stations


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _not_found(detail: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(
            {"type": "about:blank", "title": "Not Found", "status": 404, "detail": detail}
        ),
        status=404,
        content_type="application/problem+json",
    )


def public_security(city: DemoCity) -> web.Application:
    """市公安局: vehicle violations by plate, traffic accidents, and identity verification."""
    by_plate: dict[str, list[dict[str, Any]]] = {}
    for v in city.violations:
        by_plate.setdefault(v.plate, []).append(asdict(v))
    people = {p.citizen_id: p for p in city.people}

    async def violations(request: web.Request) -> web.Response:
        plate = request.query.get("plate", "")
        if not plate:
            return _json({"title": "plate is required"}, 400)
        return _json({"plate": plate, "violations": by_plate.get(plate, [])})

    async def identity(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        person = people.get(str(body.get("citizen_id", "")))
        return _json({"match": person is not None and person.name == body.get("name")})

    accident_list = generate_accidents()

    async def accidents(request: web.Request) -> web.Response:
        # Optional filters: district name and/or day (YYYY-MM-DD, local time).
        district, day = request.query.get("district", ""), request.query.get("date", "")
        found = [
            a
            for a in accident_list
            if (not district or a["district"] == district)
            and (not day or str(a["occurred_at"]).startswith(day))
        ]
        return _json({"district": district, "date": day, "accidents": found})

    app = web.Application()
    app.router.add_get("/violations", violations)
    app.router.add_get("/accidents", accidents)
    app.router.add_post("/identity/verify", identity)
    return app


def market_regulation(city: DemoCity) -> web.Application:
    """市市场监督管理局: enterprise registration and credit by credit code."""
    enterprises = {e.uscc: e for e in city.enterprises}

    async def enterprise(request: web.Request) -> web.Response:
        e = enterprises.get(request.match_info["code"].upper())
        if e is None:
            return _not_found("no enterprise with that credit code")
        data = asdict(e)
        data["established"] = e.established.isoformat()
        return _json(data)

    app = web.Application()
    app.router.add_get("/enterprises/{code}", enterprise)
    return app


def transport(city: DemoCity, seed: int = 20261129) -> web.Application:
    """市交通运输局: public bicycle stations."""
    stations = generate_stations(seed=seed)

    async def list_stations(_r: web.Request) -> web.Response:
        return _json({"stations": stations})

    app = web.Application()
    app.router.add_get("/stations", list_stations)
    return app


def health(city: DemoCity, seed: int = 20261129) -> web.Application:
    """市卫生健康委员会: daily epidemic statistics."""
    rng = random.Random(seed)
    start = date(2026, 11, 1)
    days = [
        {
            "date": (start + timedelta(days=i)).isoformat(),
            "new_cases": rng.randint(0, 30),
            "recovered": rng.randint(0, 25),
        }
        for i in range(28)
    ]

    async def daily(_r: web.Request) -> web.Response:
        return _json({"days": days})

    app = web.Application()
    app.router.add_get("/daily", daily)
    return app
