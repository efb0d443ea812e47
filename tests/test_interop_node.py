"""Interoperability from Node.js: the official JS providers evaluate our flags.

@openfeature/flagd-provider (in-process) syncs from our flagd sync server and
@openfeature/ofrep-provider evaluates through our OFREP endpoints; both must answer what the
Python flagd provider answers (same variants for the same users: the "v2" fractional bucketing
of @openfeature/flagd-core 4.0.1 and openfeature-flagd-core 1.0.0), and the in-process one must
pick up a reloaded flag. npm packages are pinned in tests/node/package-lock.json and installed
once into tests/node/node_modules (re-installed only when the lock file changes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from distribution_support import client_for, ofrep_app, settings_for, wait_for, write_document
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType
from servers import ServerThread

from control_plane.distribution import start_sync_server
from control_plane.flagstore import FlagStore
from flags import AB_TEST_ROUTER, CANARY_ROUTER, FLAGS_DIR, PINNED_ROUTER, REGION_ROUTER
from providers import source_fed_provider

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parent / "node"

TYPED_FLAGS: dict[str, Any] = {
    "js-bool": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"in": ["@example.com", {"var": "email"}]}, "on", None]},
    },
    "js-string": {
        "state": "ENABLED",
        "variants": {"a": "alpha", "b": "beta", "c": "gamma"},
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", 20], ["b", 30], ["c", 50]]},
    },
    "js-number": {
        "state": "ENABLED",
        "variants": {"low": 0.25, "high": 0.75},
        "defaultVariant": "low",
        "targeting": {"if": [{">=": [{"var": "age"}, 18]}, "high", "low"]},
    },
    "js-disabled": {
        "state": "DISABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    },
}


def _install_node_modules() -> None:
    """`npm ci` into tests/node unless node_modules already matches the lock file."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH; the Node.js interop test needs Node.js and npm")
    lock = NODE_DIR / "package-lock.json"
    digest = hashlib.sha256(
        (NODE_DIR / "package.json").read_bytes() + lock.read_bytes()
    ).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".installed-from"
    if stamp.is_file() and stamp.read_text() == digest:
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    stamp.write_text(digest)


class NodeClients:
    """The interop.mjs process: send cases as JSON lines, read answers back."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._stderr: list[str] = []
        assert process.stderr is not None
        threading.Thread(target=self._drain, args=(process.stderr,), daemon=True).start()

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line)

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"interop.mjs exited: {''.join(self._stderr)[-4000:]}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def wait_ready(self) -> None:
        assert self._read() == {"ready": True}

    def evaluate(self, cases: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cases": cases}) + "\n")
        self.process.stdin.flush()
        return self._read()


@pytest.fixture
def flags_with_types(flags_dir: Path) -> Path:
    write_document(flags_dir, "typed.flagd.json", {"flags": TYPED_FLAGS})
    return flags_dir


@pytest.fixture
def control_plane(tmp_path: Path, flags_with_types: Path) -> Iterator[tuple[str, FlagStore, int]]:
    """Our app (OFREP) on uvicorn and our sync server, over the same flag store."""
    app = ofrep_app(settings_for(tmp_path, flags_with_types))
    with ServerThread(app) as server:
        store: FlagStore = app.state.components.store
        with start_sync_server(store, "127.0.0.1", 0) as sync:
            yield server.url, store, sync.port


@pytest.fixture
def node(control_plane: tuple[str, FlagStore, int]) -> Iterator[NodeClients]:
    _install_node_modules()
    url, _, sync_port = control_plane
    process = subprocess.Popen(
        ["node", str(NODE_DIR / "interop.mjs"), "127.0.0.1", str(sync_port), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients = NodeClients(process)
    try:
        clients.wait_ready()
        yield clients
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def python_reference(control_plane: tuple[str, FlagStore, int]) -> OpenFeatureClient:
    _, store, _ = control_plane
    return client_for(source_fed_provider(store), "python-reference")


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for index in range(40):
        context = {
            "targetingKey": f"user-{index}",
            "user-region": ["cn", "eu"][index % 2],
            "canary-version": ["v2", "v9", ""][index % 3],
            "email": f"u{index}@example.com" if index % 4 == 0 else f"u{index}@corp.test",
            "age": index,
        }
        if index % 5 == 0:
            context["canary-weight"] = index * 2
        for flag in (AB_TEST_ROUTER, CANARY_ROUTER, PINNED_ROUTER, REGION_ROUTER):
            cases.append({"flag": flag, "type": "object", "default": {}, "context": context})
        cases.append({"flag": "js-bool", "type": "boolean", "default": False, "context": context})
        cases.append({"flag": "js-string", "type": "string", "default": "?", "context": context})
        cases.append({"flag": "js-number", "type": "number", "default": -1, "context": context})
    cases.append({"flag": "js-disabled", "type": "boolean", "default": False, "context": {}})
    cases.append({"flag": "no-such-flag", "type": "string", "default": "d", "context": {}})
    return cases


#: The Python getter matching each JS getter (JS has one number type; ours are floats here).
_PY_TYPES = {
    "object": FlagType.OBJECT,
    "boolean": FlagType.BOOLEAN,
    "string": FlagType.STRING,
    "number": FlagType.FLOAT,
}


def _python_answer(client: OpenFeatureClient, case: dict[str, Any]) -> dict[str, Any]:
    context = dict(case["context"])
    evaluation_context = EvaluationContext(
        targeting_key=context.pop("targetingKey", None), attributes=context
    )
    details = client.evaluate_flag_details(
        _PY_TYPES[case["type"]], case["flag"], case["default"], evaluation_context
    )
    return {
        "flag": case["flag"],
        "value": details.value,
        "variant": details.variant,
        "reason": str(details.reason),
        "errorCode": None if details.error_code is None else str(details.error_code),
    }


def _core(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in ("flag", "value", "variant", "reason", "errorCode")}


def test_node_providers_answer_like_the_python_provider(
    node: NodeClients, python_reference: OpenFeatureClient
) -> None:
    """Node in-process (sync) and OFREP answers equal Python's for the same users and flags."""
    cases = _cases()
    answers = node.evaluate(cases)
    expected = [_python_answer(python_reference, case) for case in cases]
    assert [_core(a) for a in answers["sync"]] == expected
    # @openfeature/ofrep-provider 0.1.3 (the only release) predates OFREP's code-default
    # answers (ADR 0006, no `value`): for a disabled flag it reports an error. The caller still
    # gets its own default, which is what a code-default answer means; compare that value.
    code_default = {index for index, case in enumerate(cases) if case["flag"] == "js-disabled"}
    ofrep = [_core(a) for a in answers["ofrep"]]
    # OFREP carries flagd's DEFAULT reason as STATIC (DEFAULT is not in OFREP's list).
    as_ofrep = [
        {**e, "reason": "STATIC" if e["reason"] == "DEFAULT" else e["reason"]} for e in expected
    ]
    assert [a for i, a in enumerate(ofrep) if i not in code_default] == [
        e for i, e in enumerate(as_ofrep) if i not in code_default
    ]
    assert [ofrep[i]["value"] for i in code_default] == [expected[i]["value"] for i in code_default]
    # Both see flagd's metadata only: none of the project's facts (issue 14).
    for answer in (answers["sync"][0], answers["ofrep"][0]):
        assert not {"flagSetVersion", "$flagSetVersion", "bucketing"} & set(answer["flagMetadata"])


def test_node_in_process_provider_picks_up_a_reload(
    node: NodeClients, control_plane: tuple[str, FlagStore, int]
) -> None:
    """After a reload, the Node in-process provider evaluates the new flag definition."""
    _, store, _ = control_plane
    case = {
        "flag": REGION_ROUTER,
        "type": "object",
        "default": {},
        "context": {"targetingKey": "u", "user-region": "cn"},
    }
    before = node.evaluate([case])
    assert before["sync"][0]["value"]["url"] == "http://127.0.0.1:9112"
    document = json.loads((FLAGS_DIR / "routing.flagd.json").read_text())
    document["flags"][REGION_ROUTER]["variants"]["cn"]["url"] = "http://127.0.0.1:9777"
    write_document(store.directory, "routing.flagd.json", document)
    new = store.reload()

    def node_sees_it() -> bool:
        answer = node.evaluate([case])
        return bool(answer["sync"][0]["value"]["url"] == "http://127.0.0.1:9777")

    assert wait_for(node_sees_it, timeout=10.0, interval=0.01)
    after = node.evaluate([case])
    assert store.current.version == new.version
    assert "flagSetVersion" not in after["sync"][0]["flagMetadata"]
    assert after["ofrep"][0]["value"]["url"] == "http://127.0.0.1:9777"
