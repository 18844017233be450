from pathlib import Path

import pytest
from pydantic import ValidationError

from qiao.config import HubSettings, NodeSettings
from qiao.demo.processes import write_toml


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_toml(
        tmp_path / "n.toml",
        {"port": 9100, "data_dir": str(tmp_path), "services": {"violations": {"url": "http://a"}}},
    )
    monkeypatch.setenv("QIAO_PORT", "9200")
    monkeypatch.setenv("QIAO_SERVICES__BIKES__URL", "http://b")
    s = NodeSettings.load(cfg)
    assert s.port == 9200
    assert s.services["violations"].url == "http://a" and s.services["bikes"].url == "http://b"
    assert s.database_url == f"sqlite:///{(tmp_path / 'node.db').resolve()}"
    assert s.peer_address == "https://127.0.0.1:8711"


def test_defaults_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    h = HubSettings.load(None)
    assert h.public_url == "http://127.0.0.1:8700" and h.database_url.startswith("sqlite:///")
    with pytest.raises(ValidationError):
        HubSettings.load(None, port=70000)
    with pytest.raises(ValidationError):
        HubSettings.load(None, instance="bad instance!")
    with pytest.raises(FileNotFoundError):
        HubSettings.load(tmp_path / "missing.toml")
    monkeypatch.setenv("QIAO_DATABASE_URL", "postgresql://u@h/db")
    assert HubSettings.load(None).database_url == "postgresql://u@h/db"
