"""The served /openapi.json is the contract: schemathesis calls every operation of the real app
(positive and negative data, deterministic generation) and every answer must be documented.

The four checks are not_a_server_error, status_code_conformance, content_type_conformance and
response_schema_conformance. No operation is excluded: dispatch proxies to a live loopback
backend (a flag of this test routes to it), and the destructive operations (DELETE a flag,
rollback, revoke a token) run too; that is safe because every other operation is judged by
its documentation, not by the data it finds, and path parameters are steered to names that
exist (tests/openapi_contract_hooks.py) so that operations get past their 404s.

Schemathesis runs as its CLI (`st run`, the way CI would run it against a deployment): its
pytest integration (`from_fixture`) does not run under pytest 9.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import copy_shipped_flags, write_flags
from servers import BackendApp, ServerThread

from control_plane.http.app import create_app
from control_plane.settings import Settings

TOKEN = "contract-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]
#: Fuzzing examples per operation (the coverage phase adds its own, a few per parameter);
#: the whole run takes about a minute on two busy cores.
MAX_EXAMPLES = 15
ROUTED = "contract-router"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (admin, gateway and tester tokens on) plus the backend its flag routes to."""
    root = tmp_path_factory.mktemp("contract")
    backend = ServerThread(BackendApp("contract-backend"))
    with backend:
        flags = copy_shipped_flags(root / "flags")
        for path in flags.iterdir():  # every backend live: a 502 would be a server error
            path.write_text(re.sub(r"http://127\.0\.0\.1:\d+", backend.url, path.read_text()))
        write_flags(
            flags,
            "contract.flagd.json",
            {
                ROUTED: {
                    "state": "ENABLED",
                    "defaultVariant": "live",
                    "variants": {"live": {"backend": "contract-backend", "url": backend.url}},
                }
            },
        )
        # One secret as admin and gateway token: schemathesis sends one Authorization header.
        settings = Settings(
            flags_dir=flags,
            database_url=f"sqlite:///{root / 'cp.db'}",
            sync_port=0,
            admin_tokens=[f"contract:admin:{TOKEN}"],
            gateway_tokens=[TOKEN],
            tester_token_key="t" * 40,
        )
        with ServerThread(create_app(settings)) as server:
            yield server.url


def _existing_names(base_url: str) -> dict[str, list[Any]]:
    """Values of each path parameter that name something that exists on the server."""
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
        flag_keys = [flag["key"] for flag in client.get("/v1/flags").json()["flags"]]
        versions = [item["version"] for item in client.get("/v1/flags/history").json()["items"]]
    return {
        "flag_key": flag_keys,
        "key": flag_keys,
        "version": versions or [1],
        "name": ["contract"],
        "path": ["", "v1/chat"],
        "original_path": ["v1/chat"],
    }


def test_every_answer_is_documented(served: str, tmp_path: Path) -> None:
    """Every answer to generated requests is documented: status, content type and schema."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "openapi_contract_hooks",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "CONTRACT_EXISTING": json.dumps(_existing_names(served)),
    }
    command = [
        str(Path(sys.executable).with_name("st")),
        "--no-color",
        "run",
        f"{served}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report-json-path",
        str(tmp_path / "report.json"),
    ]
    run = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    summary = run.stdout[run.stdout.rfind("API Operations:") :]
    print(summary)  # operations, phases, test cases: shown with -s or on failure
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Tested: " in summary
    assert "Skipped" not in summary


def test_operation_ids_are_unique_and_errors_are_problems(served: str) -> None:
    """Every operation has its own operationId and documents its errors as problem+json."""
    document = httpx.get(f"{served}/openapi.json", timeout=10).json()
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    ids = collections.Counter(operation["operationId"] for _, _, operation in operations)
    assert [name for name, count in ids.items() if count > 1] == []
    assert "ProblemDetails" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in operations:
        responses = operation["responses"]
        assert (
            "422" not in responses or "application/problem+json" in (responses["422"]["content"])
        ), (method, path)
        assert "400" in responses, (method, path)  # every request target is checked
        if path.startswith("/ofrep/"):
            continue  # OFREP answers OFREP JSON, plus problem+json for a refused target
        content = responses["400"]["content"]
        assert list(content) == ["application/problem+json"], (method, path)


def test_request_bodies_are_declared(served: str) -> None:
    """Every operation that reads a JSON body declares its schema."""
    document = httpx.get(f"{served}/openapi.json", timeout=10).json()
    readers = {
        ("post", "/v1/route/{flag_key}"),
        ("put", "/v1/flags/{key}"),
        ("post", "/v1/tokens"),
        ("post", "/v1/tester-tokens"),
        ("post", "/v1/events"),
        ("post", "/v1/canaries/{flag_key}"),
        ("post", "/v1/flags/rollback/{version}"),
        ("post", "/ofrep/v1/evaluate/flags/{key}"),
        ("post", "/ofrep/v1/evaluate/flags"),
    }
    for method, path in sorted(readers):
        body = document["paths"][path][method]["requestBody"]
        schema_ref = body["content"]["application/json"]["schema"]["$ref"]
        assert schema_ref.rsplit("/", 1)[1] in document["components"]["schemas"], (method, path)
