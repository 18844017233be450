"""Running the hub under uvicorn, with the listener's limits (qiao.hub.limits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from qiao.config import HubSettings
from qiao.hub import limits
from qiao.hub.app import create_app


def uvicorn_config(settings: HubSettings) -> uvicorn.Config:
    """The hub app behind its body limits, served by the head-limiting protocol."""
    bounds = limits.Limits.of(settings)
    return uvicorn.Config(
        limits.BodyLimits(create_app(settings), bounds),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,
        http=limits.protocol_class(bounds),
        timeout_keep_alive=settings.keepalive_seconds,
    )


def run(settings: HubSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = uvicorn.Server(uvicorn_config(settings))
    # Our own loop (uvloop's, with the TLS handshake deadline) instead of uvicorn.run's.
    factory = limits.event_loop_factory(settings.tls_handshake_timeout_seconds)
    # As uvicorn.run does, Ctrl-C is a normal stop.
    with asyncio.Runner(loop_factory=factory) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(server.serve())
