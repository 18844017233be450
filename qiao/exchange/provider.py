"""The provider side of an exchange: another organization's node calls this one.

The caller is known by its TLS client certificate, which must be one the signed configuration
lists for the calling organization and not revoked. The provider node is authoritative: it
re-checks everything the consumer node checked, then forwards to the department backend.
"""

from __future__ import annotations

import hashlib
import logging
import time

import aiohttp
from aiohttp import web
from yarl import URL

from qiao import problems
from qiao.config import NodeSettings
from qiao.db import utcnow
from qiao.exchange import protocol as p
from qiao.exchange.records import Record, RecordWriter
from qiao.exchange.relay import (
    RequestBody,
    ResponseOutcome,
    client_session,
    forward_headers,
    problem_response,
    raw_rest,
    relay_response,
    upstream_failure,
)
from qiao.globalconf import GlobalConf, NodeEntry
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem

log = logging.getLogger("qiao.exchange.provider")


def peer_fingerprint(request: web.Request) -> str:
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj else None
    return hashlib.sha256(der).hexdigest() if der else ""


class ProviderGateway:
    def __init__(
        self,
        settings: NodeSettings,
        identity: NodeIdentity,
        conf: ConfigurationCache,
        writer: RecordWriter,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._conf = conf
        self._writer = writer
        self._session: aiohttp.ClientSession | None = None
        self._timeouts = {
            code: aiohttp.ClientTimeout(
                total=None, sock_connect=min(10, s.timeout_seconds), sock_read=s.timeout_seconds
            )
            for code, s in settings.services.items()
        }

    async def start(self) -> None:
        self._session = client_session(aiohttp.TCPConnector(limit=0, keepalive_timeout=60))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started, t0 = utcnow(), time.perf_counter()
        headers = request.headers
        rec = Record(
            exchange_id=(headers.get(p.H_ID) or "")[:128],
            role="provider",
            client=(headers.get(p.H_CLIENT) or "")[:200],
            provider_org="",
            resource="",
            method=request.method,
            path=request.path_qs[:2000],
            started_at=started,
        )
        body = RequestBody(request, self._settings.max_body_bytes, problems.PROVIDER_BODY_TOO_LARGE)
        outcome = ResponseOutcome()
        out_headers: dict[str, str] = {}

        async def finish() -> None:
            rec.duration_ms = (time.perf_counter() - t0) * 1000
            rec.request_bytes, rec.response_bytes = body.size, outcome.size
            rec.response_hash = outcome.sha256
            await self._writer.write(rec)

        try:
            conf = self._conf.usable(problems.PROVIDER_CONFIGURATION_EXPIRED)
            caller = self._caller(conf, request)
            rec.peer_node = caller.name
            rec.exchange_id = p.exchange_id(headers.get(p.H_ID))
            out_headers[p.H_ID] = rec.exchange_id
            target = p.parse_target(request.path)
            rec.provider_org, rec.resource = target.provider_org, target.resource
            client = p.parse_client(headers.get(p.H_CLIENT))
            rec.purpose = p.optional_text(p.H_PURPOSE, headers.get(p.H_PURPOSE))
            rec.end_user = p.optional_text(p.H_USER, headers.get(p.H_USER))
            if client.org != caller.org:
                raise Problem(
                    problems.CERTIFICATE_MISMATCH,
                    f"node {caller.name} of {caller.org} may not call for {client}",
                )
            backend = self._authorize(conf, client, target)
            return await self._forward(
                request, target, client, backend, body, rec, outcome, out_headers, finish
            )
        except Problem as refused:
            problem = body.problem() if body.over_limit else refused
            rec.status, rec.problem_type = problem.status, problem.kind.uri
            resp = problem_response(problem, out_headers)
            outcome.size = len(resp.body) if isinstance(resp.body, bytes) else 0
            await finish()
            return resp

    def _caller(self, conf: GlobalConf, request: web.Request) -> NodeEntry:
        fp = peer_fingerprint(request)
        if fp in conf.revoked:
            raise Problem(
                problems.CERTIFICATE_REVOKED, f"the client certificate {fp[:16]}… has been revoked"
            )
        node = conf.nodes_by_fingerprint.get(fp)
        if node is None:
            raise Problem(
                problems.CERTIFICATE_MISMATCH,
                f"the client certificate {fp[:16]}… is not in the global configuration",
            )
        return node

    def _authorize(self, conf: GlobalConf, client: p.Client, target: p.Target) -> str:
        service = self._settings.services.get(target.resource)
        resource = conf.resources.get((target.provider_org, target.resource))
        if target.provider_org != self._identity.org or resource is None or service is None:
            raise Problem(
                problems.PROVIDER_UNKNOWN_RESOURCE,
                f"node {self._identity.name} does not serve "
                f"{target.provider_org}/{target.resource}",
            )
        if str(client) not in conf.apps:
            raise Problem(problems.UNKNOWN_CLIENT, f"{client} is not registered at the hub")
        if not resource.allows(str(client)):
            raise Problem(
                problems.PROVIDER_NOT_ALLOWED,
                f"{client} may not use {target.provider_org}/{target.resource}",
            )
        return service.url.rstrip("/")

    async def _forward(
        self,
        request: web.Request,
        target: p.Target,
        client: p.Client,
        backend: str,
        body: RequestBody,
        rec: Record,
        outcome: ResponseOutcome,
        out_headers: dict[str, str],
        finish: object,
    ) -> web.StreamResponse:
        assert self._session is not None
        rec.client = str(client)
        fwd = forward_headers(request, rec)
        data = await body.open()
        try:
            upstream = await self._session.request(
                request.method,
                URL(backend + raw_rest(request), encoded=True),
                data=data,
                headers=fwd,
                timeout=self._timeouts[target.resource],
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if body.over_limit:
                raise body.problem() from exc
            raise upstream_failure(
                exc,
                problems.BACKEND_UNAVAILABLE,
                problems.BACKEND_TIMEOUT,
                f"the backend of {target.resource}",
            ) from exc
        async with upstream:
            await body.drain()
            rec.status = upstream.status
            rec.request_hash = p.request_hash(
                request.method, request.path_qs, rec.exchange_id, str(client), body.sha256
            )
            out_headers[p.H_REQUEST_HASH] = rec.request_hash

            async def before_end() -> None:
                rec.problem_type = outcome.problem_type
                await finish()  # type: ignore[operator]

            try:
                return await relay_response(request, upstream, out_headers, outcome, before_end)
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec.status, rec.problem_type = 502, problems.BACKEND_UNAVAILABLE.uri
                log.warning("exchange %s: backend response broke off: %s", rec.exchange_id, exc)
                await finish()  # type: ignore[operator]
                raise
