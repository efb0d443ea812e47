"""Service settings: explicit argument > environment variable > default.

Environment variables carry the `CP_` prefix (`CP_PORT=9000`), except `DATABASE_URL`, which keeps
its conventional name. Validators refuse values that would make the service unsafe or useless
rather than letting it start half-configured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flags import FLAGS_DIR

__all__ = ["DEFAULT_HEADER_RULES", "HeaderRule", "Settings"]

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
    HeaderRule(header="x-canary-version", attribute="canary-version", max_length=64),
    HeaderRule(header="x-canary-weight", attribute="canary-weight", type="number",
               minimum=0, maximum=100, max_length=16),
    HeaderRule(header="x-region", attribute="user-region", max_length=64),
    HeaderRule(header="x-tenant-id", attribute="tenant", max_length=128),
)


class Settings(BaseSettings):
    """Everything the service reads from its environment, in one validated object."""

    model_config = SettingsConfigDict(env_prefix="CP_", extra="ignore", populate_by_name=True)

    flags_dir: Path = Field(default=FLAGS_DIR)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: SQLAlchemy URL; defaults to a SQLite file in the working directory.
    database_url: str = Field(
        default="sqlite:///./control-plane.db",
        validation_alias=AliasChoices("database_url", "DATABASE_URL", "CP_DATABASE_URL"),
    )
    #: Port of the flagd sync gRPC service (flagd.sync.v1); 0 disables it.
    sync_port: int = Field(default=8015, ge=0, le=65535)
    #: How often the flag directory is checked for edits, in seconds.
    reload_interval: float = Field(default=0.2, gt=0, le=10)
    header_rules: tuple[HeaderRule, ...] = DEFAULT_HEADER_RULES
    #: Largest header value accepted for any mapped header, whatever its rule says.
    max_header_bytes: int = Field(default=4096, ge=64, le=65536)
    #: Timeout for one proxied backend call (connect + first byte), seconds.
    dispatch_timeout: float = Field(default=10.0, gt=0, le=600)
    dispatch_max_connections: int = Field(default=200, ge=1, le=10000)
    #: Answer GET /v1/decide/{flag} from a raw-ASGI fast path (same responses, less overhead).
    fast_decide: bool = True

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
