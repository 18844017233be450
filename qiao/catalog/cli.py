"""``qiao catalog``: import, export, search and show catalog entries on the hub.

The commands work on the hub's database directly (``--config HUB.toml``) and act as the
platform administrator (``qiao.identity.roles.CLI``): whoever can read the hub's database
and keys already holds that power.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

catalog_app = typer.Typer(
    help="The resource catalog: data elements, code lists and resources.", no_args_is_help=True
)


@catalog_app.callback()
def catalog(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The hub's TOML configuration file (or set QIAO_CONFIG).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Work on the hub's catalog (reads the hub's configuration)."""
    from qiao.cli import _fail
    from qiao.config import HubSettings

    try:
        ctx.obj = {"settings": HubSettings.load(config)}
    except Exception as exc:
        raise _fail(f"configuration: {exc}") from exc


def _service(ctx: typer.Context) -> Any:
    from qiao.catalog.service import CatalogService
    from qiao.cli import _registry

    return CatalogService(_registry(ctx))


@catalog_app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="The catalog workbook (.xlsx, docs/catalog-template.md).")
    ],
    owner: Annotated[
        str | None,
        typer.Option(
            help="Organization (USCC) owning the workbook's data elements and code "
            "lists; without it they are platform standards."
        ),
    ] = None,
) -> None:
    """Import a catalog workbook in one transaction; on any row error print every error and
    import nothing (exit code 2)."""
    from rich.table import Table

    from qiao import problems
    from qiao.catalog.api import import_bytes
    from qiao.cli import _fail, console, err
    from qiao.identity.roles import CLI
    from qiao.problems import Problem

    if not file.is_file():
        raise _fail(f"no file {file}")
    try:
        summary = import_bytes(_service(ctx), CLI, file.read_bytes(), owner)
    except Problem as p:
        if p.kind is problems.CATALOG_IMPORT_FAILED:
            t = Table("sheet", "row", "column", "problem", title=f"{file.name}: nothing imported")
            for e in p.extra["errors"]:
                t.add_row(str(e["sheet"]), str(e["row"]), str(e["column"] or ""), e["problem"])
            err.print(t)
        raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p
    console.print(
        f"imported {file.name}: {summary.code_lists} code list(s) and "
        f"{summary.data_elements} data element(s) changed, {summary.resources} resource(s), "
        f"{summary.new_versions} new version(s)"
    )


@catalog_app.command("export")
def export(
    ctx: typer.Context,
    format: Annotated[
        str, typer.Option("--format", "-f", help="xlsx (the catalog template) or dcat (JSON-LD).")
    ] = "xlsx",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write; JSON-LD goes to stdout without it."),
    ] = None,
) -> None:
    """Export the whole catalog as the Excel template or as DCAT JSON-LD."""
    from qiao.catalog.api import _optional_module
    from qiao.cli import _fail, console
    from qiao.problems import Problem

    svc = _service(ctx)
    try:
        exported = svc.export_catalog()
        if format == "dcat":
            dcat = _optional_module("qiao.catalog.dcat", "the DCAT export")
            settings = ctx.obj["settings"]
            text = json.dumps(
                dcat.to_dcat(
                    exported, base_url=settings.public_url, org_names=svc.organization_names()
                ),
                ensure_ascii=False,
                indent=2,
            )
            if output is None:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
                return
            output.write_text(text + "\n", encoding="utf-8")
        elif format == "xlsx":
            if output is None:
                raise _fail("an .xlsx export needs --output FILE")
            excel = _optional_module("qiao.catalog.excel", "the Excel export")
            output.write_bytes(excel.write_workbook(exported))
        else:
            raise _fail(f"unknown format {format!r}: use xlsx or dcat")
    except Problem as p:
        raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p
    console.print(
        f"wrote {output}: {len(exported.resources)} resource(s), "
        f"{len(exported.data_elements)} data element(s), {len(exported.code_lists)} code list(s)"
    )


@catalog_app.command("search")
def search(
    ctx: typer.Context,
    text: Annotated[
        str,
        typer.Argument(
            help="Any part of a name, abstract, keyword, provider, "
            "item or data element (Chinese substrings work)."
        ),
    ] = "",
    provider: Annotated[str | None, typer.Option(help="Provider USCC.")] = None,
    sharing_type: Annotated[
        str | None, typer.Option(help="unconditional/conditional/none or 无条件共享…")
    ] = None,
    method: Annotated[str | None, typer.Option(help="service, events or dataset.")] = None,
    classification: Annotated[
        str | None, typer.Option(help="basic, thematic or departmental (基础/主题/部门).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="published or deprecated.")] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number (20 per page).")] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=200, help="Results per page.")] = 20,
) -> None:
    """Search the catalog and print a page of matching resources."""
    from rich.table import Column, Table

    from qiao.catalog.search import SearchQuery
    from qiao.catalog.spec import (
        Classification,
        ResourceStatus,
        SharingMethod,
        SharingType,
        label_zh,
        parse_choice,
    )
    from qiao.cli import _fail, console

    try:
        query = SearchQuery(
            text,
            provider=provider,
            sharing_type=parse_choice(SharingType, sharing_type) if sharing_type else None,
            sharing_method=parse_choice(SharingMethod, method) if method else None,
            classification=(
                parse_choice(Classification, classification) if classification else None
            ),
            status=parse_choice(ResourceStatus, status) if status else None,
            limit=per_page,
            offset=(page - 1) * per_page,
        )
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    from qiao.problems import Problem

    try:
        result = _service(ctx).search(query)
    except Problem as p:
        raise _fail(p.detail, 2) from p
    t = Table("provider", Column("code", no_wrap=True), "name", "sharing", "version", "status")
    for h in result.hits:
        t.add_row(
            f"{h.provider_name} {h.org}",
            h.code,
            h.name,
            label_zh(SharingType(h.sharing_type)),
            str(h.version),
            h.status,
        )
    console.print(t)
    last = max(1, -(-result.total // per_page))
    more = "" if result.total_exact else "+"
    console.print(f"{result.total}{more} resource(s); page {page} of {last}{more}")


@catalog_app.command("show")
def show(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The resource code, e.g. traffic-violations.")],
    org: Annotated[
        str | None, typer.Option(help="Provider USCC (needed when several publish the code).")
    ] = None,
    version: Annotated[int | None, typer.Option(min=1, help="A version; else the latest.")] = None,
) -> None:
    """Print a resource's specification (JSON) with its version, status and SHA-256."""
    from qiao.cli import _fail, console
    from qiao.problems import Problem

    svc = _service(ctx)
    if org is None:
        providers = svc.find(code)
        if not providers:
            raise _fail(f"no catalogued resource {code}", 2)
        if len(providers) > 1:
            raise _fail(f"{code} is published by {', '.join(providers)}: add --org", 2)
        org = providers[0]
    try:
        published = svc.get(org, code, version)
    except Problem as p:
        raise _fail(f"{p.detail or p.kind.title} ({p.kind.uri})", 2) from p
    console.print(
        json.dumps(published.as_dict(), ensure_ascii=False, indent=2),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
