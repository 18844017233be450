"""The provider side of an exchange: another organization's node calls this one.

The caller is known by its TLS client certificate, which must be one the signed configuration
lists for the calling organization and not revoked. The provider node is authoritative: it
re-checks everything the consumer node checked (the agreement too, with its own limiter),
forwards to the department backend, and applies the agreement's projection and masking to
the answer before it leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from qiao import problems
from qiao.agreements.masking import (
    RecordMasker,
    RecordsNotFound,
    compile_masking,
    pseudonym_key,
)
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
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("qiao.exchange.provider")
PSEUDONYM_SECRET_FILE = "pseudonym.secret"
# Under an agreement that projects or masks, the caller's headers that would let the backend
# answer with something other than the whole current document are not forwarded: a part of
# one (Range, If-Range; RFC 9110 §14) cannot be masked, and a 304 to a guessed validator
# (If-None-Match, If-Modified-Since; RFC 9110 §13) would confirm a value the masking hides.
MASKED_OMITTED_REQUEST_HEADERS = frozenset(
    {"Range", "If-Range", "If-None-Match", "If-Modified-Since"}
)
# ... and of the backend's headers only those that describe the answer, not its data, leave:
# no Location (a redirect can name a record), Content-Range, ETag or Last-Modified (they
# describe the unmasked document).
MASKED_RESPONSE_HEADERS = ("Content-Type", "Content-Language", "Cache-Control", "Retry-After")


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
            key = pseudonym_key(
                self._pseudonym_secret, a.consumer.org, a.provider.org, a.resource.code
            )
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
                headers=forward_headers(
                    request, rec, MASKED_OMITTED_REQUEST_HEADERS if masker.active else ()
                ),
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
            if masker.active:
                return await self._relay_masked(request, upstream, resource, masker, decision, x)
            schema = resource.response_schema
            if _carries_records(request, upstream) and schema is not None:
                return await x.relay_checked(
                    request,
                    upstream,
                    self._max_body,
                    lambda body: self._check_response(schema, resource, upstream, body, x),
                )
            # No schema (or the backend's own problem, or no content): streamed as before.
            return await x.relay(request, upstream)

    async def _relay_masked(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resource: ResourceEntry,
        masker: RecordMasker,
        decision: Decision,
        x: Exchange,
    ) -> web.StreamResponse:
        """The backend's answer under an agreement that projects or masks: nothing of it
        leaves unless it went through the masker. Fields outside the projection never leave
        this node, and the others leave masked: every 2xx answer with content is read whole,
        checked and rewritten; any other answer keeps only its status and a minimal problem
        document, since an error or a redirect can carry records as well."""
        schema = resource.response_schema
        if upstream.status == HTTPStatus.PARTIAL_CONTENT:
            # Range is not forwarded, but a backend may answer 206 anyway: a piece of a
            # document cannot be projected, so it does not leave.
            partial = Violation("", "status", "206")
            return await x.refuse(_unmaskable(resource, decision, "a partial answer", partial))
        if _carries_records(request, upstream):
            return await x.relay_checked(
                request,
                upstream,
                self._max_body,
                lambda body: self._check_response(schema, resource, upstream, body, x),
                lambda body: self._mask(masker, resource, upstream, body, decision),
                MASKED_RESPONSE_HEADERS,
            )
        return await x.relay_replaced(
            upstream,
            self._max_body,
            lambda body: _problem_summary(request, upstream, body, self._max_body),
            MASKED_RESPONSE_HEADERS,
        )

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
            return _unmaskable(resource, decision, "it is not JSON", Violation("", "json"))
        try:
            masked = masker.apply_document(
                document, resource.records_at, frozenset(resource.fields)
            )
        except RecordsNotFound as missing:
            return _unmaskable(
                resource,
                decision,
                f"its records are not at {missing.pointer or '(the document)'!r}",
                Violation(missing.pointer, "records_at"),
            )
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
            return _unmaskable(resource, None, "it is not JSON", *errors)
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


def _json_errors(plain: bytes) -> list[Violation]:
    try:
        orjson.loads(plain)
    except orjson.JSONDecodeError:
        return [Violation("", "json", "")]
    return []


def _unmaskable(
    resource: ResourceEntry, decision: Decision | None, why: str, *errors: Violation
) -> Problem:
    under = f" under agreement {decision.agreement.id}" if decision else ""
    return Problem(
        problems.INVALID_RESPONSE,
        f"the answer of {resource.org}/{resource.code} cannot be masked as the agreement"
        f"{under} requires: {why}",
        {"errors": [e.to_dict() for e in errors], "resource_version": resource.version},
    )


def load_pseudonym_secret(data_dir: Path) -> bytes:
    """The node's secret for pseudonyms (32 random bytes in ``pseudonym.secret``, mode 0600),
    created on first start. The pseudonym key of an agreement is derived from it and the
    agreement's consumer, provider and resource (``qiao.agreements.masking.pseudonym_key``):
    stable across renewals of the agreement, so a consumer can join records over time, and
    unlinkable across consumers and resources. An organization with several provider nodes
    copies this file to each of them, or the same person would get different pseudonyms
    depending on the node that answered."""
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
    """Only a successful answer with content is records. Without masking, the backend's own
    problems (4xx, 5xx) and bodiless answers (HEAD, 204, 205, 304) pass through unchanged;
    under masking they are replaced (``_problem_summary``)."""
    return (
        200 <= upstream.status < 300
        and upstream.status not in (204, 205)
        and request.method != "HEAD"
        # A 201 or 202 with an empty body (Content-Length: 0) holds no records to check.
        and upstream.content_length != 0
    )


def _problem_summary(
    request: web.Request, upstream: aiohttp.ClientResponse, body: bytes | None, limit: int
) -> tuple[bytes, str]:
    """What a masked exchange answers in place of a backend answer that is not records: no
    body for a bodiless one (HEAD, 1xx, 2xx without content, 304), else a minimal problem
    document (RFC 9457): the backend's own "type", "title" and "status" when it sent
    application/problem+json (its "detail" and extensions may quote the records), otherwise
    "about:blank" with the status's reason phrase (RFC 9457 §4.2.1)."""
    status = upstream.status
    if body == b"" or request.method == "HEAD" or status < 300 or status == 304:
        return b"", ""
    document: dict[str, Any] | None = None
    media_type = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if body is not None and media_type == PROBLEM_CONTENT_TYPE:
        try:
            encoding = upstream.headers.get("Content-Encoding", "")
            theirs = orjson.loads(decoded(body, encoding, limit))
        except (Undecodable, orjson.JSONDecodeError):
            theirs = None
        if isinstance(theirs, dict):
            document = {k: theirs[k] for k in ("type", "title") if isinstance(theirs.get(k), str)}
            if type(theirs.get("status")) is int:  # bool is an int too: not a status
                document["status"] = theirs["status"]
    if document is None:
        document = {"type": "about:blank"}
        # A status code without a registered phrase gets no title rather than a guess (and
        # never the backend's reason phrase, which is free text).
        with contextlib.suppress(ValueError):
            document["title"] = HTTPStatus(status).phrase
        document["status"] = status
    return orjson.dumps(document), PROBLEM_CONTENT_TYPE
