"""The consumer node pins the provider's certificate before it sends a single byte."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from qiao import pki
from qiao.exchange.consumer import PinningConnector


def _issue(ca_key, ca, tmp: Path, name: str) -> tuple[Path, Path, bytes]:  # type: ignore[no-untyped-def]
    key = pki.generate_private_key()
    cert = pki.issue_node_certificate(
        ca_key,
        ca,
        pki.create_csr(key, name, "X"),
        node_name=name,
        org_code="X",
        hosts=["127.0.0.1"],
        days=1,
    )
    (tmp / f"{name}.pem").write_bytes(pki.cert_to_pem(cert))
    (tmp / f"{name}.key").write_bytes(pki.key_to_pem(key))
    return tmp / f"{name}.pem", tmp / f"{name}.key", bytes.fromhex(pki.fingerprint(cert))


async def test_only_the_pinned_certificate_is_talked_to(tmp_path: Path) -> None:
    ca_key, ca = pki.create_ca("test CA")
    (tmp_path / "ca.pem").write_bytes(pki.cert_to_pem(ca))
    server_cert, server_key, server_fp = _issue(ca_key, ca, tmp_path, "server")
    client_cert, client_key, other_fp = _issue(ca_key, ca, tmp_path, "client")
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        received.append(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=pki.server_context(server_cert, server_key, tmp_path / "ca.pem")
    )
    port = server.sockets[0].getsockname()[1]
    ctx = pki.client_context(client_cert, client_key, tmp_path / "ca.pem")
    pins = {("127.0.0.1", port): frozenset({other_fp})}
    async with aiohttp.ClientSession(
        connector=PinningConnector(lambda h, p: pins.get((h, p), frozenset()), ssl=ctx)
    ) as s:
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await s.get(f"https://127.0.0.1:{port}/secret?x=1", data=b"payload")
        assert not any(b"payload" in r or b"secret" in r for r in received)
        pins[("127.0.0.1", port)] = frozenset({other_fp, server_fp})
        async with s.get(f"https://127.0.0.1:{port}/fine") as r:
            assert r.status == 200 and await r.read() == b"ok"
    server.close()
    await server.wait_closed()
