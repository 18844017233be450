"""Witness round trip: the hub's add-checkpoint request to a node's witness over HTTP, side by
side with the same work called in-process and with the bare cryptography it needs.

    .venv/bin/python bench/witness.py [--rounds 500] [--growth 100]

Each round the log grows by ``--growth`` entries; the request carries a fresh signed
checkpoint and the consistency proof from the previous size, as the hub sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.db import make_engine, migrate
from qiao.ledger import merkle, note
from qiao.ledger.witness import Witness, witness_routes


def _requests(rounds: int, growth: int) -> list[bytes]:
    log = note.Signer.generate("bench/log")
    tree = merkle.MemoryTree()
    bodies, old = [], 0
    for r in range(rounds):
        for i in range(growth):
            tree.append(merkle.leaf_hash(f"entry {r}/{i}".encode()))
        size = tree.size
        proof = merkle.consistency_proof(old, size, tree.get_hash) if old else []
        signed = note.sign_note(note.Checkpoint("bench/log", size, tree.root()).format(), [log])
        bodies.append(
            f"old {old}\n".encode()
            + b"".join(base64.b64encode(h) + b"\n" for h in proof)
            + b"\n"
            + signed
        )
        old = size
    bodies.insert(0, log.verifier().to_text().encode())
    return bodies


def _witness(folder: Path, log_key: str) -> Witness:
    url = f"sqlite:///{folder / 'node.db'}"
    migrate("node", url)
    vkey = note.Verifier.from_text(log_key)
    return Witness(make_engine(url), note.Cosigner.generate("bench/witness"), {"bench/log": vkey})


def _pct(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
    }


async def _over_http(witness: Witness, bodies: list[bytes]) -> list[float]:
    app = web.Application()
    app.add_routes(witness_routes(witness))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    times = []
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            t0 = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{port}/witness/add-checkpoint", data=body) as r:
                assert r.status == 200, await r.text()
                await r.read()
            times.append(time.perf_counter() - t0)
    await runner.cleanup()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--growth", type=int, default=100)
    args = ap.parse_args()
    key, *bodies = _requests(args.rounds, args.growth)
    with tempfile.TemporaryDirectory() as tmp:
        http = asyncio.run(_over_http(_witness(Path(tmp) / "a", key.decode()), bodies))
    with tempfile.TemporaryDirectory() as tmp:
        w = _witness(Path(tmp), key.decode())
        direct = []
        for body in bodies:
            t0 = time.perf_counter()
            status, _ = w.add_checkpoint(body, int(time.time()))
            direct.append(time.perf_counter() - t0)
            assert status == 200
    # The bare cryptography: open the note, check the proof, cosign.
    verifier = note.Verifier.from_text(key.decode())
    cosigner = note.Cosigner.generate("bench/witness")
    crypto, old_root = [], merkle.EMPTY_ROOT
    for body in bodies:
        head, _, signed = body.partition(b"\n\n")
        lines = head.decode().splitlines()
        t0 = time.perf_counter()
        text, _ = note.open_note(signed, [verifier])
        cp = note.Checkpoint.parse(text)
        old = int(lines[0].split()[1])
        if old:
            merkle.verify_consistency(
                old, cp.size, [base64.b64decode(x) for x in lines[1:]], old_root, cp.root_hash
            )
        cosigner.cosign(text.encode(), int(time.time()))
        crypto.append(time.perf_counter() - t0)
        old_root = cp.root_hash
    print(
        json.dumps(
            {
                "benchmark": "witness-round-trip",
                "rounds": args.rounds,
                "growth": args.growth,
                "http_round_trip": _pct(http),
                "in_process": _pct(direct),
                "crypto_only": _pct(crypto),
                "http_vs_crypto_p50": round(statistics.median(http) / statistics.median(crypto), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
