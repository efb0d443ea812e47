"""What an installed copy does: flags live in ./flags, `init` writes the examples, the SDK
imports without the server stack."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from serve_process import CLI, ServeProcess

from control_plane.cli.init import shipped_flag_files
from flags import FLAGS_DIR

ADMIN = "admin-token-for-packaging-tests-0001"


def _digest(directory: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file():
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def test_init_writes_the_shipped_examples_and_keeps_existing_files(tmp_path: Path) -> None:
    """`init DIR` writes every example; run again it keeps them; --force overwrites."""
    target = tmp_path / "ops-flags"
    first = subprocess.run([*CLI, "init", str(target)], capture_output=True, text=True, check=True)
    assert sorted(path.name for path in target.iterdir()) == sorted(shipped_flag_files())
    assert "wrote" in first.stdout
    edited = target / "routing.flagd.json"
    edited.write_text('{"flags": {}}')
    again = subprocess.run([*CLI, "init", str(target)], capture_output=True, text=True, check=True)
    assert "kept" in again.stdout
    assert edited.read_text() == '{"flags": {}}'
    subprocess.run([*CLI, "init", str(target), "--force"], check=True, capture_output=True)
    assert edited.read_text() == (FLAGS_DIR / "routing.flagd.json").read_text()


def test_serve_reads_flags_from_the_working_directory_by_default(tmp_path: Path) -> None:
    """Without --flags, serve uses ./flags; without it, one message that names `init`."""
    missing = subprocess.run(
        [*CLI, "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CP_SYNC_PORT": "0"},
    )
    assert missing.returncode == 2
    assert "control-plane init" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_edits_go_to_the_flag_directory_never_into_the_package(tmp_path: Path) -> None:
    """An admin PUT writes ./flags; the package's own flag files stay byte for byte the same."""
    package_before = _digest(FLAGS_DIR)
    subprocess.run([*CLI, "init", str(tmp_path / "flags")], check=True, capture_output=True)
    with ServeProcess(
        tmp_path / "flags", tmp_path, env={"CP_ADMIN_TOKENS": f"ops:admin:{ADMIN}"}
    ) as server:
        flag = {
            "state": "ENABLED",
            "defaultVariant": "a",
            "variants": {"a": {"backend": "a", "url": "http://127.0.0.1:9"}},
        }
        put = httpx.put(
            f"{server.url}/v1/flags/packaging-flag",
            json=flag,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )
        assert put.status_code in (200, 201), put.text
    assert "packaging-flag" in "".join(p.read_text() for p in (tmp_path / "flags").iterdir())
    assert _digest(FLAGS_DIR) == package_before


def test_the_sdk_imports_without_the_server_stack() -> None:
    """vector_hooks, providers and flags import with FastAPI, SQLAlchemy & co. unavailable."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic",
                   "pydantic_settings", "prometheus_client", "control_plane"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"blocked: {name}", name=name)
        sys.meta_path.insert(0, Block())
        import flags, providers, vector_hooks, vector_hooks.milvus, vector_hooks.weaviate
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_the_cli_names_the_server_extra_when_it_is_missing() -> None:
    """Without the server stack, `control-plane` says which extra to install (exit 2)."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"fastapi", "pydantic_settings", "sqlalchemy"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from control_plane.cli.entry import main
        sys.exit(main(["serve"]))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "[server]" in result.stderr
    assert "Traceback" not in result.stderr
