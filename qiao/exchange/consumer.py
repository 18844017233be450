"""The consumer side of an exchange: a department app calls its own node.

The node authenticates the app, decides under the agreements of the global configuration and
counts the call against the agreement's limits (the consumer node rejects early what the
provider would refuse anyway), finds the provider's node and calls it over
mutual TLS, pinned to the certificate fingerprints the signed configuration lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from qiao import problems
from qiao.catalog.schema import Undecodable, Violation, decoded, is_json_media_type
from qiao.config import NodeSettings
from qiao.db import utcnow
from qiao.exchange import protocol as p
from qiao.exchange.keys import ApiKeyService, HubKeysUnavailable, HubTokens
from qiao.exchange.limits import NOT_COUNTED, Limiter, Reservation
from qiao.exchange.records import RecordWriter
from qiao.exchange.relay import Exchange, client_session, forward_headers, upstream_failure
from qiao.globalconf import GlobalConf, NodeEntry, ResourceEntry
from qiao.identity.access_tokens import (
    AccessToken,
    TokenRefused,
    looks_like_jwt,
    node_audience,
)
from qiao.node.confcache import ConfigurationCache
from qiao.node.identity import NodeIdentity
from qiao.problems import Problem

log = logging.getLogger("qiao.exchange.consumer")

# Shorter than a node's default header_timeout_seconds (qiao.node.limits).
PEER_KEEPALIVE_SECONDS = 15.0
# The scope an access token from the hub needs to be used at a node (docs/sso.md).
EXCHANGE_SCOPE = "qiao"


class TokenVerifier(Protocol):
    """What checks the hub's access tokens at a node (``HubTokens``; tests pass a fake)."""

    async def verify(self, token: str) -> AccessToken: ...


async def accept_access_token(tokens: TokenVerifier, token: str, app: str | None) -> AccessToken:
    """An access token from the hub that lets an app of this node act for a user, or a
    ``Problem`` saying why not. ``app`` is the app the caller claims to be (None: the
    token's own app, which it must then name). Shared by the exchange and the event routes."""
    try:
        at = await tokens.verify(token)
    except HubKeysUnavailable as exc:
        raise Problem(
            problems.HUB_KEYS_UNAVAILABLE, f"the hub's signing keys are unavailable: {exc}"
        ) from exc
    except TokenRefused as exc:
        raise Problem(problems.BAD_CREDENTIAL, f"the access token is refused: {exc}") from exc
    if not at.app or (app is not None and at.app != app):
        raise Problem(
            problems.BAD_CREDENTIAL,
            f"the access token was issued to {at.app or 'a client bound to no app'}, "
            f"not {app or 'an app of this node'}",
        )
    if EXCHANGE_SCOPE not in at.scope.split():
        # RFC 9068 §2.2.3: the scope says what the token may be used for. A token asked
        # for sign-in alone ("openid profile") does not let the app call for the user.
        raise Problem(
            problems.OUT_OF_SCOPE,
            f"the access token's scope {at.scope!r} lacks {EXCHANGE_SCOPE!r}: ask the hub "
            f"for scope '{EXCHANGE_SCOPE}' to call the exchange for the user",
        )
    return at


@dataclass
class ProviderAnswer:
    """What this node saw of the provider node's answer to one call."""

    request_hash: str = ""  # its X-Qiao-Request-Hash; "" if it sent none (or did not answer)


def provider_refused_over_limit(problem_type: str, answer: ProviderAnswer) -> bool:
    """Whether the provider NODE refused the call as over an agreement's limit, so this node
    gives back its reservation. The problem type alone does not tell: a backend may answer
    429 with a limiter's type itself, and the provider node relays that answer as a call it
    admitted and counted. The provider node refuses at its decision, before it hashes the
    request, so its own refusal carries no X-Qiao-Request-Hash; every answer it relays from
    the backend does (qiao.exchange.provider)."""
    return problem_type in NOT_COUNTED and not answer.request_hash


class PinnedFingerprints(aiohttp.Fingerprint):
    """aiohttp's fingerprint check, widened to a set (a node may hold two certificates while
    it rotates). An empty set trusts nothing."""

    def __init__(self, allowed: frozenset[bytes]) -> None:
        super().__init__(next(iter(allowed), b"\0" * 32))
        self._allowed = allowed

    def check(self, transport: object) -> None:
        sslobj = transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        got = hashlib.sha256(der).digest() if der else b""
        if got not in self._allowed:
            host, port, *_ = transport.get_extra_info("peername")  # type: ignore[attr-defined]
            raise aiohttp.ServerFingerprintMismatch(self.fingerprint, got, host, port)


class PinningConnector(aiohttp.TCPConnector):
    """Checks the provider node's certificate against the configuration's fingerprints right
    after the TLS handshake, before any request byte is sent. (Relies on aiohttp's
    ``_get_fingerprint`` hook; aiohttp is pinned and tests/exchange cover the refusal.)"""

    def __init__(self, pins: Callable[[str, int], frozenset[bytes]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pins = pins

    def _get_fingerprint(self, req: aiohttp.ClientRequest) -> aiohttp.Fingerprint | None:
        return PinnedFingerprints(self._pins(req.url.host or "", req.port or 443))


# A new connection to a provider's node (TCP and the TLS handshake) gets at most this long.
PROVIDER_CONNECT_SECONDS = 10.0


def provider_timeout(settings: NodeSettings) -> aiohttp.ClientTimeout:
    """How long the consumer waits for a provider's node (docs/exchange-protocol.md, "Limits
    and timeouts"): ``provider_timeout_seconds`` for each read, and for a new connection the
    connect allowance, never longer than ``provider_timeout_seconds`` itself — a node that
    accepts connections but never answers the TLS handshake must not hold the app longer than
    the documented wait."""
    wait = settings.provider_timeout_seconds
    return aiohttp.ClientTimeout(
        total=None, sock_connect=min(PROVIDER_CONNECT_SECONDS, wait), sock_read=wait
    )


class ConsumerGateway:
    def __init__(
        self,
        settings: NodeSettings,
        identity: NodeIdentity,
        conf: ConfigurationCache,
        keys: ApiKeyService,
        writer: RecordWriter,
        ssl_context: object,
        tokens: HubTokens | None = None,
    ) -> None:
        self._settings = settings
        # The hub's OIDC access tokens, for apps that call with one instead of an API key.
        self._tokens = tokens or HubTokens(
            settings.hub_url, node_audience(identity.instance, identity.org)
        )
        self._identity = identity
        self._conf = conf
        self._keys = keys
        self._writer = writer
        self._ssl = ssl_context
        self._pins: dict[tuple[str, int], frozenset[bytes]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._limiter = Limiter(writer.engine, "consumer")
        conf.listeners.append(self._on_configuration)
        if conf.current is not None:
            self._on_configuration(conf.current)

    def _on_configuration(self, conf: GlobalConf) -> None:
        self._limiter.seed(conf.policy.agreements.values(), utcnow())
        pins: dict[tuple[str, int], frozenset[bytes]] = {}
        for nodes in conf.nodes_by_org.values():
            for node in nodes:
                url = URL(node.address)
                key = (url.host or "", url.port or 443)
                pins[key] = pins.get(key, frozenset()) | {
                    bytes.fromhex(f) for f in node.fingerprints
                }
        if self._session is not None and pins != self._pins:
            # Pooled connections were pinned under the old configuration: start afresh so a
            # revoked or replaced provider certificate is not used again.
            old = self._session
            self._session = self._new_session()
            self._close_later(old)
        self._pins = pins

    def _close_later(self, session: aiohttp.ClientSession) -> None:
        # Keep a reference until it is done: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _pin(self, host: str, port: int) -> frozenset[bytes]:
        return self._pins.get((host, port), frozenset())

    def _new_session(self) -> aiohttp.ClientSession:
        # Idle connections are dropped before the provider's node would close them (its
        # header_timeout_seconds, 20 s by default): reusing one the far end is closing at
        # that moment fails the call.
        connector = PinningConnector(
            self._pin, ssl=self._ssl, limit=0, keepalive_timeout=PEER_KEEPALIVE_SECONDS
        )
        return client_session(connector, timeout=provider_timeout(self._settings))

    @property
    def tokens(self) -> HubTokens:
        """The verifier of the hub's access tokens (the event routes accept them too)."""
        return self._tokens

    async def start(self) -> None:
        self._session = self._new_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        x = Exchange(
            request,
            "consumer",
            self._writer,
            limit=self._settings.max_body_bytes,
            too_large=problems.BODY_TOO_LARGE,
            broken_off=problems.PROVIDER_UNREACHABLE,
        )
        try:
            target, client = x.read(request)
            await self._authenticate(request, client, target, x)
            conf = self._conf.usable()
            provider, resource = self._route(conf, client, target)
            x.record.peer_node = provider.name
            reservation = self._decide(conf, request, target, x)
            answer = ProviderAnswer()
            try:
                return await self._forward(request, provider, resource, x, answer)
            finally:
                if reservation and provider_refused_over_limit(x.outcome.problem_type, answer):
                    # The provider's limiter (authoritative) did not admit the call: neither
                    # does this node's count, as its records say (qiao.exchange.limits).
                    self._limiter.release(reservation)
        except Problem as refused:
            return await x.refuse(refused)

    def _decide(
        self, conf: GlobalConf, request: web.Request, target: p.Target, x: Exchange
    ) -> Reservation | None:
        """Decide under the agreements before any byte goes to the provider (the consumer
        node rejects early; the provider decides again, with authority), and count the call
        against the agreement's limits (None: it has none)."""
        rec = x.record
        decision = conf.policy.decide(
            rec.client, target.provider_org, target.resource, request.method, target.path,
            request.query, rec.purpose, rec.end_user, rec.started_at, "consumer",
        )  # fmt: skip
        rec.agreement, rec.emergency = decision.agreement.id, decision.emergency
        return self._limiter.admit(decision.agreement, rec.started_at)

    async def _authenticate(
        self, request: web.Request, client: p.Client, target: p.Target, x: Exchange
    ) -> None:
        """Check the app's credential: an API key (scoped to resources) or an access token
        from the hub. A token that names a user decides ``X-Qiao-User``: the app cannot
        claim to act for someone else with a header."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise Problem(
                problems.MISSING_CREDENTIAL,
                "send Authorization: Bearer <API key or access token from the hub>",
            )
        if str(client).rsplit("/", 1)[0] + "/" != self._identity.client_id_prefix:
            raise Problem(
                problems.UNKNOWN_CLIENT,
                f"{client} is not an app of this node's organization {self._identity.org}",
            )
        credential = auth[7:].strip()
        if looks_like_jwt(credential):
            await self._check_access_token(credential, client, x)
            return
        grant = self._keys.check(credential)
        if grant is None or grant.client != str(client):
            raise Problem(
                problems.BAD_CREDENTIAL,
                "the API key is unknown, expired, revoked, or belongs to another app",
            )
        if not grant.allows(target.provider_org, target.resource):
            raise Problem(
                problems.OUT_OF_SCOPE,
                f"API key {grant.key_id} is not scoped to {target.provider_org}/{target.resource}",
            )

    async def _check_access_token(self, token: str, client: p.Client, x: Exchange) -> None:
        at = await accept_access_token(self._tokens, token, str(client))
        # RFC 9068 §2.2: "sub" is the resource owner. It replaces whatever X-Qiao-User the
        # app sent, so the record names the person the hub authenticated.
        x.record.end_user = at.subject[:200]

    async def _checked_request(
        self,
        request: web.Request,
        resource: ResourceEntry,
        data: bytes | AsyncIterator[bytes] | None,
        x: Exchange,
    ) -> bytes | None:
        """The request body, read whole (bounded by max_body_bytes: ``x.body`` counts and
        hashes it, so the request hash covers exactly what is sent) and checked against the
        catalog's request schema; a body that fails never leaves this node."""
        schema = resource.request_schema
        assert schema is not None
        if data is not None and not isinstance(data, bytes):
            data = b"".join([chunk async for chunk in data])
        if not data:
            return data  # a query without a body: nothing to check
        limit = self._settings.max_body_bytes
        errors: list[Violation]
        if not is_json_media_type(request.headers.get("Content-Type", "")):
            errors = [Violation("", "contentMediaType", "application/json")]
        else:
            try:
                plain = decoded(data, request.headers.get("Content-Encoding", ""), limit)
            except Undecodable:
                errors = [Violation("", "contentEncoding", "gzip-or-deflate")]
            else:
                errors = schema.check_json(plain)
        if errors:
            raise Problem(
                problems.INVALID_REQUEST,
                f"the request body does not match the catalog's parameters of "
                f"{resource.org}/{resource.code} (version {resource.version}): "
                f"{len(errors)} violation(s) listed in errors",
                {"errors": [e.to_dict() for e in errors], "resource_version": resource.version},
            )
        return data

    def _route(
        self, conf: GlobalConf, client: p.Client, target: p.Target
    ) -> tuple[NodeEntry, ResourceEntry]:
        if str(client) not in conf.apps:
            raise Problem(problems.UNKNOWN_CLIENT, f"{client} is not registered at the hub")
        if target.provider_org not in conf.org_names:
            raise Problem(problems.UNKNOWN_PROVIDER, f"no organization {target.provider_org}")
        resource = conf.resources.get((target.provider_org, target.resource))
        if resource is None:
            raise Problem(
                problems.UNKNOWN_RESOURCE,
                f"{target.provider_org} provides no resource {target.resource!r}",
            )
        for node in conf.nodes_by_org.get(target.provider_org, ()):
            if node.fingerprints:
                return node, resource
        raise Problem(
            problems.PROVIDER_UNREACHABLE,
            f"{target.provider_org} has no node with a valid certificate",
        )

    async def _forward(
        self,
        request: web.Request,
        provider: NodeEntry,
        resource: ResourceEntry,
        x: Exchange,
        answer: ProviderAnswer,
    ) -> web.StreamResponse:
        assert self._session is not None
        rec = x.record
        url = URL(provider.address + request.raw_path, encoded=True)
        data = await x.body.open()
        if self._settings.validate_requests and resource.request_schema is not None:
            data = await self._checked_request(request, resource, data, x)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                data=data,
                headers=forward_headers(request, rec),
                allow_redirects=False,
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise Problem(
                problems.PROVIDER_NOT_TRUSTED,
                f"node {provider.name} presented a certificate not in the configuration",
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise Problem(
                problems.PROVIDER_NOT_TRUSTED, f"TLS with node {provider.name} failed: {exc}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            if x.body.over_limit:
                raise x.body.problem() from exc
            raise upstream_failure(
                exc,
                problems.PROVIDER_UNREACHABLE,
                problems.PROVIDER_TIMEOUT,
                f"node {provider.name}",
            ) from exc
        async with upstream:
            rec.status = upstream.status
            rec.request_hash = p.request_hash(
                request.method, request.path_qs, rec.exchange_id, rec.client, x.body.sha256
            )
            theirs = answer.request_hash = upstream.headers.get(p.H_REQUEST_HASH, "")
            # A provider may refuse before reading the body (and then cannot hash it), but an
            # answer it stands behind must name the request it answered.
            if (theirs or upstream.status < 400) and theirs != rec.request_hash:
                raise Problem(
                    problems.REQUEST_HASH_MISMATCH,
                    f"node {provider.name} hashed the request as {theirs}, "
                    f"this node as {rec.request_hash}",
                )
            x.headers[p.H_REQUEST_HASH] = rec.request_hash
            return await x.relay(request, upstream)
