"""`control-plane serve --sync-port N`: a replica syncs from the served process, OFREP answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from distribution_support import client_for
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from servers import free_port

from flags import REGION_ROUTER
from providers import sync_provider

# The installed console script, as an operator runs it.
CLI = [str(Path(sys.executable).with_name("control-plane"))]


@pytest.fixture
def served(flags_dir: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """`control-plane serve` on free HTTP and sync ports; yields (http_port, sync_port)."""
    http_port, sync_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--flags",
            str(flags_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--sync-port",
            str(sync_port),
            "--database-url",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "control-plane serve exited early"
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "control-plane serve never became ready"
            time.sleep(0.1)
        yield http_port, sync_port
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def replica(served: tuple[int, int]) -> Iterator[OpenFeatureClient]:
    provider = sync_provider("127.0.0.1", served[1], deadline_ms=3000)
    yield client_for(provider, "served-replica")
    provider.shutdown()


def test_serve_exposes_the_sync_service_and_ofrep(
    served: tuple[int, int], replica: OpenFeatureClient
) -> None:
    """A flagd replica syncs from `serve --sync-port`, and OFREP answers the same decision."""
    http_port, _ = served
    context = EvaluationContext(targeting_key="u", attributes={"user-region": "cn"})
    details = replica.get_object_details(REGION_ROUTER, {}, context)
    assert details.variant == "cn"
    answer = httpx.post(
        f"http://127.0.0.1:{http_port}/ofrep/v1/evaluate/flags/{REGION_ROUTER}",
        json={"context": {"targetingKey": "u", "user-region": "cn"}},
    ).json()
    assert (answer["variant"], answer["value"]) == (details.variant, details.value)
