"""The consumer's waits for a provider's node (docs/exchange-protocol.md, "Limits and
timeouts"): a provider node that accepts connections but never answers is given up on within
``provider_timeout_seconds``, on a new connection (the TLS handshake) as on a pooled one."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import aiohttp
import pytest

from qiao import pki
from qiao.config import NodeSettings
from qiao.exchange.consumer import PROVIDER_CONNECT_SECONDS, PinningConnector, provider_timeout


def test_the_connect_allowance_never_exceeds_the_provider_timeout(tmp_path: Path) -> None:
    short = provider_timeout(NodeSettings(data_dir=tmp_path, provider_timeout_seconds=2.5))
    assert short.sock_connect == 2.5 and short.sock_read == 2.5 and short.total is None
    default = provider_timeout(NodeSettings(data_dir=tmp_path))
    assert default.sock_connect == PROVIDER_CONNECT_SECONDS and default.sock_read == 60.0


async def test_a_provider_node_that_never_answers_the_handshake_is_given_up_on_in_time(
    tmp_path: Path,
) -> None:
    ca_key, ca = pki.create_ca("test CA")
    (tmp_path / "ca.pem").write_bytes(pki.cert_to_pem(ca))
    key = pki.generate_private_key()
    cert = pki.issue_node_certificate(
        ca_key,
        ca,
        pki.create_csr(key, "client", "X"),
        node_name="client",
        org_code="X",
        hosts=["127.0.0.1"],
        days=1,
    )
    (tmp_path / "client.pem").write_bytes(pki.cert_to_pem(cert))
    (tmp_path / "client.key").write_bytes(pki.key_to_pem(key))
    ctx = pki.client_context(tmp_path / "client.pem", tmp_path / "client.key", tmp_path / "ca.pem")
    # A black hole: the kernel completes the TCP handshake into the listen backlog, and no one
    # ever accepts, so the TLS ClientHello is never answered (a frozen or wedged node).
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    port = hole.getsockname()[1]
    settings = NodeSettings(data_dir=tmp_path, provider_timeout_seconds=0.5)
    try:
        async with aiohttp.ClientSession(
            connector=PinningConnector(lambda h, p: frozenset({b"\0" * 32}), ssl=ctx),
            timeout=provider_timeout(settings),
        ) as session:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await session.get(f"https://127.0.0.1:{port}/r1/x/y")
            waited = time.monotonic() - t0
    finally:
        hole.close()
    # Given up on after the provider timeout (0.5 s), not the 10 s connect allowance.
    assert 0.4 <= waited < 3.0, waited
