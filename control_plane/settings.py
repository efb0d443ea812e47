"""Service settings: explicit argument > environment variable > default.

Environment variables carry the `CP_` prefix (`CP_PORT=9000`), except `DATABASE_URL`, which keeps
its conventional name. Validators refuse values that would make the service unsafe or useless
rather than letting it start half-configured.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_HEADER_RULES", "HeaderRule", "Settings", "TokenSpec"]

_HEADER_NAME = re.compile(r"^[a-z0-9-]+$")


class HeaderRule(BaseModel):
    """How one request header becomes one evaluation-context attribute."""

    header: str
    attribute: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = Field(default=256, ge=1, le=8192)
    #: Optional regular expression the whole (string) value must match.
    pattern: str | None = None
    #: Who may set the header: "gateway" (the shipped gateway config clears what a client sent
    #: and sets it from a trusted source, such as the authenticated user) or "client" (passed
    #: through from the client as it is). See the README's "Trust boundary".
    set_by: Literal["gateway", "client"] = "gateway"
    #: A pin: honoured only with a valid `x-tester-token` (control_plane.routing.tester_tokens);
    #: otherwise ignored, and the decision says so.
    tester_only: bool = False

    @field_validator("header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"not a valid header name: {value!r}")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


DEFAULT_HEADER_RULES: tuple[HeaderRule, ...] = (
    HeaderRule(header="x-user-id", attribute="targetingKey"),
    HeaderRule(header="x-ab-test-id", attribute="ab-test-group"),
    HeaderRule(
        header="x-canary-version", attribute="canary-version", max_length=64, tester_only=True
    ),
    # An integer: flagd's fractional takes whole-number weights (12.5 is refused with a 400).
    HeaderRule(
        header="x-canary-weight",
        attribute="canary-weight",
        type="integer",
        minimum=0,
        maximum=100,
        max_length=16,
    ),
    HeaderRule(header="x-region", attribute="user-region", max_length=64),
    HeaderRule(header="x-tenant-id", attribute="tenant", max_length=128),
)


class TokenSpec(BaseModel):
    """One admin API bearer token given in settings: "name:role:token" or an object."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Literal["viewer", "operator", "admin"]
    token: SecretStr

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.strip().split(":", 2)
            if len(parts) != 3:
                raise ValueError("a token must look like name:role:token")
            return dict(zip(("name", "role", "token"), parts, strict=True))
        return value

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a token must be at least 16 characters long")
        return value


def _comma_list(value: Any) -> Any:
    """Environment form of a list setting: comma-separated, or a JSON array."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service reads from its environment, in one validated object."""

    # hide_input_in_errors: a refused setting may hold a secret (a token); errors name the
    # setting and the rule, never the value.
    model_config = SettingsConfigDict(
        env_prefix="CP_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    #: The flag directory ops edit (CP_FLAGS_DIR): `./flags` under the working directory.
    #: Never the installed package's own copy (a reinstall would wipe ops' edits);
    #: `control-plane init` writes the shipped examples to start from.
    flags_dir: Path = Field(default=Path("flags"))
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: SQLAlchemy URL; defaults to a SQLite file in the working directory.
    database_url: str = Field(
        default="sqlite:///./control-plane.db",
        validation_alias=AliasChoices("database_url", "DATABASE_URL", "CP_DATABASE_URL"),
    )
    #: Port of the flagd sync gRPC service (flagd.sync.v1); 0 disables it.
    sync_port: int = Field(default=8015, ge=0, le=65535)
    # -- replica mode (control_plane.distribution.sync_client) --
    #: HOST:PORT of a control plane's (or flagd's) flagd.sync.v1 port (CP_REPLICA_OF): run as
    #: a routing replica that follows it (routing API, OFREP, health, metrics; no database,
    #: no admin API, no experiments). Unset: a control plane.
    replica_of: str | None = Field(
        default=None, pattern=r"^(?:[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):[0-9]{1,5}$"
    )
    #: Bearer token a replica sends to the primary's sync port (CP_REPLICA_TOKEN; one of the
    #: primary's sync or gateway tokens).
    replica_token: SecretStr | None = None
    #: PEM certificates a replica trusts for the primary's TLS sync port (CP_REPLICA_CA_FILE);
    #: unset: plaintext (loopback or a private network only).
    replica_ca_file: Path | None = None
    #: Where a replica keeps the last flag set it synced (CP_REPLICA_DIR), so a restart while
    #: the primary is down still serves it.
    replica_dir: Path = Path("control-plane-replica")
    #: How often the flag directory is checked for edits, in seconds.
    reload_interval: float = Field(default=0.2, gt=0, le=10)
    #: Seconds a flag file must stay deleted before its flags are unpublished: an editor that
    #: deletes and re-creates a file on save must not be a rollout. Until then the file's last
    #: contents keep serving and /v1/flags/status lists it under pendingDeletions; 0 applies
    #: a deletion at the next poll. Deletions made by the admin API (rollback) are immediate.
    deletion_settle: float = Field(default=2.0, ge=0, le=300)

    # -- flagd compatibility --
    #: All-or-nothing reloads (CP_FLAGS_STRICT=true): any invalid flag refuses the whole edit
    #: and the last good flag set keeps serving. Off (default): an invalid flag (or a file
    #: that cannot be read) is refused on its own, keeping its last good definition, and
    #: every other flag of the edit goes live (as flagd loads the flags it can).
    flags_strict: bool = False
    #: Static evaluation context (CP_SYNC_CONTEXT, a JSON object) sent to in-process providers
    #: in GetMetadata and the SyncFlags stream's sync_context, like flagd's --context-value.
    sync_context: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: OFREP requests per second allowed per client (token bucket, burst `ofrep_rate_burst`);
    #: 0 (default) disables the limit. Over it: 429 with Retry-After.
    ofrep_rate_limit: float = Field(default=0.0, ge=0, le=1_000_000)
    #: OFREP requests a client may make at once above the rate (token bucket size).
    ofrep_rate_burst: int = Field(default=20, ge=1, le=1_000_000)
    header_rules: tuple[HeaderRule, ...] = DEFAULT_HEADER_RULES
    #: Largest header value accepted for any mapped header, whatever its rule says.
    max_header_bytes: int = Field(default=4096, ge=64, le=65536)
    #: Request heads (request line plus all headers) over this many bytes are answered 431 and
    #: the connection closed, before the head is buffered any further.
    max_request_head_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    #: Any one header value over this many bytes: 431 (nginx's default line limit is 8k).
    max_header_value_bytes: int = Field(default=8 * 1024, ge=256, le=1024 * 1024)
    #: Requests with more header fields than this: 431.
    max_request_headers: int = Field(default=100, ge=8, le=10_000)
    #: Timeout for one proxied backend call (connect + first byte), seconds.
    dispatch_timeout: float = Field(default=10.0, gt=0, le=600)
    dispatch_max_connections: int = Field(default=200, ge=1, le=10000)

    # -- trust boundaries: what the dispatch proxy forwards, the sync port, /metrics --
    #: Request headers the dispatch proxy never forwards to a backend (CP_DISPATCH_STRIP_HEADERS,
    #: comma-separated; replaces the default; "x-forwarded-*" is a prefix). A deny-list, not an
    #: allow-list: backends are arbitrary model APIs whose own headers (content-type, accept,
    #: x-request-id, vendor headers) the control plane cannot enumerate, while what must not
    #: pass is known: credentials meant for this service or its gateway (authorization, cookie,
    #: proxy-authorization) and forwarding headers a client could forge (forwarded,
    #: x-forwarded-*, x-real-ip). The proxy then sets X-Forwarded-For (the peer as uvicorn sees
    #: it, see --forwarded-allow-ips), -Host and -Proto itself. Hop-by-hop headers are never
    #: forwarded, and an Authorization carrying a gateway, sync or admin token (or any
    #: generated `cpt_` token) is dropped even when "authorization" is taken off this list
    #: (for backends that need the end user's own Authorization).
    dispatch_strip_headers: Annotated[tuple[str, ...], NoDecode] = (
        "authorization",
        "cookie",
        "proxy-authorization",
        "forwarded",
        "x-forwarded-*",
        "x-real-ip",
    )
    #: Address of the flagd sync gRPC port (CP_SYNC_HOST). Loopback by default and independent
    #: of `host`: the port serves the whole flag set (targeting rules included), so binding it
    #: beyond this machine is a separate decision, and needs `sync_tokens` (or gateway tokens).
    sync_host: str = "127.0.0.1"
    #: PEM certificate chain and private key of the sync port (CP_SYNC_TLS_CERT_FILE,
    #: CP_SYNC_TLS_KEY_FILE): set both to serve TLS only. flagd providers connect with
    #: tls=true and cert_path=<CA or self-signed cert> (FLAGD_TLS, FLAGD_SERVER_CERT_PATH).
    sync_tls_cert_file: Path | None = None
    sync_tls_key_file: Path | None = None
    #: PEM CA bundle (CP_SYNC_TLS_CLIENT_CA_FILE): when set, replicas must present a client
    #: certificate signed by it (mutual TLS), for providers that cannot send a token.
    sync_tls_client_ca_file: Path | None = None
    #: Bearer tokens a replica must send as gRPC metadata `authorization: Bearer <token>`
    #: (CP_SYNC_TOKENS, comma-separated, 16+ characters). Unset: the gateway tokens are
    #: accepted, so setting gateway tokens never leaves the flag set open; neither set: anyone
    #: who reaches the port may sync (acceptable only on loopback, which the validator
    #: enforces). A separate setting lets replicas hold a secret that cannot route traffic.
    sync_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    #: Require a viewer (or higher) admin token on GET /metrics (CP_METRICS_REQUIRE_AUTH).
    #: Off by default: metrics hold flag keys, variants and counts, no request data.
    metrics_require_auth: bool = False

    @field_validator("dispatch_strip_headers", "sync_tokens", mode="before")
    @classmethod
    def _split_trust_lists(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("dispatch_strip_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(name.strip().lower() for name in value)
        for name in names:
            if not _HEADER_NAME.fullmatch(name.removesuffix("*")):
                raise ValueError(f"not a header name (or prefix ending in *): {name!r}")
        return names

    @field_validator("sync_tokens")
    @classmethod
    def _sync_tokens_long_enough(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < 16 for token in value):
            raise ValueError("a sync token must be at least 16 characters long")
        return value

    @model_validator(mode="after")
    def _sync_port_is_safe(self) -> Settings:
        tls = (self.sync_tls_cert_file, self.sync_tls_key_file)
        if (tls[0] is None) != (tls[1] is None):
            raise ValueError("sync_tls_cert_file and sync_tls_key_file go together")
        if self.sync_tls_client_ca_file is not None and tls[0] is None:
            raise ValueError("sync_tls_client_ca_file needs sync_tls_cert_file and key_file")
        for path in (*tls, self.sync_tls_client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"sync TLS file {path} does not exist")
        authenticated = bool(
            self.sync_tokens or self.gateway_tokens or self.sync_tls_client_ca_file
        )
        try:
            loopback = (
                self.sync_host == "localhost" or ipaddress.ip_address(self.sync_host).is_loopback
            )
        except ValueError:  # a host name: it may resolve anywhere
            loopback = False
        if self.sync_port and not authenticated and not loopback:
            raise ValueError(
                f"sync_host {self.sync_host!r} is not a loopback address: set sync_tokens (or "
                "gateway_tokens, or sync_tls_client_ca_file) so replicas must authenticate"
            )
        return self

    #: Answer GET /v1/decide/{flag} from a raw-ASGI fast path and, under `serve`, lean
    #: decisions from the HTTP protocol itself (same responses, less overhead).
    fast_decide: bool = True
    # -- workers (control_plane.workers) --
    #: Processes serving the HTTP port (CP_WORKERS, `serve --workers`): 1 (default) is one
    #: process; N > 1 runs the primary (flag store, admin API, sync, experiments, canaries)
    #: and N-1 decide workers on the same port with SO_REUSEPORT; "auto" is one per core.
    workers: int = Field(default=1, ge=1, le=64)

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return max(1, min(64, os.cpu_count() or 1))
        return value

    #: Admin API tokens (CP_ADMIN_TOKENS="ops:operator:<secret>,ci:viewer:<secret>"); roles are
    #: viewer < operator < admin. More can be created (hashed) in the database by an admin.
    admin_tokens: Annotated[tuple[TokenSpec, ...], NoDecode] = ()
    #: When non-empty, the routing API requires `Authorization: Bearer <one of these>`
    #: (CP_GATEWAY_TOKENS, comma-separated; two during a rotation).
    gateway_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    #: HMAC key of tester tokens (CP_TESTER_TOKEN_KEY, 32+ characters), which let a tester pin
    #: a version through the gateway (`x-tester-token`; `control-plane tester-token` or
    #: POST /v1/tester-tokens issues them). Unset: no pin is ever honoured. Rotating the key
    #: revokes every token issued with the old one.
    tester_token_key: SecretStr | None = None

    # -- experiments and canaries (control_plane.experiments) --
    #: HMAC key for targeting keys stored with exposures (CP_EXPOSURE_SALT, 16+ characters);
    #: unset: a random key made once and kept in the database.
    exposure_salt: SecretStr | None = None
    #: Exposure writer: records queued in memory before new ones are dropped (and counted).
    exposure_queue_size: int = Field(default=100_000, ge=100, le=10_000_000)
    #: Records per insert transaction (bigger batches: fewer commits; see bench/exposures.py).
    exposure_batch_size: int = Field(default=2000, ge=1, le=50_000)
    #: Seconds between two writes of queued records.
    exposure_flush_interval: float = Field(default=0.2, gt=0, le=60)
    #: Journaled records also kept in memory while the database keeps up (the journal holds
    #: them all either way; while the database is down they wait on disk only).
    exposure_buffer_limit: int = Field(default=50_000, ge=0, le=10_000_000)
    #: Directory of the exposure journal (CP_EXPOSURE_SPILL_DIR): every record is fsynced
    #: here before the database is tried and deleted once committed; replayed at start.
    exposure_spill_dir: Path = Path("control-plane-spill")
    #: Seconds between two write attempts while the database is down.
    exposure_retry_interval: float = Field(default=1.0, gt=0, le=300)
    #: Linux scheduling of the processes that store or publish records (the exposure writer,
    #: the JetStream publisher; CP_RECORD_PROCESS_PRIORITY). `batch`: SCHED_BATCH, the same
    #: share of CPU as the server, so records keep up under any load. `idle`: SCHED_IDLE, only
    #: CPU nothing else wants, so decisions never wait for it; on a node with no spare CPU the
    #: records fall behind and, once the queue is full, are dropped (and counted).
    record_process_priority: Literal["batch", "idle"] = "batch"
    #: Seconds between two passes of the canary controller over running canaries.
    canary_tick_interval: float = Field(default=1.0, gt=0, le=60)
    # -- canary metric analysis --
    #: Prometheus server that canary `metrics` are queried on unless they name a
    #: `provider.address` (CP_PROMETHEUS_URL, an http(s) base URL, e.g. http://127.0.0.1:9090).
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    #: Seconds one Prometheus query may take (the controller waits for it each interval).
    prometheus_timeout: float = Field(default=3.0, gt=0, le=60)
    # Exposure journal and database time limits: a crash loses no answered exposure.
    #: Seconds between two journal appends: a kill -9 loses at most about this much.
    exposure_journal_interval: float = Field(default=0.2, ge=0.01, le=0.5)
    #: Seconds one experiment write may take before it is interrupted and the database
    #: counts as down (a database that stopped answering without closing the connection).
    exposure_write_timeout: float = Field(default=5.0, ge=0.5, le=300)
    #: PostgreSQL: seconds to set up a connection (TCP through authentication); libpq's
    #: minimum is 2.
    database_connect_timeout: int = Field(default=5, ge=2, le=300)
    #: PostgreSQL: the server cancels any statement running longer (seconds).
    database_statement_timeout: float = Field(default=30.0, ge=1, le=3600)
    #: SQLite: seconds a write waits for another writer's lock before failing.
    database_sqlite_busy_timeout: float = Field(default=10.0, ge=0, le=600)

    # -- observability (control_plane.observability) --
    #: Trace decisions and dispatches with OpenTelemetry (CP_TRACING). Unset: on when an OTLP
    #: endpoint is configured (here or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), else off.
    tracing: bool | None = None
    #: OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318 (/v1/traces is appended);
    #: takes precedence over OTEL_EXPORTER_OTLP_ENDPOINT.
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    #: Log lines as JSON objects, plain text, or auto: text on a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator("tester_token_key")
    @classmethod
    def _tester_key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("the tester token key must be at least 32 characters long")
        return value

    @field_validator("exposure_salt")
    @classmethod
    def _salt_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("the exposure salt must be at least 16 characters long")
        return value

    @field_validator("admin_tokens", "gateway_tokens", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("admin_tokens")
    @classmethod
    def _unique_token_names(cls, value: tuple[TokenSpec, ...]) -> tuple[TokenSpec, ...]:
        names = [spec.name for spec in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"token name {name!r} is given twice")
        return value

    @field_validator("gateway_tokens")
    @classmethod
    def _gateway_long_enough(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < 16 for token in value):
            raise ValueError("a gateway token must be at least 16 characters long")
        return value

    @field_validator("flags_dir")
    @classmethod
    def _resolve_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _unique_headers(self) -> Settings:
        seen: set[str] = set()
        for rule in self.header_rules:
            if rule.header in seen:
                raise ValueError(f"header {rule.header!r} is mapped twice")
            seen.add(rule.header)
        return self

    # -- gateway (control_plane.gateway) --
    #: UDP port on which the gateway's outcome log arrives (CP_GATEWAY_LOG_PORT): nginx's JSON
    #: access log over syslog (`control-plane gateway nginx --log-port N`), one backend call
    #: per line, counted for canaries, experiments and metrics like dispatch calls. 0: off.
    gateway_log_port: int = Field(default=0, ge=0, le=65535)
    #: Address the outcome listener binds (CP_GATEWAY_LOG_HOST).
    gateway_log_host: str = "127.0.0.1"
    #: Networks outcome datagrams are accepted from (CP_GATEWAY_LOG_SOURCES, comma-separated
    #: CIDRs). Syslog over UDP has no authentication: whoever can send lines here can move a
    #: canary, so widen this to the gateways' own addresses only.
    gateway_log_sources: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.0/8", "::1/128")

    @field_validator("gateway_log_sources", mode="before")
    @classmethod
    def _split_gateway_sources(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("gateway_log_sources")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not a network (CIDR) or address: {network!r}") from None
        return value

    # -- shadow traffic --
    #: Copies waiting to be sent to shadow backends (CP_SHADOW_QUEUE_SIZE); a copy that finds
    #: the queue full is dropped and counted (control_plane_shadow_dropped{reason="queue-full"}).
    shadow_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    #: Worker tasks sending copies, so at most this many mirrored requests are in flight
    #: (CP_SHADOW_WORKERS); each may call a few backends at once (its shadows, a noise call).
    shadow_workers: int = Field(default=8, ge=1, le=1000)
    #: Timeout of one shadow call, and how long a comparison waits for the primary's answer
    #: to finish streaming to the client (CP_SHADOW_TIMEOUT).
    shadow_timeout: float = Field(default=10.0, gt=0, le=600)
    #: Largest request or response body mirrored and compared (CP_SHADOW_MAX_BODY); a larger
    #: request is not mirrored, a larger answer is compared on status and latency only.
    shadow_max_body: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Latency pairs kept per shadow for the report's quantiles and tests (CP_SHADOW_WINDOW).
    shadow_window: int = Field(default=10_000, ge=10, le=1_000_000)
    #: Diff examples kept per shadow, newest first, sensitive fields already redacted
    #: (CP_SHADOW_EXAMPLES).
    shadow_examples: int = Field(default=20, ge=0, le=1000)

    # -- event pipeline (NATS JetStream) --
    #: NATS server(s) of the experiment record pipeline (CP_EVENTS_URL, e.g.
    #: nats://127.0.0.1:4222; comma-separated for a cluster; nats://user:pass@host:4222 or
    #: CP_EVENTS_TOKEN for credentials). Unset: records go to the in-process writer. Set: this
    #: process publishes exposures, outcomes and call samples to JetStream, and a control plane
    #: also stores them from the stream (control_plane.events). Replicas need CP_EXPOSURE_SALT.
    events_url: str | None = Field(default=None, pattern=r"^(nats|tls)://[^\s]+$")
    #: Token for NATS (CP_EVENTS_TOKEN), when the server wants one.
    events_token: SecretStr | None = None
    #: JetStream stream the records go to (CP_EVENTS_STREAM).
    events_stream: str = Field(default="CP_RECORDS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Subject prefix of the records (`<prefix>.<table>`; CP_EVENTS_SUBJECT_PREFIX).
    events_subject_prefix: str = Field(
        default="cp.records", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )
    #: Durable pull consumer shared by every control plane that stores records.
    events_consumer: str = Field(default="cp-records-writer", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Stream limits (control_plane.events.stream): bytes kept before publishes are refused
    #: (and records wait in publishers' journals), seconds a record may wait to be stored
    #: (0: forever), the duplicate window (seconds), and replicas on a NATS cluster.
    events_stream_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    #: Seconds a record may wait in the stream to be stored (0: forever).
    events_stream_max_age: float = Field(default=7 * 24 * 3600.0, ge=0)
    #: Seconds JetStream remembers message ids to drop re-published records.
    events_duplicate_window: float = Field(default=120.0, gt=0, le=24 * 3600)
    #: Copies of the stream on a NATS cluster.
    events_stream_replicas: int = Field(default=1, ge=1, le=5)
    #: Seconds before a message the consumer took and did not acknowledge is delivered again.
    events_ack_wait: float = Field(default=30.0, ge=1, le=3600)
    #: Publisher: records queued in memory before new ones are dropped (and counted).
    events_queue_size: int = Field(default=100_000, ge=100, le=10_000_000)
    #: Publish from a process of its own, as the experiment writer runs (the serving process
    #: only queues records); false: from a thread of the serving process, which then pays
    #: about 35 us of its CPU per record (bench/events.py).
    events_publisher_process: bool = True
    #: Seconds between two publishing rounds (a kill -9 loses about this much).
    events_publish_interval: float = Field(default=0.02, ge=0.001, le=1)
    #: Publisher: records of one table packed into one JetStream message, at most (and no
    #: more than 256 KiB or a quarter of the server's max_payload); what a round takes is
    #: packed and sent at once, never held back to fill a message. 1: one message per record
    #: with its natural key as message id, as before packing (consumers read both).
    events_records_per_message: int = Field(default=100, ge=1, le=1000)
    #: Publisher's local journal while NATS is unreachable (CP_EVENTS_JOURNAL_DIR), replayed
    #: once it is back; a directory of its own (the in-process writer's is apart).
    events_journal_dir: Path = Path("control-plane-events-journal")
    #: Records per consumer transaction, about: a fetch asks for that many records' worth of
    #: messages, and a message's records are never split over two transactions.
    events_batch_size: int = Field(default=1000, ge=1, le=50_000)

    @field_validator("events_url", mode="before")
    @classmethod
    def _empty_events_url_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _replica_events_need_salt(self) -> Settings:
        if self.events_url and self.replica_of and self.exposure_salt is None:
            raise ValueError(
                "a replica publishing experiment records (CP_EVENTS_URL) needs "
                "CP_EXPOSURE_SALT, the same as the control plane's: it has no "
                "database to keep the targeting key HMAC key in"
            )
        return self
