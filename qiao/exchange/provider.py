"""The provider side of an exchange: another organization's node calls this one.

The caller is known by its TLS client certificate, which must be one the signed configuration
lists for the calling organization and not revoked. The provider node is authoritative: it
re-checks everything the consumer node checked, then forwards to the department backend.
"""

from __future__ import annotations

import hashlib
import logging

import aiohttp
from aiohttp import web
from yarl import URL

from qiao import problems
from qiao.catalog.schema import (
    PayloadValidator,
    Undecodable,
    Violation,
    decoded,
    is_json_media_type,
)
from qiao.config import NodeSettings
from qiao.exchange import protocol as p
from qiao.exchange.records import RecordWriter
from qiao.exchange.relay import (
    Exchange,
    client_session,
    forward_headers,
    raw_rest,
    upstream_failure,
)
from qiao.globalconf import GlobalConf, NodeEntry, ResourceEntry
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
        x = Exchange(
            request,
            "provider",
            self._writer,
            limit=self._settings.max_body_bytes,
            too_large=problems.PROVIDER_BODY_TOO_LARGE,
            broken_off=problems.BACKEND_UNAVAILABLE,
        )
        try:
            conf = self._conf.usable(problems.PROVIDER_CONFIGURATION_EXPIRED)
            caller = self._caller(conf, request)
            x.record.peer_node = caller.name
            target, client = x.read(request)
            if client.org != caller.org:
                raise Problem(
                    problems.CERTIFICATE_MISMATCH,
                    f"node {caller.name} of {caller.org} may not call for {client}",
                )
            backend, resource = self._authorize(conf, client, target)
            return await self._forward(request, target, backend, resource, x)
        except Problem as refused:
            return await x.refuse(refused)

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

    def _authorize(
        self, conf: GlobalConf, client: p.Client, target: p.Target
    ) -> tuple[str, ResourceEntry]:
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
        return service.url.rstrip("/"), resource

    async def _forward(
        self,
        request: web.Request,
        target: p.Target,
        backend: str,
        resource: ResourceEntry,
        x: Exchange,
    ) -> web.StreamResponse:
        assert self._session is not None
        rec = x.record
        data = await x.body.open()
        try:
            upstream = await self._session.request(
                request.method,
                URL(backend + raw_rest(request), encoded=True),
                data=data,
                headers=forward_headers(request, rec),
                timeout=self._timeouts[target.resource],
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if x.body.over_limit:
                raise x.body.problem() from exc
            raise upstream_failure(
                exc,
                problems.BACKEND_UNAVAILABLE,
                problems.BACKEND_TIMEOUT,
                f"the backend of {target.resource}",
            ) from exc
        async with upstream:
            # Hash all of the request, also what the backend did not read, before answering.
            await x.body.drain()
            rec.request_hash = p.request_hash(
                request.method, request.path_qs, rec.exchange_id, rec.client, x.body.sha256
            )
            x.headers[p.H_REQUEST_HASH] = rec.request_hash
            schema = resource.response_schema
            if schema is not None and _carries_records(request, upstream):
                return await x.relay_checked(
                    request,
                    upstream,
                    self._settings.max_body_bytes,
                    lambda body: self._check_response(schema, resource, upstream, body, x),
                )
            # No schema (or the backend's own problem, or no content): streamed as before.
            return await x.relay(request, upstream)

    def _check_response(
        self,
        schema: PayloadValidator,
        resource: ResourceEntry,
        upstream: aiohttp.ClientResponse,
        body: bytes | None,
        x: Exchange,
    ) -> Problem | None:
        """None if the backend's answer matches the catalog; else the problem to answer with.
        The problem names fields and rules, never values (they may be personal data)."""
        limit = self._settings.max_body_bytes
        content_type = upstream.headers.get("Content-Type", "")
        if body is None:
            errors = [Violation("", "maxBytes", f"over-{limit}-bytes")]
        elif not is_json_media_type(content_type):
            errors = [Violation("", "contentMediaType", "application/json")]
        else:
            try:
                plain = decoded(body, upstream.headers.get("Content-Encoding", ""), limit)
            except Undecodable:
                errors = [Violation("", "contentEncoding", "gzip-or-deflate")]
            else:
                errors = schema.check_json(plain)
        if not errors:
            return None
        what = f"{resource.org}/{resource.code}"
        log.warning(
            "exchange %s: the backend's answer for %s v%d breaks the catalog: %s",
            x.record.exchange_id,
            what,
            resource.version,
            ", ".join(f"{e.pointer or '/'} {e.keyword} {e.rule}".rstrip() for e in errors),
        )
        return Problem(
            problems.INVALID_RESPONSE,
            f"the answer of {what} (version {resource.version}) does not match the catalog: "
            f"{len(errors)} violation(s) listed in errors",
            {"errors": [e.to_dict() for e in errors], "resource_version": resource.version},
        )


def _carries_records(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Only a successful answer with content is records; the backend's own problems (4xx,
    5xx) and bodiless answers (HEAD, 204, 205, 304) pass through unchanged."""
    return (
        200 <= upstream.status < 300
        and upstream.status not in (204, 205)
        and request.method != "HEAD"
    )
