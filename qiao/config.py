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

from pydantic import BaseModel, Field, field_validator, model_validator
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


class ExternalIdpSettings(BaseModel):
    """An external OpenID Connect identity provider (e.g. a provincial unified identity
    platform) the hub may delegate sign-in to (docs/sso.md)."""

    model_config = {"extra": "forbid"}

    issuer: str
    client_id: str
    client_secret: str = ""
    display_name: str = ""
    scope: str = "openid profile"
    # Claim names in the IdP's ID token / userinfo.
    username_claim: str = "preferred_username"
    name_claim: str = "name"
    org_claim: str = "org_uscc"
    roles_claim: str = "groups"
    # IdP group or role value -> Qiao role; values not listed give no role. Users from an
    # IdP belong to an organization, so platform-admin (a role of no organization) cannot be
    # mapped: such an entry is refused when the settings load.
    role_map: dict[str, str] = Field(default_factory=dict)
    # Organizations (USCC) whose users may sign in this way; empty = every registered one.
    allowed_orgs: list[str] = Field(default_factory=list)
    # Create the user at first sign-in (otherwise only existing users may sign in).
    provision: bool = True
    # The IdP's ID tokens carry MFA in amr/acr; require it (for roles that need MFA).
    require_mfa: bool = False

    @field_validator("role_map")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        from qiao.identity.roles import Role, parse_roles

        for external, role in value.items():
            if Role.PLATFORM_ADMIN in parse_roles(role):  # also names unknown roles
                raise ValueError(
                    f"role_map[{external!r}]: platform-admin is never granted by an IdP"
                )
        return value


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
    # --- single sign-on (OpenID Connect provider; docs/sso.md) ---
    # Lifetimes: ID and access tokens are short because nodes verify access tokens offline.
    oidc_id_token_seconds: int = Field(600, gt=0, le=24 * 3600)
    oidc_access_token_seconds: int = Field(600, gt=0, le=24 * 3600)
    oidc_refresh_token_seconds: int = Field(8 * 3600, gt=0, le=90 * 24 * 3600)
    oidc_code_seconds: int = Field(120, gt=0, le=600)  # RFC 6749 §4.1.2: 10 minutes at most
    # How long a rotated-out signing key stays in the JWKS.
    oidc_key_overlap_seconds: int = Field(7 * 24 * 3600, gt=0)
    # Login delegated to external OIDC identity providers, by a short name used in URLs.
    external_idps: dict[str, ExternalIdpSettings] = Field(default_factory=dict)
    # --- people signing in (docs/identity.md) ---
    # Sessions end after this long without a request, and this long after sign-in at most.
    session_idle_seconds: int = Field(30 * 60, gt=0)
    session_absolute_seconds: int = Field(12 * 3600, gt=0)
    # The session cookie: Secure unless the hub is plain HTTP (a loopback demo); SameSite lax
    # so that a department app's sign-in redirect (a top-level GET) still carries it.
    session_cookie_secure: bool = True
    session_cookie_samesite: str = Field("lax", pattern=r"^(lax|strict)$")
    # Refuse a session cookie presented from another client address than the sign-in's.
    session_bind_address: bool = True
    # Origins (scheme://host[:port]) besides public_url allowed to send unsafe requests with
    # the session cookie (a console served from another host).
    allowed_origins: list[str] = Field(default_factory=list)
    # Throttling: after this many failed sign-ins (per account name, per source address)
    # within the window, wait lockout_seconds, doubled for each further failure, up to the max.
    sign_in_max_failures: int = Field(5, ge=1)
    sign_in_failure_window_seconds: int = Field(15 * 60, gt=0)
    sign_in_lockout_seconds: int = Field(60, gt=0)
    sign_in_lockout_max_seconds: int = Field(3600, gt=0)
    # Password policy and Argon2id cost (RFC 9106 §4, second recommended option by default).
    password_min_length: int = Field(12, ge=8, le=128)
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(64 * 1024, ge=8)
    argon2_parallelism: int = Field(4, ge=1)
    # --- emergency mode (应急; docs/agreements.md) ---
    # The longest emergency two platform administrators may declare, in hours; and how long a
    # declaration waits for the second administrator before it lapses.
    emergency_max_hours: int = Field(72, ge=1, le=24 * 30)
    emergency_confirm_seconds: int = Field(3600, ge=60, le=24 * 3600)
    # --- the global configuration's long poll (GET ...?wait=N) ---
    # How often a waiting request re-reads the serial from the database: replicas share the
    # database, not memory, so this bounds how late a change made on another replica is seen.
    configuration_poll_seconds: float = Field(0.5, gt=0, le=5)
    # --- what a client may send, and how slowly (docs/operations.md, "Limits and timeouts") ---
    # Request bodies: the largest the hub reads (a 10 MiB catalog workbook and its multipart
    # framing fit), refused with 413 before any form or JSON parsing.
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # The request line and headers: all of them within this many seconds of the first byte
    # (or of the connection), at most this many bytes (a longer URL alone: 414), at most this
    # many header fields. Slow or endless heads (slowloris) are closed with 408.
    header_timeout_seconds: float = Field(20.0, gt=0, le=300)
    max_header_bytes: int = Field(64 * 1024, ge=8 * 1024, le=1024 * 1024)
    max_url_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(100, ge=16, le=1000)
    # A request body must arrive within body_timeout_seconds, plus one second for every
    # body_min_bytes_per_second bytes received (Apache mod_reqtimeout's MinRate): a large
    # upload on a slow line goes through, a trickle does not (408).
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    body_min_bytes_per_second: int = Field(1024, ge=1)
    # An idle keep-alive connection, and a TLS handshake never finished, are closed after:
    keepalive_seconds: int = Field(5, ge=1, le=300)
    tls_handshake_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # --- event retention of the embedded broker (docs/events.md#retention) ---
    # How often the hub trims the streams' logs, and an optional cap on every stream's
    # retention_hours, for a hub whose disk cannot hold what the catalog allows (the
    # catalog's own, shorter retentions still apply).
    events_trim_seconds: float = Field(600.0, gt=0)
    events_max_retention_hours: float | None = Field(None, gt=0)

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


class WebhookSettings(BaseModel):
    """A backend of this node's organization that receives a stream by webhook
    (docs/events.md#webhooks). The node delivers each event as one signed POST (Standard
    Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, HMAC-SHA256),
    in order per partition key, retrying with exponential backoff and jitter; an event that
    still fails after ``max_attempts`` goes to the dead-letter queue
    (``qiao events dead-letters``)."""

    model_config = {"extra": "forbid"}

    # Unique on this node: names the webhook's position, its dead letters and its records.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    provider: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # the provider's credit code
    stream: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    # The app of this node's organization the events are delivered for: its agreement
    # decides (as for a pull) whether and what it receives.
    app: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    url: str = Field(pattern=r"^https?://\S+$")
    # The signing secret: a file in the node's data directory (created, mode 0600, with a
    # random ``whsec_`` secret if missing). Never in this file itself.
    secret_file: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,128}$")
    purpose: str = ""  # X-Qiao-Purpose the deliveries are decided under
    end_user: str = ""  # X-Qiao-User, where the agreement requires one
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(12, ge=1, le=100)
    backoff_base_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    # Events of different partition keys delivered at the same time (one key: one at a time).
    concurrency: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _fill(self) -> WebhookSettings:
        if not self.secret_file:
            self.secret_file = f"webhook-{self.name}.secret"
        return self


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
    # Long polling: each fetch asks the hub to hold the answer up to this many seconds until
    # the configuration changes, so a change reaches the node within a second or so; 0 turns
    # it off (plain polling every config_refresh_seconds). The hub caps the wait at 55 s.
    config_wait_seconds: float = Field(25.0, ge=0, le=55)
    config_grace_seconds: float = Field(24 * 3600.0, gt=0)
    provider_timeout_seconds: float = Field(60.0, gt=0)
    # How often to send pending exchange records to the hub's ledger.
    ledger_submit_seconds: float = Field(1.0, gt=0)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    # What a client may send each listener, and how slowly (docs/operations.md, "Limits and
    # timeouts"). The request head must be complete within header_timeout_seconds of the
    # connection or of the previous answer, which is also how long an idle keep-alive
    # connection stays open (aiohttp has one timer for both); at most max_headers header
    # fields of max_header_bytes each, and a request line of at most max_header_bytes.
    header_timeout_seconds: float = Field(20.0, gt=0, le=300)
    max_header_bytes: int = Field(8190, ge=1024, le=64 * 1024)
    max_headers: int = Field(100, ge=16, le=1000)
    # A request body must arrive within body_timeout_seconds, plus one second for every
    # body_min_bytes_per_second bytes received (Apache mod_reqtimeout's MinRate).
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    body_min_bytes_per_second: int = Field(1024, ge=1)
    # The peer listener's TLS handshakes (mutual TLS) must finish within:
    tls_handshake_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Check apps' JSON request bodies against the catalog's request schema before they leave
    # (problem client:invalid-request). Responses are always checked by the provider's node.
    validate_requests: bool = False
    # App API keys: every key expires; the longest life an operator may give one.
    api_key_max_days: int = Field(365, gt=0, le=3650)
    record_payloads: bool = False
    # Where event streams go (docs/events.md): "hub" — the broker embedded in the hub's
    # database, reached over the hub's API — or a NATS JetStream server, "nats://host:4222".
    events_broker: str = Field("hub", pattern=r"^(hub|nats://[^\s/]+)$")
    # Streams delivered to this organization's backends by webhook ([[webhooks]] tables).
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> NodeSettings:
        self._default_db("node.db")
        if not self.peer_address:
            self.peer_address = f"https://{self.peer_host}:{self.peer_port}"
        if not self.witness_url:
            self.witness_url = f"http://{self.host}:{self.port}/witness"
        self.hub_url = self.hub_url.rstrip("/")
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError("webhook names must be unique on a node")
        return self
