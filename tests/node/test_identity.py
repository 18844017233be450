import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from qiao import pki, signing
from qiao.config import HubSettings
from qiao.events import envelope
from qiao.globalconf import KIND, GlobalConf
from qiao.hub.app import create_app, open_registry
from qiao.node.identity import EVENTS_KEY_FILE, NodeIdentity, enroll, ensure_event_key
from qiao.registry.services import sign_configuration_fetch

ORG = "91350100M000100Y43"
AAD = envelope.event_aad("traffic-accidents", "n1", "evt-1")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, str]:
    """The real hub app in process; the node's enrollment request is routed to it."""
    settings = HubSettings.load(None, data_dir=tmp_path / "hub", instance="CN-T")
    registry = open_registry(settings)
    registry.add_organization(ORG, "甲")
    client = TestClient(create_app(settings, registry))

    def post(url: str, *, json: dict[str, Any], timeout: float) -> httpx.Response:
        assert url == "http://hub.test/api/v1/enroll"
        response: httpx.Response = client.post("/api/v1/enroll", json=json)
        return response

    monkeypatch.setattr(httpx, "post", post)  # enroll() calls httpx.post
    return client, registry.create_enrollment_token(ORG)[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enrollment_makes_the_event_key_and_the_hub_publishes_it(
    hub: tuple[TestClient, str], tmp_path: Path
) -> None:
    client, token = hub
    node_dir = tmp_path / "node"
    identity = enroll(
        node_dir,
        hub_url="http://hub.test",
        token=token,
        node_name="n1",
        org=ORG,
        address="https://127.0.0.1:9443",
    )
    key_file = node_dir / EVENTS_KEY_FILE
    assert _mode(key_file) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    # The hub publishes the public half in the node's signed configuration entry.
    node_key = pki.load_key_pem(identity.key_file.read_bytes())
    fetch = sign_configuration_fetch(node_key, "n1", identity.fingerprint, int(time.time()))
    signed = client.get("/api/v1/global-configuration", headers=fetch).json()
    pub = signing.public_key_from_text(identity.configuration_key)
    conf = GlobalConf.compile(signing.verify_document(signed, pub, kind=KIND))
    entry = conf.nodes_by_fingerprint[identity.fingerprint]
    assert entry.events_key == identity.event_key_text != ""
    # What a provider seals to the published key, the node (loaded afresh) opens.
    sealed = envelope.seal(envelope.event_key_from_text(entry.events_key), b"{}", aad=AAD)
    assert envelope.open_envelope(NodeIdentity.load(node_dir).event_key, sealed, aad=AAD) == b"{}"


def _old_node(data_dir: Path) -> None:
    """A node directory as enrollment wrote it before event streams: no events.key."""
    data_dir.mkdir()
    meta = {
        "name": "n1",
        "org": ORG,
        "instance": "CN-T",
        "configuration_key": "unused",
        "fingerprint": "ab" * 32,
    }
    (data_dir / "identity.json").write_text(json.dumps(meta))


def test_an_old_node_gets_an_event_key_when_loaded(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    _old_node(node_dir)
    identity = NodeIdentity.load(node_dir)
    key_file = node_dir / EVENTS_KEY_FILE
    assert key_file.exists() and _mode(key_file) == 0o600
    # Loading again keeps the key: it is made once, not per start.
    assert NodeIdentity.load(node_dir).event_key_text == identity.event_key_text
    assert sorted(p.name for p in node_dir.iterdir()) == [EVENTS_KEY_FILE, "identity.json"]


def test_processes_starting_together_end_with_one_key(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    _old_node(node_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: ensure_event_key(node_dir), range(16)))
    on_disk = envelope.event_key_from_pem((node_dir / EVENTS_KEY_FILE).read_bytes())
    texts = {envelope.event_key_to_text(k.public_key()) for k in keys}
    assert texts == {envelope.event_key_to_text(on_disk.public_key())}
    assert sorted(p.name for p in node_dir.iterdir()) == [EVENTS_KEY_FILE, "identity.json"]


def test_a_damaged_event_key_is_reported(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    _old_node(node_dir)
    (node_dir / EVENTS_KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(envelope.EnvelopeError, match="not a usable event key"):
        NodeIdentity.load(node_dir)
