"""Configuration: a TOML file plus ``QIAO_*`` environment variables.

Precedence, highest first: explicit arguments, environment (``QIAO_PORT=9000``; nested
values with a double underscore, ``QIAO_SERVICES__VIOLATIONS__URL=...``), the TOML file
(``--config`` or ``QIAO_CONFIG``), then the defaults below. The database is a URL:
``sqlite:///path/hub.db`` (the embedded default, WAL mode) or
``postgresql+psycopg://user@host/db``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class _FileSettings(BaseSettings):
    """Common loading rules: ``QIAO_*`` variables over a TOML file over defaults."""

    model_config = SettingsConfigDict(
        env_prefix="QIAO_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )
    config_file: ClassVar[Path | None] = None

    data_dir: Path = Path("qiao-data")
    database_url: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = cls.config_file or (
            Path(os.environ["QIAO_CONFIG"]) if "QIAO_CONFIG" in os.environ else None
        )
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Read settings from ``config_file`` (if given), the environment and ``overrides``."""
        if config_file is not None and not config_file.is_file():
            raise FileNotFoundError(f"configuration file not found: {config_file}")
        # A subclass per call keeps the file choice local instead of global state.
        bound = type(cls.__name__, (cls,), {"config_file": config_file})
        settings = bound(**overrides)
        return cls.model_validate(settings.model_dump())

    def _default_db(self, name: str) -> None:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / name).resolve()}"


class HubSettings(_FileSettings):
    """Settings of the hub (交换中心), the control plane."""

    instance: str = Field("CN-DEMO", pattern=r"^[A-Za-z0-9-]{1,32}$")
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    public_url: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # How long an enrollment token stays usable, and how long node certificates last.
    enrollment_token_ttl_seconds: int = Field(7 * 24 * 3600, gt=0)
    node_certificate_days: int = Field(365, gt=0)
    # The ledger's C2SP origin (default qiao/{instance}/ledger), fixed once the log exists.
    ledger_origin: str = ""
    # How often to sign a checkpoint and gather cosignatures; how many witnesses must cosign
    # (default: a majority of the registered witnesses).
    ledger_interval_seconds: float = Field(2.0, gt=0)
    ledger_quorum: int | None = Field(None, ge=0)
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> HubSettings:
        self._default_db("hub.db")
        if not self.public_url:
            scheme = "https" if self.tls_cert else "http"
            self.public_url = f"{scheme}://{self.host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self


class ServiceSettings(BaseModel):
    """A backend that this node exposes as a resource."""

    model_config = {"extra": "forbid"}

    url: str
    timeout_seconds: float = Field(30.0, gt=0)


class NodeSettings(_FileSettings):
    """Settings of a department's node (前置交换节点)."""

    name: str = Field("node", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    hub_url: str = "http://127.0.0.1:8700"
    # Where the department's apps call (plain HTTP on the department's network).
    host: str = "127.0.0.1"
    port: int = Field(8710, ge=0, le=65535)
    # Where other nodes call this one (mutual TLS with hub-issued certificates).
    peer_host: str = "127.0.0.1"
    peer_port: int = Field(8711, ge=0, le=65535)
    # The address other nodes use, published in the global configuration.
    peer_address: str = ""
    # Where the hub reaches this node's ledger witness (default: the app listener).
    witness_url: str = ""
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    # How often to fetch the global configuration, and how long a cached one stays usable
    # after the hub was last reached.
    config_refresh_seconds: float = Field(30.0, gt=0)
    config_grace_seconds: float = Field(24 * 3600.0, gt=0)
    provider_timeout_seconds: float = Field(60.0, gt=0)
    # How often to send pending exchange records to the hub's ledger.
    ledger_submit_seconds: float = Field(1.0, gt=0)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    record_payloads: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> NodeSettings:
        self._default_db("node.db")
        if not self.peer_address:
            self.peer_address = f"https://{self.peer_host}:{self.peer_port}"
        if not self.witness_url:
            self.witness_url = f"http://{self.host}:{self.port}/witness"
        self.hub_url = self.hub_url.rstrip("/")
        return self
