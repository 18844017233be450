"""The catalog's hub API, under ``/api/v1/catalog`` (docs/catalog.md).

Anyone authenticated reads and searches; data stewards and organization administrators
publish and deprecate their own organization's entries; platform standards are the platform
administrator's. Errors are RFC 9457 problem+json with the catalog's own types
(``unknown-data-element``, ``unknown-code-list``, ``legal-basis-missing``,
``catalog-entry-in-use``, ``catalog-import-failed``) besides the hub's common ones.
"""

from __future__ import annotations

import importlib
import json
from datetime import datetime
from types import ModuleType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from qiao import problems
from qiao.catalog.search import MAX_LIMIT, MAX_QUERY, MAX_WINDOW, SearchQuery
from qiao.catalog.service import (
    CatalogService,
    ImportSummary,
    PublishedResource,
    parse_document,
    parse_spec,
)
from qiao.catalog.spec import (
    Catalog,
    Classification,
    CodeList,
    DataElement,
    ResourceSpec,
    ResourceStatus,
    SharingMethod,
    SharingType,
)
from qiao.config import HubSettings
from qiao.hub.auth import caller, require
from qiao.identity.roles import Principal, Role
from qiao.problems import PROBLEM_CONTENT_TYPE, Problem
from qiao.registry.services import RegistryService

TAGS: list[str | Any] = ["catalog"]
Who = Annotated[Principal, Depends(caller)]
# Writers are checked for the role before the body is read, so a caller who may not publish
# gets 403 whatever it sent; the providing organization is checked once the body is parsed.
Steward = Annotated[Principal, Depends(require(Role.DATA_STEWARD, Role.ORG_ADMIN))]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
JSON_LD = "application/ld+json"
MAX_WORKBOOK = 20 * 1024 * 1024  # bytes; a full city catalog is a few megabytes
MAX_BODY = 1024 * 1024


class SearchHitOut(BaseModel):
    org: str
    code: str
    name: str
    provider_name: str
    sharing_type: SharingType
    classification: Classification
    sharing_methods: list[SharingMethod]
    status: ResourceStatus
    version: int


class SearchPageOut(BaseModel):
    total: int = Field(description="How many resources match (counted up to 1,000)")
    total_exact: bool = Field(description="False when more than `total` resources match")
    limit: int
    offset: int
    hits: list[SearchHitOut]


class ResourceOut(BaseModel):
    spec: ResourceSpec
    version: int = Field(description="The version shown")
    latest_version: int
    status: ResourceStatus
    sha256: str = Field(description="SHA-256 of the version's canonical JSON (RFC 8785)")
    published_at: datetime
    published_by: str


class VersionOut(BaseModel):
    version: int
    sha256: str
    published_at: datetime
    published_by: str


class DeprecateIn(BaseModel):
    reason: str = Field("", max_length=500)


class DataElementOut(BaseModel):
    element: DataElement
    owner: str | None = Field(description="Owning organization; null for a platform standard")


class CodeListOut(BaseModel):
    code_list: CodeList
    owner: str | None


class PublishedOut(BaseModel):
    changed: bool


class ImportOut(BaseModel):
    code_lists: int = Field(description="Code lists created or changed")
    data_elements: int = Field(description="Data elements created or changed")
    resources: int = Field(description="Resources in the workbook")
    new_versions: int = Field(description="Resource versions the import published")


def _resource_out(p: PublishedResource) -> ResourceOut:
    return ResourceOut(
        spec=p.spec,
        version=p.version,
        latest_version=p.latest_version,
        status=p.status,
        sha256=p.sha256,
        published_at=p.published_at,
        published_by=p.published_by,
    )


def _schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    # Inline JSON Schema 2020-12 with its own $id, so its "#/$defs/..." references resolve
    # inside it (OpenAPI 3.1 schemas are JSON Schema 2020-12).
    schema = model.model_json_schema()
    schema["$id"] = f"urn:qiao:catalog:{name}"
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Problem(problems.VALIDATION, f"the document is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Problem(problems.VALIDATION, f"the body is not JSON: {exc}") from None


def _optional_module(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Problem(problems.INTERNAL, f"{what} is not available in this build") from exc


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": "RFC 9457 problem details", "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status in (401, 403, 404, 409, 422)
}


def install(app: Any, registry: RegistryService, settings: HubSettings) -> None:
    """Add the catalog's routes to the hub."""
    catalog = CatalogService(registry)
    app.state.catalog = catalog
    router = APIRouter(prefix="/api/v1/catalog", tags=TAGS, responses=PROBLEMS)

    # --- search and read -----------------------------------------------------------------
    @router.get("/resources", summary="Search the catalog", response_model=SearchPageOut)
    def search(
        _who: Who,
        q: Annotated[
            str, Query(max_length=MAX_QUERY, description="Text: any substring, 1+ characters")
        ] = "",
        provider: Annotated[str | None, Query(description="Provider USCC")] = None,
        sharing_type: SharingType | None = None,
        sharing_method: SharingMethod | None = None,
        classification: Classification | None = None,
        status: ResourceStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
        offset: Annotated[int, Query(ge=0, le=MAX_WINDOW - 1)] = 0,
    ) -> dict[str, Any]:
        """Full-text search over names, abstracts, keywords, provider names, item and data
        element names (Chinese substrings), with filters; ordered by provider and code."""
        page = catalog.search(
            SearchQuery(
                q,
                provider=provider,
                sharing_type=sharing_type,
                sharing_method=sharing_method,
                classification=classification,
                status=status,
                limit=limit,
                offset=offset,
            )
        )
        return page.as_dict()

    @router.get("/resources/{org}/{code}", summary="Show a resource", response_model=ResourceOut)
    def show(
        org: str,
        code: str,
        _who: Who,
        version: Annotated[
            # At most the largest integer PostgreSQL and SQLite both store (a larger one
            # made SQLite's driver raise: a 500 found by reliability/test_fuzz_hub.py).
            int | None, Query(ge=1, le=2**31 - 1, description="A version; else the latest")
        ] = None,
    ) -> ResourceOut:
        """A resource's specification: the latest version, or ``?version=n``."""
        return _resource_out(catalog.get(org, code, version))

    @router.get(
        "/resources/{org}/{code}/versions",
        summary="List a resource's versions",
        response_model=list[VersionOut],
    )
    def versions(org: str, code: str, _who: Who) -> list[VersionOut]:
        return [VersionOut(**v.__dict__) for v in catalog.versions(org, code)]

    # --- publish -------------------------------------------------------------------------
    async def _publish(request: Request, who: Principal, path: tuple[str, str] | None) -> Response:
        spec = parse_spec(await _json_body(request))
        if path is not None and (spec.provider.upper(), spec.code) != (path[0].upper(), path[1]):
            raise Problem(
                problems.VALIDATION,
                f"the document is {spec.provider}/{spec.code}, the path {path[0]}/{path[1]}",
            )
        published = await run_in_threadpool(catalog.publish, who, spec)
        return JSONResponse(
            _resource_out(published).model_dump(mode="json"),
            status_code=201 if published.created else 200,
        )

    @router.post(
        "/resources",
        summary="Publish a resource (new, or a new version)",
        response_model=ResourceOut,
        status_code=201,
        openapi_extra=_schema(ResourceSpec, "resource-spec"),
    )
    async def publish(request: Request, who: Steward) -> Response:
        """Publish a resource specification. 201 with version n+1 when it changed, 200 with
        the current version when it is identical. Needs data-steward or org-admin of the
        provider."""
        return await _publish(request, who, None)

    @router.put(
        "/resources/{org}/{code}",
        summary="Publish a resource at its path",
        response_model=ResourceOut,
        openapi_extra=_schema(ResourceSpec, "resource-spec"),
    )
    async def put_resource(org: str, code: str, request: Request, who: Steward) -> Response:
        """Like POST, with the provider and code also in the path (they must agree)."""
        return await _publish(request, who, (org, code))

    @router.post(
        "/resources/{org}/{code}/deprecate",
        summary="Deprecate a resource",
        response_model=ResourceOut,
    )
    def deprecate(org: str, code: str, body: DeprecateIn, who: Steward) -> ResourceOut:
        """Mark a resource deprecated (废止); its versions stay readable."""
        return _resource_out(catalog.deprecate(who, org, code, body.reason))

    # --- data elements and code lists ----------------------------------------------------
    @router.get("/data-elements", summary="List data elements", response_model=list[DataElementOut])
    def elements(
        _who: Who, owner: Annotated[str | None, Query(description="Owner USCC")] = None
    ) -> list[DataElementOut]:
        return [DataElementOut(element=e, owner=o) for e, o in catalog.list_elements(owner)]

    @router.get(
        "/data-elements/{identifier:path}",
        summary="Show a data element",
        response_model=DataElementOut,
    )
    def element(identifier: str, _who: Who) -> DataElementOut:
        e, o = catalog.get_element(identifier)
        return DataElementOut(element=e, owner=o)

    @router.post(
        "/data-elements",
        summary="Publish a data element",
        response_model=PublishedOut,
        openapi_extra=_schema(DataElement, "data-element"),
    )
    async def publish_element(
        request: Request,
        who: Steward,
        owner: Annotated[
            str | None, Query(description="Owning organization; omit for a platform standard")
        ] = None,
    ) -> PublishedOut:
        el = parse_document(DataElement, await _json_body(request))
        changed = await run_in_threadpool(lambda: catalog.publish_element(who, el, owner=owner))
        return PublishedOut(changed=changed)

    @router.get("/code-lists", summary="List code lists", response_model=list[CodeListOut])
    def code_lists(
        _who: Who, owner: Annotated[str | None, Query(description="Owner USCC")] = None
    ) -> list[CodeListOut]:
        return [CodeListOut(code_list=c, owner=o) for c, o in catalog.list_code_lists(owner)]

    @router.get(
        "/code-lists/{identifier:path}", summary="Show a code list", response_model=CodeListOut
    )
    def code_list(identifier: str, _who: Who) -> CodeListOut:
        c, o = catalog.get_code_list(identifier)
        return CodeListOut(code_list=c, owner=o)

    @router.post(
        "/code-lists",
        summary="Publish a code list",
        response_model=PublishedOut,
        openapi_extra=_schema(CodeList, "code-list"),
    )
    async def publish_code_list(
        request: Request,
        who: Steward,
        owner: Annotated[
            str | None, Query(description="Owning organization; omit for a platform standard")
        ] = None,
    ) -> PublishedOut:
        cl = parse_document(CodeList, await _json_body(request))
        changed = await run_in_threadpool(lambda: catalog.publish_code_list(who, cl, owner=owner))
        return PublishedOut(changed=changed)

    # --- import and export ---------------------------------------------------------------
    @router.post("/import", summary="Import a catalog workbook (.xlsx)", response_model=ImportOut)
    async def import_workbook(
        who: Steward,
        file: Annotated[UploadFile, File(description="The catalog template (.xlsx)")],
        owner: Annotated[
            str | None,
            Query(description="Owner of the workbook's data elements and code lists"),
        ] = None,
    ) -> ImportOut:
        """Import every sheet in one transaction. Any row error: 422
        ``catalog-import-failed`` listing every error, and nothing is imported."""
        data = await file.read(MAX_WORKBOOK + 1)
        if len(data) > MAX_WORKBOOK:
            raise Problem(problems.VALIDATION, f"the workbook is larger than {MAX_WORKBOOK} bytes")
        if owner is None and not who.is_platform_admin:
            owner = who.org
        summary = await run_in_threadpool(import_bytes, catalog, who, data, owner)
        return ImportOut(**summary.__dict__)

    @router.get(
        "/export",
        summary="Export the catalog (.xlsx or DCAT JSON-LD)",
        responses={
            200: {
                "content": {XLSX: {}, JSON_LD: {}},
                "description": "The workbook, or a DCAT-AP catalog as JSON-LD",
            }
        },
    )
    def export(
        _who: Who,
        format: Annotated[str, Query(pattern="^(xlsx|dcat)$")] = "xlsx",
    ) -> Response:
        exported = catalog.export_catalog()
        if format == "dcat":
            dcat = _optional_module("qiao.catalog.dcat", "the DCAT export")
            doc = dcat.to_dcat(
                exported, base_url=settings.public_url, org_names=catalog.organization_names()
            )
            return Response(json.dumps(doc, ensure_ascii=False), media_type=JSON_LD)
        excel = _optional_module("qiao.catalog.excel", "the Excel export")
        return Response(
            excel.write_workbook(exported),
            media_type=XLSX,
            headers={"Content-Disposition": 'attachment; filename="catalog.xlsx"'},
        )

    app.include_router(router)


def import_bytes(
    catalog: CatalogService, who: Principal, data: bytes, owner: str | None
) -> ImportSummary:
    """Read a workbook with the template reader and import it all or nothing; row errors
    become one ``catalog-import-failed`` problem listing each (sheet, row, column, problem)."""
    excel = _optional_module("qiao.catalog.excel", "the Excel import")
    known_elements = {e.identifier for e, _ in catalog.list_elements()}
    known_lists = {c.identifier for c, _ in catalog.list_code_lists()}
    try:
        bundle: Catalog = excel.read_workbook(
            data, known_elements=known_elements, known_code_lists=known_lists
        )
    except excel.WorkbookErrors as exc:
        errors = [
            {"sheet": e.sheet, "row": e.row, "column": e.column, "problem": e.problem}
            for e in exc.errors
        ]
        raise Problem(
            problems.CATALOG_IMPORT_FAILED,
            f"{len(errors)} error(s) in the workbook; nothing was imported",
            {"errors": errors},
        ) from None
    return catalog.import_catalog(who, bundle, owner=owner)
