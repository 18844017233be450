"""The catalog service: publish, version, deprecate, import, export and search catalog entries.

Rules (docs/catalog.md):

* A published resource version is immutable. Publishing a changed specification makes
  version n+1; publishing an identical one changes nothing (it is idempotent). Each version
  is stored as RFC 8785 canonical JSON with its SHA-256, which agreements cite.
* Data elements and code lists are replaced in place until a published resource version
  binds them; from then on a changed definition is refused (409 ``catalog-entry-in-use``)
  and the change needs a new identifier. Versioning them as well would let a resource
  version's meaning drift underneath an agreement that cites it.
* Every change is an administrative event (ledgered) and bumps the global configuration
  serial, like the registry's own changes, in the same transaction.

Who may do what: a data steward or organization administrator of the providing
organization publishes and deprecates its resources and its own data elements and code
lists; platform standards (no owner) are the platform administrator's; anyone
authenticated reads and searches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from qiao import problems
from qiao.canonical import canonical_json, sha256_hex
from qiao.catalog import search as search_mod
from qiao.catalog.models import (
    CatalogCode,
    CatalogCodeList,
    CatalogDataElement,
    CatalogElementUse,
    CatalogResource,
    CatalogResourceVersion,
)
from qiao.catalog.spec import Catalog, CodeList, DataElement, ResourceSpec, ResourceStatus
from qiao.db import utcnow
from qiao.hub.auth import need
from qiao.identity.roles import Principal, Role
from qiao.problems import Problem
from qiao.registry.models import Organization, Resource
from qiao.registry.services import RegistryService, current_actor

STEWARDS = (Role.DATA_STEWARD, Role.ORG_ADMIN)


@dataclass(frozen=True)
class PublishedResource:
    """One version of a resource as published: its spec, where it stands, what cites it."""

    spec: ResourceSpec
    version: int
    latest_version: int
    status: ResourceStatus
    sha256: str
    document: bytes  # the canonical JSON the hash is over
    published_at: datetime
    published_by: str
    created: bool = False  # this call made the version

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "version": self.version,
            "latest_version": self.latest_version,
            "status": self.status.value,
            "sha256": self.sha256,
            "published_at": self.published_at.isoformat(),
            "published_by": self.published_by,
        }


@dataclass(frozen=True)
class VersionInfo:
    version: int
    sha256: str
    published_at: datetime
    published_by: str


@dataclass(frozen=True)
class ImportSummary:
    code_lists: int
    data_elements: int
    resources: int
    new_versions: int


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "(document)",
            "rule": e["type"],
            "message": e["msg"].removeprefix("Value error, "),
        }
        for e in exc.errors()
    ]


def parse_spec(data: Any) -> ResourceSpec:
    """A ResourceSpec from a JSON document; the legal-basis rule gets its own problem type."""
    try:
        return ResourceSpec.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        kind = problems.VALIDATION
        if any("legal basis" in e["message"] for e in errors):
            kind = problems.LEGAL_BASIS_MISSING
        raise Problem(kind, detail, {"errors": errors}) from None


def parse_document(model: type[DataElement] | type[CodeList], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem(problems.VALIDATION, detail, {"errors": errors}) from None


def _version_document(spec: ResourceSpec, version: int) -> bytes:
    # Status is where a resource stands, not what it is: it stays out of the cited bytes.
    doc = spec.model_dump(mode="json", exclude={"status"})
    if doc.get("stream") is None:
        # Added with event streams: absent when unset, so the versions published before it
        # keep their bytes and their hashes.
        doc.pop("stream", None)
    doc["version"] = version
    return canonical_json(doc)


def _content(spec: ResourceSpec) -> bytes:
    return _version_document(spec, 0)


class CatalogService:
    def __init__(self, registry: RegistryService) -> None:
        self.registry = registry
        self._sessions = registry._sessions

    # --- code lists ----------------------------------------------------------------------
    def publish_code_list(
        self, who: Principal, code_list: CodeList, *, owner: str | None = None
    ) -> bool:
        """Create or replace a code list; True if anything changed."""
        with self._sessions.begin() as s:
            return self._put_code_list(s, who, code_list, owner)

    def _check_owner(self, s: Session, who: Principal, owner: str | None, what: str) -> None:
        if owner is None:
            if not who.is_platform_admin:
                raise Problem(
                    problems.FORBIDDEN,
                    f"{what} without an owning organization is a platform standard: "
                    "only the platform administrator publishes those",
                )
            return
        if s.get(Organization, owner) is None:
            raise Problem(problems.VALIDATION, f"no organization {owner}")
        need(who, *STEWARDS, org=owner)

    def _put_code_list(
        self,
        s: Session,
        who: Principal,
        cl: CodeList,
        owner: str | None,
        unchanged_ok: bool = False,
    ) -> bool:
        owner = owner.upper() if owner else None
        doc = canonical_json(cl.model_dump(mode="json"))
        digest = sha256_hex(doc)
        row = s.scalar(select(CatalogCodeList).where(CatalogCodeList.identifier == cl.identifier))
        if row is not None:
            if row.sha256 == digest and row.owner_org != owner and unchanged_ok:
                # A workbook exported with the platform's standards (or another
                # organization's elements) in it can be imported again as it is.
                return False
            self._check_owner(s, who, owner, f"code list {cl.identifier}")
            if row.sha256 == digest and row.owner_org == owner:
                return False
            if row.owner_org != owner:
                raise Problem(
                    problems.CONFLICT,
                    f"code list {cl.identifier} belongs to {row.owner_org or 'the platform'}",
                )
            used = s.scalar(
                select(
                    exists().where(
                        CatalogDataElement.code_list == cl.identifier,
                        CatalogElementUse.element == CatalogDataElement.identifier,
                    )
                )
            )
            if used:
                raise Problem(
                    problems.CATALOG_ENTRY_IN_USE,
                    f"code list {cl.identifier} is used by published resources; "
                    "publish the changed list under a new identifier",
                )
            row.name, row.document, row.sha256, row.updated_at = (
                cl.name,
                doc.decode(),
                digest,
                utcnow(),
            )
            s.execute(delete(CatalogCode).where(CatalogCode.code_list_id == row.id))
            action = "catalog.code-list.update"
        else:
            self._check_owner(s, who, owner, f"code list {cl.identifier}")
            row = CatalogCodeList(
                identifier=cl.identifier,
                owner_org=owner,
                name=cl.name,
                document=doc.decode(),
                sha256=digest,
            )
            s.add(row)
            s.flush()
            action = "catalog.code-list.publish"
        s.add_all(
            CatalogCode(
                code_list_id=row.id, position=i, value=c.value, label=c.label, label_en=c.label_en
            )
            for i, c in enumerate(cl.codes)
        )
        self.registry._bump(s, action, code_list=cl.identifier, owner=owner, sha256=digest)
        return True

    def get_code_list(self, identifier: str) -> tuple[CodeList, str | None]:
        with self._sessions() as s:
            row = s.scalar(select(CatalogCodeList).where(CatalogCodeList.identifier == identifier))
            if row is None:
                raise Problem(problems.NOT_FOUND, f"no code list {identifier}")
            return CodeList.model_validate_json(row.document), row.owner_org

    def list_code_lists(self, owner: str | None = None) -> list[tuple[CodeList, str | None]]:
        with self._sessions() as s:
            q = select(CatalogCodeList).order_by(CatalogCodeList.identifier)
            if owner:
                q = q.where(CatalogCodeList.owner_org == owner.upper())
            return [(CodeList.model_validate_json(r.document), r.owner_org) for r in s.scalars(q)]

    # --- data elements -------------------------------------------------------------------
    def publish_element(
        self, who: Principal, element: DataElement, *, owner: str | None = None
    ) -> bool:
        with self._sessions.begin() as s:
            return self._put_element(s, who, element, owner)

    def _put_element(
        self,
        s: Session,
        who: Principal,
        el: DataElement,
        owner: str | None,
        unchanged_ok: bool = False,
    ) -> bool:
        owner = owner.upper() if owner else None
        if el.code_list is not None and (
            s.scalar(select(CatalogCodeList.id).where(CatalogCodeList.identifier == el.code_list))
            is None
        ):
            raise Problem(
                problems.UNKNOWN_CODE_LIST,
                f"data element {el.identifier} names code list {el.code_list}, "
                "which is not in the catalog",
                {"data_element": el.identifier, "code_list": el.code_list},
            )
        doc = canonical_json(el.model_dump(mode="json"))
        digest = sha256_hex(doc)
        row = s.scalar(
            select(CatalogDataElement).where(CatalogDataElement.identifier == el.identifier)
        )
        if row is not None:
            if row.sha256 == digest and row.owner_org != owner and unchanged_ok:
                # A workbook exported with the platform's standards (or another
                # organization's elements) in it can be imported again as it is.
                return False
            self._check_owner(s, who, owner, f"data element {el.identifier}")
            if row.sha256 == digest and row.owner_org == owner:
                return False
            if row.owner_org != owner:
                raise Problem(
                    problems.CONFLICT,
                    f"data element {el.identifier} belongs to {row.owner_org or 'the platform'}",
                )
            if s.scalar(select(exists().where(CatalogElementUse.element == el.identifier))):
                raise Problem(
                    problems.CATALOG_ENTRY_IN_USE,
                    f"data element {el.identifier} is bound by published resources; "
                    "publish the changed element under a new identifier",
                )
            row.name, row.code_list = el.name, el.code_list
            row.document, row.sha256, row.updated_at = doc.decode(), digest, utcnow()
            action = "catalog.data-element.update"
        else:
            self._check_owner(s, who, owner, f"data element {el.identifier}")
            s.add(
                CatalogDataElement(
                    identifier=el.identifier,
                    owner_org=owner,
                    name=el.name,
                    code_list=el.code_list,
                    document=doc.decode(),
                    sha256=digest,
                )
            )
            s.flush()
            action = "catalog.data-element.publish"
        self.registry._bump(s, action, data_element=el.identifier, owner=owner, sha256=digest)
        return True

    def get_element(self, identifier: str) -> tuple[DataElement, str | None]:
        with self._sessions() as s:
            row = s.scalar(
                select(CatalogDataElement).where(CatalogDataElement.identifier == identifier)
            )
            if row is None:
                raise Problem(problems.NOT_FOUND, f"no data element {identifier}")
            return DataElement.model_validate_json(row.document), row.owner_org

    def list_elements(self, owner: str | None = None) -> list[tuple[DataElement, str | None]]:
        with self._sessions() as s:
            q = select(CatalogDataElement).order_by(CatalogDataElement.identifier)
            if owner:
                q = q.where(CatalogDataElement.owner_org == owner.upper())
            return [
                (DataElement.model_validate_json(r.document), r.owner_org) for r in s.scalars(q)
            ]

    # --- resources -----------------------------------------------------------------------
    def publish(self, who: Principal, spec: ResourceSpec) -> PublishedResource:
        """Publish a resource: its first version, or version n+1 if the spec changed."""
        with self._sessions.begin() as s:
            return self._publish(s, who, spec)

    def _publish(self, s: Session, who: Principal, spec: ResourceSpec) -> PublishedResource:
        provider = spec.provider.upper()
        org = s.get(Organization, provider)
        if org is None:
            raise Problem(
                problems.VALIDATION,
                f"the provider {provider} is not a registered organization",
                {"errors": [{"field": "provider", "rule": "unknown", "message": provider}]},
            )
        need(who, *STEWARDS, org=provider)
        spec = spec.model_copy(update={"provider": provider, "status": ResourceStatus.PUBLISHED})
        bound = [*spec.items, *spec.parameters]
        wanted = sorted({i.element for i in bound})
        elements = {
            r.identifier: r.name
            for r in s.scalars(
                select(CatalogDataElement).where(CatalogDataElement.identifier.in_(wanted))
            )
        }
        unknown = [e for e in wanted if e not in elements]
        if unknown:
            raise Problem(
                problems.UNKNOWN_DATA_ELEMENT,
                f"resource {spec.code} binds data elements not in the catalog: "
                + ", ".join(unknown),
                {"data_elements": unknown},
            )
        for rel in spec.related:
            rel_org, _, rel_code = rel.rpartition("/")
            rel_org = (rel_org or provider).upper()
            if (rel_org, rel_code) == (provider, spec.code):
                raise Problem(problems.VALIDATION, f"resource {spec.code} is related to itself")
            if (
                s.scalar(
                    select(CatalogResource.id).where(
                        CatalogResource.org_code == rel_org, CatalogResource.code == rel_code
                    )
                )
                is None
            ):
                raise Problem(
                    problems.VALIDATION,
                    f"related resource {rel} is not in the catalog",
                    {"errors": [{"field": "related", "rule": "unknown", "message": rel}]},
                )

        text = search_mod.search_text(
            name=spec.name,
            name_en=spec.name_en,
            abstract=spec.abstract,
            keywords=spec.keywords,
            provider_name=org.name,
            item_names=[i.name for i in bound],
            element_names=[elements[e] for e in wanted],
        )
        row = s.scalar(
            select(CatalogResource).where(
                CatalogResource.org_code == provider, CatalogResource.code == spec.code
            )
        )
        latest: CatalogResourceVersion | None = None
        if row is not None:
            latest = s.scalar(
                select(CatalogResourceVersion).where(
                    CatalogResourceVersion.catalog_resource_id == row.id,
                    CatalogResourceVersion.version == row.latest_version,
                )
            )
        if row is not None and latest is not None:
            old = ResourceSpec.model_validate_json(latest.document)
            if _content(old) == _content(spec):
                created = False
                if row.status != ResourceStatus.PUBLISHED.value:
                    row.status = ResourceStatus.PUBLISHED.value
                    self.registry._bump(
                        s, "catalog.resource.republish", org=provider, resource=spec.code
                    )
                    created = True
                return self._published(row, latest, created=created)

        version = (row.latest_version + 1) if row is not None else 1
        doc = _version_document(spec, version)
        digest = sha256_hex(doc)
        methods = "," + ",".join(m.value for m in spec.sharing_methods) + ","
        if row is None:
            reg = s.scalar(
                select(Resource).where(Resource.org_code == provider, Resource.code == spec.code)
            )
            if reg is None:
                reg = Resource(org_code=provider, code=spec.code, name=spec.name)
                s.add(reg)
                s.flush()
            else:
                reg.name = spec.name
            row = CatalogResource(resource_id=reg.id, org_code=provider, code=spec.code)
            s.add(row)
        else:
            reg = s.get(Resource, row.resource_id)
            if reg is not None:
                reg.name = spec.name
        row.name, row.provider_name = spec.name, org.name
        row.sharing_type, row.classification = spec.sharing_type.value, spec.classification.value
        row.sharing_methods, row.status = methods, ResourceStatus.PUBLISHED.value
        row.latest_version, row.search_text, row.updated_at = version, text, utcnow()
        row.short_grams = search_mod.short_grams(text)
        s.flush()
        ver = CatalogResourceVersion(
            catalog_resource_id=row.id,
            version=version,
            document=doc.decode(),
            sha256=digest,
            published_at=utcnow(),
            published_by=current_actor.get(),
        )
        s.add(ver)
        s.flush()
        s.add_all(CatalogElementUse(version_id=ver.id, element=e) for e in wanted)
        self.registry._bump(
            s,
            "catalog.resource.publish",
            org=provider,
            resource=spec.code,
            version=version,
            sha256=digest,
        )
        return self._published(row, ver, created=True)

    @staticmethod
    def _published(
        row: CatalogResource, ver: CatalogResourceVersion, *, created: bool = False
    ) -> PublishedResource:
        spec = ResourceSpec.model_validate_json(ver.document).model_copy(
            update={"status": ResourceStatus(row.status)}
        )
        return PublishedResource(
            spec=spec,
            version=ver.version,
            latest_version=row.latest_version,
            status=ResourceStatus(row.status),
            sha256=ver.sha256,
            document=ver.document.encode(),
            published_at=ver.published_at,
            published_by=ver.published_by,
            created=created,
        )

    def _row(self, s: Session, org: str, code: str) -> CatalogResource:
        row = s.scalar(
            select(CatalogResource).where(
                CatalogResource.org_code == org.upper(), CatalogResource.code == code
            )
        )
        if row is None:
            raise Problem(problems.NOT_FOUND, f"no catalogued resource {org}/{code}")
        return row

    def deprecate(self, who: Principal, org: str, code: str, reason: str = "") -> PublishedResource:
        """Mark a resource deprecated (废止): it stays readable, with every version."""
        with self._sessions.begin() as s:
            row = self._row(s, org, code)
            need(who, *STEWARDS, org=row.org_code)
            if row.status != ResourceStatus.DEPRECATED.value:
                row.status = ResourceStatus.DEPRECATED.value
                row.updated_at = utcnow()
                self.registry._bump(
                    s, "catalog.resource.deprecate", org=row.org_code, resource=code, reason=reason
                )
            ver = self._version_row(s, row, row.latest_version)
            return self._published(row, ver)

    @staticmethod
    def _version_row(s: Session, row: CatalogResource, version: int) -> CatalogResourceVersion:
        ver = s.scalar(
            select(CatalogResourceVersion).where(
                CatalogResourceVersion.catalog_resource_id == row.id,
                CatalogResourceVersion.version == version,
            )
        )
        if ver is None:
            raise Problem(problems.NOT_FOUND, f"{row.org_code}/{row.code} has no version {version}")
        return ver

    def get(self, org: str, code: str, version: int | None = None) -> PublishedResource:
        """The latest version of a resource, or the given one."""
        with self._sessions() as s:
            row = self._row(s, org, code)
            return self._published(row, self._version_row(s, row, version or row.latest_version))

    def versions(self, org: str, code: str) -> list[VersionInfo]:
        with self._sessions() as s:
            row = self._row(s, org, code)
            return [
                VersionInfo(v.version, v.sha256, v.published_at, v.published_by)
                for v in s.scalars(
                    select(CatalogResourceVersion)
                    .where(CatalogResourceVersion.catalog_resource_id == row.id)
                    .order_by(CatalogResourceVersion.version)
                )
            ]

    def find(self, code: str) -> list[str]:
        """The providers that publish a resource with this code."""
        with self._sessions() as s:
            return list(
                s.scalars(
                    select(CatalogResource.org_code)
                    .where(CatalogResource.code == code)
                    .order_by(CatalogResource.org_code)
                )
            )

    def search(self, query: search_mod.SearchQuery) -> search_mod.SearchPage:
        with self._sessions() as s:
            return search_mod.search(s, query)

    # --- bundles -------------------------------------------------------------------------
    def import_catalog(
        self, who: Principal, catalog: Catalog, *, owner: str | None = None
    ) -> ImportSummary:
        """Publish a whole bundle in one transaction: all of it, or (on any error) none.

        ``owner`` owns the bundle's code lists and data elements (None: platform standards);
        each resource is published for its own provider."""
        changed_lists = changed_elements = versions = 0
        with self._sessions.begin() as s:
            for cl in catalog.code_lists:
                changed_lists += self._put_code_list(s, who, cl, owner, unchanged_ok=True)
            for el in catalog.data_elements:
                changed_elements += self._put_element(s, who, el, owner, unchanged_ok=True)
            # Resources may relate to each other within the bundle: publish those that relate
            # to nothing unknown first.
            pending = list(catalog.resources)
            while pending:
                ready = [r for r in pending if self._relations_known(s, r, pending)]
                if not ready:
                    ready = pending[:1]  # the unknown relation is then reported as an error
                for spec in ready:
                    versions += self._publish(s, who, spec).created
                    pending.remove(spec)
        return ImportSummary(changed_lists, changed_elements, len(catalog.resources), versions)

    @staticmethod
    def _relations_known(s: Session, spec: ResourceSpec, pending: list[ResourceSpec]) -> bool:
        waiting = {(p.provider.upper(), p.code) for p in pending if p is not spec}
        for rel in spec.related:
            rel_org, _, rel_code = rel.rpartition("/")
            if ((rel_org or spec.provider).upper(), rel_code) in waiting:
                return False
        return True

    def export_catalog(self, *, include_deprecated: bool = True) -> Catalog:
        """Every code list, data element and the latest version of every resource."""
        with self._sessions() as s:
            lists = [
                CodeList.model_validate_json(r.document)
                for r in s.scalars(select(CatalogCodeList).order_by(CatalogCodeList.identifier))
            ]
            elements = [
                DataElement.model_validate_json(r.document)
                for r in s.scalars(
                    select(CatalogDataElement).order_by(CatalogDataElement.identifier)
                )
            ]
            q = (
                select(CatalogResource, CatalogResourceVersion)
                .join(
                    CatalogResourceVersion,
                    (CatalogResourceVersion.catalog_resource_id == CatalogResource.id)
                    & (CatalogResourceVersion.version == CatalogResource.latest_version),
                )
                .order_by(CatalogResource.org_code, CatalogResource.code)
            )
            if not include_deprecated:
                q = q.where(CatalogResource.status == ResourceStatus.PUBLISHED.value)
            resources = [self._published(r, v).spec for r, v in s.execute(q).all()]
        return Catalog(
            code_lists=tuple(lists), data_elements=tuple(elements), resources=tuple(resources)
        )

    def organization_names(self) -> dict[str, str]:
        with self._sessions() as s:
            return {c: n for c, n in s.execute(select(Organization.code, Organization.name))}

    def published_for_configuration(
        self,
    ) -> tuple[dict[tuple[str, str], ResourceSpec], dict[str, DataElement], dict[str, CodeList]]:
        """What the global configuration carries per resource: its latest published spec,
        with the data elements and code lists its schemas are derived from."""
        exported = self.export_catalog()
        return (
            {(r.provider, r.code): r for r in exported.resources},
            {e.identifier: e for e in exported.data_elements},
            {c.identifier: c for c in exported.code_lists},
        )


def summary_dict(summary: ImportSummary) -> dict[str, int]:
    return dataclasses.asdict(summary)
