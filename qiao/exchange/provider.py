"""The provider side of an exchange: another organization's node calls this one.

The caller is known by its TLS client certificate, which must be one the signed configuration
lists for the calling organization and not revoked. The provider node is authoritative: it
re-checks everything the consumer node checked (the agreement too, with its own limiter),
forwards to the department backend, and applies the agreement's projection and masking to
the answer before it leaves.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from qiao import problems
from qiao.agreements.masking import RecordMasker, compile_masking
from qiao.agreements.policy import Decision
from qiao.catalog.schema import (
    PayloadValidator,
    Undecodable,
    Violation,
    decoded,
    is_json_media_type,
)
from qiao.config import NodeSettings
from qiao.db import utcnow
from qiao.exchange import protocol as p
from qiao.exchange.limits import Limiter
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
PSEUDONYM_SECRET_FILE = "pseudonym.secret"


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
        pseudonym_secret: bytes | None = None,
    ) -> None:
        self._settings = settings
        self._max_body = settings.max_body_bytes
        self._pseudonym_secret = pseudonym_secret or load_pseudonym_secret(settings.data_dir)
        self._maskers: dict[str, RecordMasker] = {}
        self._limiter = Limiter(writer.engine, "provider")
        conf.listeners.append(self._on_configuration)
        if conf.current is not None:
            self._on_configuration(conf.current)
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

    def _on_configuration(self, conf: GlobalConf) -> None:
        # Seed the counts of agreements this node has not counted yet from its records, so a
        # restart does not hand out a fresh quota (qiao.exchange.limits).
        self._limiter.seed(conf.policy.agreements.values(), utcnow())

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
            decision = self._decide(conf, request, target, x)
            return await self._forward(request, target, backend, resource, decision, x)
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
        return service.url.rstrip("/"), resource

    def _decide(
        self, conf: GlobalConf, request: web.Request, target: p.Target, x: Exchange
    ) -> Decision:
        """Decide again, with authority: this node's own copy of the configuration, its own
        verification of the agreement, its own count of the agreement's calls."""
        rec = x.record
        decision = conf.policy.decide(
            rec.client, target.provider_org, target.resource, request.method, target.path,
            request.query, rec.purpose, rec.end_user, rec.started_at, "provider",
        )  # fmt: skip
        rec.agreement, rec.emergency = decision.agreement.id, decision.emergency
        self._limiter.admit(decision.agreement, rec.started_at)
        return decision

    def _masker(self, decision: Decision) -> RecordMasker:
        """The agreement's projection and masking, compiled once (keyed by its hash: a
        renewed or changed agreement is another document and compiles afresh)."""
        masker = self._maskers.get(decision.sha256)
        if masker is None:
            a = decision.agreement
            key = hmac.new(self._pseudonym_secret, a.id.encode(), hashlib.sha256).digest()
            masker = self._maskers[decision.sha256] = compile_masking(a.fields, a.masking, key)
        return masker

    async def _forward(
        self,
        request: web.Request,
        target: p.Target,
        backend: str,
        resource: ResourceEntry,
        decision: Decision,
        x: Exchange,
    ) -> web.StreamResponse:
        assert self._session is not None
        rec = x.record
        masker = self._masker(decision)
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
            carries = _carries_records(request, upstream)
            if carries and masker.active:
                # Fields outside the projection never leave this node, and the others leave
                # masked: every 2xx answer is read whole, checked, and rewritten.
                return await x.relay_checked(
                    request,
                    upstream,
                    self._settings.max_body_bytes,
                    lambda body: self._check_response(schema, resource, upstream, body, x),
                    lambda body: self._mask(masker, resource, upstream, body, decision),
                )
            if carries and schema is not None:
                return await x.relay_checked(
                    request,
                    upstream,
                    self._settings.max_body_bytes,
                    lambda body: self._check_response(schema, resource, upstream, body, x),
                )
            # No schema (or the backend's own problem, or no content): streamed as before.
            return await x.relay(request, upstream)

    def _mask(
        self,
        masker: RecordMasker,
        resource: ResourceEntry,
        upstream: aiohttp.ClientResponse,
        body: bytes,
        decision: Decision,
    ) -> bytes | Problem:
        """The answer with the agreement's projection and masking applied (already checked
        to be JSON that decodes within the limit)."""
        plain = decoded(body, upstream.headers.get("Content-Encoding", ""), self._max_body)
        try:
            document = orjson.loads(plain)
        except orjson.JSONDecodeError:
            return _unmaskable(resource, decision, Violation("", "json", ""))
        masked = masker.apply_document(document, resource.records_at)
        if resource.fields:
            _mask_envelope(masked, resource.records_at, masker, frozenset(resource.fields))
        return orjson.dumps(masked)

    def _check_response(
        self,
        schema: PayloadValidator | None,
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
                errors = schema.check_json(plain) if schema is not None else _json_errors(plain)
        if not errors:
            return None
        if schema is None:
            # Not catalogued, but the agreement masks or projects: an answer that is not
            # JSON cannot be masked, so it does not leave.
            return _unmaskable(resource, None, *errors)
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


def _mask_envelope(
    document: object, records_at: str, masker: RecordMasker, fields: frozenset[str]
) -> None:
    """The envelope around the records (paging, totals; the catalog allows it) may repeat a
    record field — a lookup by plate answering {"plate": …, "violations": […]}. Such a member
    is treated as that field: dropped when the agreement does not project it, masked by its
    rule when it does, so the envelope cannot carry in clear what the records may not."""
    node = document
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in records_at.split("/")[1:]]
    for i, token in enumerate(tokens):
        if not isinstance(node, dict):
            return
        named = {k: v for k, v in node.items() if k in fields and k != token}
        if named:
            kept = masker.apply(named)
            for k in named:
                if isinstance(kept, dict) and k in kept:
                    node[k] = kept[k]
                else:
                    del node[k]
        node = node.get(token) if i < len(tokens) else None


def _json_errors(plain: bytes) -> list[Violation]:
    try:
        orjson.loads(plain)
    except orjson.JSONDecodeError:
        return [Violation("", "json", "")]
    return []


def _unmaskable(resource: ResourceEntry, decision: Decision | None, *errors: Violation) -> Problem:
    under = f" under agreement {decision.agreement.id}" if decision else ""
    return Problem(
        problems.INVALID_RESPONSE,
        f"the answer of {resource.org}/{resource.code} cannot be masked as the agreement"
        f"{under} requires: it is not JSON",
        {"errors": [e.to_dict() for e in errors], "resource_version": resource.version},
    )


def load_pseudonym_secret(data_dir: Path) -> bytes:
    """The node's secret for pseudonyms (32 random bytes in ``pseudonym.secret``, mode 0600),
    created on first start. Each agreement's pseudonym key is HMAC-SHA256(secret, agreement
    id): stable for the agreement, so a consumer can join records, and unlinkable across
    agreements. An organization with several provider nodes copies this file to each of them,
    or the same person would get different pseudonyms depending on the node that answered."""
    path = data_dir / PSEUDONYM_SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
    if len(secret) != 32:
        raise ValueError(f"{path} does not hold a 32-byte secret")
    return secret


def _carries_records(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Only a successful answer with content is records; the backend's own problems (4xx,
    5xx) and bodiless answers (HEAD, 204, 205, 304) pass through unchanged."""
    return (
        200 <= upstream.status < 300
        and upstream.status not in (204, 205)
        and request.method != "HEAD"
    )
