"""Helpers shared by the distribution tests (sync server, OFREP, Node.js interop)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from openfeature import api as openfeature_api
from openfeature.client import OpenFeatureClient
from openfeature.provider import FeatureProvider

from control_plane.http.app import create_app
from control_plane.settings import Settings

__all__ = [
    "SHARED",
    "TESTKIT",
    "client_for",
    "ofrep_app",
    "settings_for",
    "wait_for",
    "write_document",
]

#: ../shared beside the repository (flagd testbed corpus, schemas); absent in a lone clone.
SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTKIT = SHARED / "flagd-testbed" / "testkit-flags.json"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def client_for(provider: FeatureProvider, name: str) -> OpenFeatureClient:
    """Register `provider` under a fresh OpenFeature domain (the API is global) and wait."""
    domain = f"{name}-{uuid.uuid4().hex[:8]}"
    openfeature_api.set_provider_and_wait(provider, domain=domain)
    return openfeature_api.get_client(domain)


def write_document(directory: Path, name: str, document: dict[str, Any]) -> Path:
    """Write a whole flagd document atomically (temp file + rename)."""
    path = directory / name
    temp = directory / f".{name}.tmp"
    temp.write_text(json.dumps(document, indent=2), encoding="utf-8")
    temp.replace(path)
    return path


def settings_for(tmp_path: Path, flags_dir: Path, **overrides: Any) -> Settings:
    """Settings of a test app: its flags, a SQLite file in tmp, no sync port of its own."""
    values: dict[str, Any] = {
        "flags_dir": flags_dir,
        "database_url": f"sqlite:///{tmp_path / 'control-plane.db'}",
        "sync_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


def ofrep_app(settings: Settings) -> FastAPI:
    """The control plane app, with the OFREP router included if the factory does not yet."""
    app = create_app(settings)
    if not any(getattr(route, "path", "").startswith("/ofrep/") for route in app.routes):
        from control_plane.http import ofrep

        app.include_router(ofrep.router)
    return app
