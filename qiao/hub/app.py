"""The hub (交换中心): the control plane's HTTP API, composed from the domain services."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qiao import __version__, console, problems
from qiao.agreements import api as agreements_api
from qiao.agreements import emergency_api
from qiao.agreements.audit import audit_agreements
from qiao.catalog import api as catalog_api
from qiao.config import HubSettings
from qiao.db import make_engine, migrate, session_factory
from qiao.events import hub_api
from qiao.hub import auth
from qiao.hub import openapi as hub_openapi
from qiao.hub.auth import need, require
from qiao.identity import api as identity_api
from qiao.identity.roles import Principal, Role
from qiao.ledger.cosigning import Cosigning
from qiao.ledger.exchanges import ExchangeLedger
from qiao.ledger.service import HubLedger, ledger_api, submissions_api
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem
from qiao.registry.services import (
    NODE_FETCH_HEADERS,
    REFUSED_HEADER,
    HubKeys,
    RegistryService,
    current_actor,
)

log = logging.getLogger("qiao.hub")


def problem_response(p: Problem, instance: str | None = None) -> Response:
    return Response(p.to_json(instance), status_code=p.status, media_type=PROBLEM_CONTENT_TYPE)


def open_registry(settings: HubSettings, *, run_migrations: bool = True) -> RegistryService:
    """Open (and if needed create) the hub's database and keys."""
    if run_migrations:
        migrate("hub", settings.database_url)
    engine = make_engine(settings.database_url)
    keys = HubKeys.load_or_create(settings.data_dir, settings.instance, settings.ledger_origin)
    return RegistryService(
        session_factory(engine),
        keys,
        instance=settings.instance,
        token_ttl=timedelta(seconds=settings.enrollment_token_ttl_seconds),
        certificate_days=settings.node_certificate_days,
    )


# --- request and response bodies ----------------------------------------------------------
class OrganizationIn(BaseModel):
    code: str = Field(description="Unified social credit code (GB 32100)")
    name: str = Field(min_length=1, max_length=200)
    name_en: str = ""
    kind: str = Field("government", pattern=r"^(government|enterprise|bank|institution)$")


class AppIn(BaseModel):
    code: str
    name: str = ""


class ResourceIn(BaseModel):
    org: str
    code: str
    name: str = ""


class EnrollIn(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    node_name: str
    address: str = Field(description="https://host:port where other nodes reach this node")
    csr: str = Field(max_length=20000, description="PEM certificate signing request")
    witness_key: str = Field("", max_length=300, description="C2SP cosignature verifier key")
    witness_url: str = Field("", max_length=300, description="Where the hub sends checkpoints")
    events_key: str = Field(
        "",
        max_length=64,
        description="Base64 X25519 public key events are sealed to (HPKE, RFC 9180); "
        "empty from nodes enrolled before event streams",
    )


class RevokeIn(BaseModel):
    reason: str = Field("unspecified", max_length=200)


def open_ledger(settings: HubSettings, registry: RegistryService) -> HubLedger:
    """The ledger on the hub's database, signing with the hub's log key."""
    from qiao.ledger.store import LedgerStore

    engine = registry.engine
    store = LedgerStore(engine, registry.keys.log_signer, registry.keys.log_signer.name)
    sessions = session_factory(engine)
    exchanges = ExchangeLedger(sessions, store, settings.instance)
    return HubLedger(
        store=store,
        origin=registry.keys.log_signer.name,
        log_key=registry.keys.log_signer.verifier().to_text(),
        exchanges=exchanges,
        cosigning=Cosigning(sessions, store, quorum=settings.ledger_quorum),
        interval=settings.ledger_interval_seconds,
        # `qiao ledger verify` also checks what the hub keeps beside the log against it: the
        # exchange index that receipts read, and the stored agreements.
        audits=[
            lambda: exchanges.audit_index(store.entries()),
            lambda: audit_agreements(sessions, store.entries()),
        ],
    )


def create_app(settings: HubSettings, registry: RegistryService | None = None) -> FastAPI:
    registry = registry or open_registry(settings)
    ledger = open_ledger(settings, registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ledger.start()
        yield
        ledger.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="Qiao hub",
        version=__version__,
        description="Control plane of the Qiao data exchange: registry, trust and the signed "
        "global configuration. Errors are RFC 9457 problem+json.",
    )
    app.state.registry = registry
    app.state.ledger = ledger
    _install_problem_handlers(app)
    hub_openapi.install(app)  # every error declared as the problem+json it is
    auth.install(app, registry)
    identity_api.install(app, registry, settings)
    catalog_api.install(app, registry, settings)
    agreements_api.install(app, registry, settings)
    emergency_api.install(app, registry, settings)
    hub_api.install(app, registry, settings)
    console.install(app, registry, settings)  # the web console, /console/ (docs/console.md)
    _flag_emergency_accesses(ledger, registry)
    from qiao.ledger.views import ledger_router

    # The cosigned checkpoint, receipts and entries first: the tile router's /checkpoint is
    # the log's own signature only.
    app.include_router(ledger_api(ledger), prefix="/ledger")
    app.include_router(ledger_router(ledger.store), prefix="/ledger")
    app.include_router(submissions_api(ledger))

    # Who may do what (docs/identity.md, "Roles"): the registry's structure is the platform
    # administrator's; an organization's own apps and nodes are its
    # administrators', security officers' and stewards'; anyone signed in may read the list
    # of resources, which every department needs to find its partners.
    op: list[Any] = [Depends(require(Role.PLATFORM_ADMIN))]
    anyone: list[Any] = [Depends(require(*Role))]
    administrators: list[Any] = [
        Depends(require(Role.ORG_ADMIN, Role.SECURITY_OFFICER, Role.AUDITOR))
    ]

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "serial": registry.serial()}

    watcher = ConfigurationWatcher(registry, settings.configuration_poll_seconds)
    app.state.configuration_watcher = watcher

    @app.get(
        "/api/v1/global-configuration",
        tags=["trust"],
        openapi_extra={
            "parameters": [
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Seconds to hold the answer while the serial is the one "
                    "sent in If-None-Match (long polling)",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 55, "default": 0},
                },
                *(
                    {
                        "name": h,
                        "in": "header",
                        "required": False,
                        "description": "An enrolled node's signature on the fetch; without "
                        "a valid one the answer is the public form, without agreements and "
                        "emergencies",
                        "schema": {"type": "string"},
                    }
                    for h in NODE_FETCH_HEADERS
                ),
            ]
        },
    )
    async def global_configuration(request: Request) -> Response:
        """The signed global configuration every node fetches (cacheable by serial).

        Organizations, nodes, CA certificates, revocations, the ledger key and resources are
        public. Agreements and emergencies go only to enrolled nodes, which sign the fetch
        with their node key (``X-Qiao-Node-*`` headers); everyone else gets the public form,
        signed separately and marked ``"redacted": true``. Both forms share the serial, so
        ETags and long polls work the same for both.

        Long polling: with ``?wait=N`` (0-55 s) and ``If-None-Match: "<serial>"`` the hub
        holds the answer until the serial changes (200) or N seconds pass (304), so a change
        reaches every node within a second without nodes polling hard. Waiting requests sleep
        on the hub's one ``ConfigurationWatcher``: they hold no worker thread and cost no
        database query of their own."""
        arrived = time.time()  # the node's signed time is checked against this
        raw = request.query_params.get("wait", "0")
        try:
            wait = int(raw)
        except ValueError:
            wait = -1
        if not 0 <= wait <= 55:
            # 55 s stays under the 60 s idle timeouts of common proxies and load balancers.
            raise Problem(problems.VALIDATION, f"wait: a whole number of seconds 0-55, not {raw!r}")
        held = request.headers.get("if-none-match")
        if wait and held is not None:
            serial = await watcher.serial_after(held, wait, request.is_disconnected)
        else:
            serial = await run_in_threadpool(registry.serial)
        # Vary: the answer depends on who signed the request; a shared cache must not hand
        # one node's full configuration to anyone else (RFC 9110 §12.5.5, RFC 9111 §5.2.2.7).
        vary = {"Vary": ", ".join(NODE_FETCH_HEADERS)}
        if held == f'"{serial}"':
            return Response(status_code=304, headers={"ETag": held, **vary})
        # Checked after any wait, so a certificate revoked meanwhile no longer counts.
        reader = await run_in_threadpool(
            lambda: registry.configuration_reader(request.headers, now=arrived)
        )
        signed = await run_in_threadpool(
            lambda: registry.signed_global_conf(redacted=not reader.enrolled)
        )
        etag = f'"{signed["document"]["serial"]}"'
        if held == etag:
            return Response(status_code=304, headers={"ETag": etag, **vary})
        headers = {
            "ETag": etag,
            "Cache-Control": "private, no-cache" if reader.enrolled else "no-cache",
            **vary,
        }
        if reader.refused:
            log.warning("configuration fetch as node, answered in public form: %s", reader.refused)
            headers[REFUSED_HEADER] = reader.refused
        return JSONResponse(signed, headers=headers)

    @app.post("/api/v1/enroll", tags=["trust"], status_code=201)
    def enroll(body: EnrollIn) -> dict[str, Any]:
        """A node exchanges a one-time enrollment token and a CSR for its certificate."""
        current_actor.set(f"enrollment:{body.node_name}")
        e = registry.enroll(
            body.token,
            body.csr,
            body.node_name,
            body.address,
            witness_key=body.witness_key,
            witness_url=body.witness_url,
            events_key=body.events_key,
        )
        log.info("node %s of %s enrolled", e.node_name, e.org)
        return {
            "node_name": e.node_name,
            "org": e.org,
            "instance": e.instance,
            "certificate": e.certificate_pem,
            "ca_certificate": e.ca_pem,
            "configuration_key": e.configuration_key,
            "ledger_key": registry.keys.log_signer.verifier().to_text(),
        }

    @app.get("/api/v1/organizations", tags=["registry"], dependencies=administrators)
    def organizations() -> list[dict[str, Any]]:
        apps = registry.list_apps()
        return [
            {
                "code": o.code,
                "name": o.name,
                "name_en": o.name_en,
                "kind": o.kind,
                "apps": [a.code for a in apps if a.org_code == o.code],
            }
            for o in registry.list_organizations()
        ]

    @app.post("/api/v1/organizations", tags=["registry"], dependencies=op, status_code=201)
    def add_organization(body: OrganizationIn) -> dict[str, str]:
        org = registry.add_organization(body.code, body.name, name_en=body.name_en, kind=body.kind)
        return {"code": org.code, "name": org.name}

    @app.post("/api/v1/organizations/{org}/apps", tags=["registry"], status_code=201)
    def add_app(
        org: str, body: AppIn, who: Principal = Depends(require(Role.ORG_ADMIN))
    ) -> dict[str, str]:
        need(who, Role.ORG_ADMIN, org=org.upper())
        a = registry.add_app(org, body.code, body.name)
        return {"client": f"{registry.instance}/{a.org_code}/{a.code}"}

    @app.post(
        "/api/v1/organizations/{org}/enrollment-tokens",
        tags=["trust"],
        status_code=201,
    )
    def enrollment_token(
        org: str, who: Principal = Depends(require(Role.SECURITY_OFFICER))
    ) -> dict[str, str]:
        need(who, Role.SECURITY_OFFICER, org=org.upper())
        token, expires = registry.create_enrollment_token(org)
        return {"token": token, "expires_at": expires.isoformat()}

    @app.get("/api/v1/nodes", tags=["registry"])
    def nodes(
        who: Principal = Depends(require(Role.SECURITY_OFFICER, Role.AUDITOR)),
    ) -> list[dict[str, Any]]:
        """Nodes and their certificates: all for the platform administrator, the caller's
        own organization's for its security officers and auditors."""
        return [
            {
                "name": n.name,
                "org": n.org_code,
                "address": n.address,
                "certificates": [
                    {
                        "serial": c.serial,
                        "fingerprint": c.fingerprint,
                        "not_after": c.not_after.isoformat(),
                        "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
                    }
                    for c in certs
                ],
            }
            for n, certs in registry.list_nodes()
            if who.is_platform_admin or n.org_code == who.org
        ]

    @app.post("/api/v1/certificates/{serial}/revoke", tags=["trust"])
    def revoke(
        serial: str, body: RevokeIn, who: Principal = Depends(require(Role.SECURITY_OFFICER))
    ) -> dict[str, list[str]]:
        """Revoke a node certificate (by serial, or all of a node's by its name): the
        security officer of the node's organization, or the platform administrator."""
        owner = next(
            (
                n.org_code
                for n, certs in registry.list_nodes()
                if n.name == serial or any(c.serial == serial for c in certs)
            ),
            None,
        )
        if owner is None and not who.is_platform_admin:
            raise Problem(problems.NOT_FOUND, f"no certificate or node {serial}")
        if owner is not None:
            need(who, Role.SECURITY_OFFICER, org=owner)
        return {"revoked": registry.revoke(serial, body.reason)}

    @app.get("/api/v1/resources", tags=["registry"], dependencies=anyone)
    def resources() -> list[dict[str, Any]]:
        return [
            {"org": r.org_code, "code": r.code, "name": r.name} for r in registry.list_resources()
        ]

    stewards = Depends(require(Role.DATA_STEWARD, Role.ORG_ADMIN))

    @app.post("/api/v1/resources", tags=["registry"], status_code=201)
    def add_resource(body: ResourceIn, who: Principal = stewards) -> dict[str, str]:
        need(who, Role.DATA_STEWARD, Role.ORG_ADMIN, org=body.org.upper())
        r = registry.add_resource(body.org, body.code, body.name)
        return {"org": r.org_code, "code": r.code}

    return app


class ConfigurationWatcher:
    """One reader of the configuration serial per hub process, however many nodes wait.

    While anyone long-polls, a single task reads the serial from the database every
    ``interval`` seconds and wakes the waiters after each read; each waiter then checks the
    serial against its own ETag. Reading the database rather than listening for this
    process's own changes keeps it right with several hub replicas on one database. The task
    starts with the first waiter and ends when the last one leaves."""

    def __init__(self, registry: RegistryService, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._watch: _Watch | None = None

    def _current(self) -> _Watch:
        loop = asyncio.get_running_loop()
        # Events and tasks belong to one event loop. A hub process serves on one, but a test
        # client may run each request on its own: start afresh for a new loop.
        if self._watch is None or self._watch.loop is not loop:
            self._watch = _Watch(loop)
        return self._watch

    async def serial_after(
        self, held: str, wait: float, gone: Callable[[], Awaitable[bool]]
    ) -> int | None:
        """Wait up to ``wait`` seconds while the serial is the one in the ETag ``held``, or
        until ``gone()`` says the caller hung up; returns the serial last read (None if none
        could be read)."""
        w = self._current()
        try:
            holds = int(held.strip('"'))
        except ValueError:
            return w.serial  # not one of our ETags: nothing to wait for
        # Serials only grow: an ETag older than the last read is answered at once. A newer
        # one means the last read is out of date (the watcher was idle): wait for the next.
        if w.serial is not None and holds < w.serial:
            return w.serial
        deadline = w.loop.time() + wait
        w.waiting += 1
        if w.task is None:
            w.task = w.loop.create_task(self._run(w))
        try:
            while True:
                read = w.read
                left = deadline - w.loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(read.wait(), left)
                except TimeoutError:
                    break
                if w.serial != holds or await gone():
                    break
        finally:
            w.waiting -= 1
        return w.serial

    async def _run(self, w: _Watch) -> None:
        failing = False
        try:
            while w.waiting:
                try:
                    w.serial = await run_in_threadpool(self._registry.serial)
                    failing = False
                except Exception:  # the database may come back; waiters time out meanwhile
                    if not failing:
                        log.exception("reading the configuration serial failed")
                    failing = True
                else:
                    woken, w.read = w.read, asyncio.Event()
                    woken.set()
                await asyncio.sleep(self._interval)
        finally:
            # Nobody waits: what was read goes out of date from now on.
            w.task, w.serial = None, None


@dataclass
class _Watch:
    """The watcher's state on one event loop."""

    loop: asyncio.AbstractEventLoop
    read: asyncio.Event = field(default_factory=asyncio.Event)  # set after each read
    serial: int | None = None
    waiting: int = 0
    task: asyncio.Task[None] | None = None


def _flag_emergency_accesses(ledger: HubLedger, registry: RegistryService) -> None:
    """Every exchange a node reports as admitted under an emergency goes on that emergency's
    review list (docs/agreements.md, "Emergency mode")."""
    from datetime import datetime

    from qiao.agreements.emergencies import EmergencyService

    emergencies = EmergencyService(registry)

    def note(node: str, _org: str, record: dict[str, Any], index: int) -> None:
        # The entries are already appended: a record naming an unknown emergency must not fail
        # the submission (the node would resend the same batch for ever). It stays on the
        # ledger, flagged there by its "emergency" field; the operator sees the error here.
        try:
            emergencies.note_access(
                str(record["emergency"]),
                exchange_id=str(record["exchange_id"]),
                node=node,
                ledger_index=index,
                provider_org=str(record["provider_org"]),
                resource=str(record["resource"]),
                client=str(record["client"]),
                at=datetime.fromisoformat(str(record["started_at"])),
            )
        except (Problem, ValueError) as exc:
            log.error(
                "ledger entry %d (node %s) names emergency %r, which cannot be flagged: %s",
                index,
                node,
                record.get("emergency"),
                exc,
            )

    ledger.exchanges.on_emergency_access = note


def _install_problem_handlers(app: FastAPI) -> None:
    def handler(
        status_map: Callable[[Request, Any], Problem],
    ) -> Callable[[Request, Any], Any]:
        async def handle(request: Request, exc: Any) -> Response:
            return problem_response(status_map(request, exc), request.url.path)

        return handle

    def from_problem(_r: Request, exc: Problem) -> Problem:
        return exc

    def from_validation(_r: Request, exc: RequestValidationError) -> Problem:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                "rule": e["type"],
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return Problem(problems.VALIDATION, detail, {"errors": errors})

    def from_http(_r: Request, exc: StarletteHTTPException) -> Problem:
        kind = {
            404: problems.NOT_FOUND,
            401: problems.UNAUTHORIZED,
            403: problems.FORBIDDEN,
            405: problems.METHOD_NOT_ALLOWED,
        }.get(exc.status_code, problems.VALIDATION)
        return Problem(kind, str(exc.detail))

    def from_error(r: Request, exc: Exception) -> Problem:
        log.exception("unhandled error on %s", r.url.path)
        return Problem(problems.INTERNAL, "the hub failed; the operator can see the log")

    app.add_exception_handler(Problem, handler(from_problem))
    app.add_exception_handler(RequestValidationError, handler(from_validation))
    app.add_exception_handler(StarletteHTTPException, handler(from_http))
    app.add_exception_handler(Exception, handler(from_error))

    def client_gone(_r: Request, _exc: Exception) -> Problem:
        # The client went away mid-body, or the listener cut a body off (qiao.hub.limits,
        # which has answered already): no failure of the hub's to log as one.
        return Problem(problems.INCOMPLETE_BODY)

    app.add_exception_handler(ClientDisconnect, handler(client_gone))
