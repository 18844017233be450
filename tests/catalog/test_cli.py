"""``qiao catalog``: search, show, export and import against a hub's data directory."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qiao.catalog.service import CatalogService
from qiao.cli import app
from qiao.config import HubSettings
from qiao.demo.processes import write_toml
from qiao.hub.app import open_registry
from qiao.identity.roles import CLI
from tests.catalog.conftest import ELEMENTS, SEX, A, B, spec

runner = CliRunner()


@pytest.fixture
def hub(tmp_path: Path) -> tuple[list[str], CatalogService]:
    cfg = write_toml(tmp_path / "hub.toml", {"data_dir": str(tmp_path), "instance": "CN-T"})
    registry = open_registry(HubSettings.load(cfg))
    registry.add_organization(A, "市公安局")
    registry.add_organization(B, "市市场监督管理局")
    svc = CatalogService(registry)
    svc.publish_code_list(CLI, SEX)
    for el in ELEMENTS:
        svc.publish_element(CLI, el)
    svc.publish(CLI, spec())
    svc.publish(CLI, spec(abstract="第二版"))
    svc.publish(CLI, spec(provider=B, code="violations", name="市场监管行政处罚"))
    return ["catalog", "--config", str(cfg)], svc


def test_search_and_show(hub: tuple[list[str], CatalogService]) -> None:
    base, _ = hub
    r = runner.invoke(app, [*base, "search", "违法"])
    assert r.exit_code == 0, r.output
    assert "traffic-violations" in r.output and "2 resource(s); page 1 of 1" in r.output
    r = runner.invoke(
        app, [*base, "search", "违法", "--provider", B, "--sharing-type", "有条件共享"]
    )
    assert r.exit_code == 0 and "violations" in r.output and "1 resource(s)" in r.output
    r = runner.invoke(app, [*base, "search", "", "--method", "fax"])
    assert r.exit_code == 2 and "not one of" in r.output
    r = runner.invoke(app, [*base, "search", "'; DROP TABLE x; --"])
    assert r.exit_code == 0 and "0 resource(s)" in r.output
    r = runner.invoke(app, [*base, "show", "traffic-violations", "--version", "1"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["version"] == 1 and shown["latest_version"] == 2
    r = runner.invoke(app, [*base, "show", "nothing"])
    assert r.exit_code == 2 and "no catalogued resource" in r.output
    r = runner.invoke(app, [*base, "show", "traffic-violations", "--org", A, "--version", "9"])
    assert r.exit_code == 2 and "no version 9" in r.output


needs_excel = pytest.mark.skipif(
    importlib.util.find_spec("qiao.catalog.excel") is None, reason="qiao.catalog.excel not built"
)


@needs_excel
def test_export_and_import_workbook(hub: tuple[list[str], CatalogService], tmp_path: Path) -> None:
    from qiao.catalog.spec import Catalog

    write_workbook = importlib.import_module("qiao.catalog.excel").write_workbook

    base, svc = hub
    out = tmp_path / "catalog.xlsx"
    r = runner.invoke(app, [*base, "export", "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "import", str(out)])
    assert r.exit_code == 0 and "0 new version(s)" in r.output, r.output
    broken = spec(code="broken", items=[{"field": "x", "name": "某项", "element": "DE9999"}])
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(write_workbook(Catalog(resources=(spec(code="fine"), broken))))
    r = runner.invoke(app, [*base, "import", str(bad)])
    assert r.exit_code == 2 and "nothing imported" in r.output
    assert svc.find("fine") == []
