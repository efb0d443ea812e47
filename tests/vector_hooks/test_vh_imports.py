"""Dependency rules of the SDK: what vector_hooks may import, and where."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import vector_hooks

PACKAGE = Path(vector_hooks.__file__).resolve().parent
REPO = PACKAGE.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules() -> dict[str, set[str]]:
    return {
        str(path.relative_to(PACKAGE)): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_only_the_adapters_import_their_clients() -> None:
    """pymilvus is imported only by backends/milvus.py, weaviate only by backends/weaviate.py."""
    modules = _modules()
    assert [m for m, names in modules.items() if "pymilvus" in names] == ["backends/milvus.py"]
    assert [m for m, names in modules.items() if "weaviate" in names] == ["backends/weaviate.py"]


def test_the_sdk_never_imports_the_control_plane_or_web_and_db_stacks() -> None:
    """No module of vector_hooks imports control_plane, providers, FastAPI or SQLAlchemy."""
    forbidden = {"control_plane", "providers", "fastapi", "starlette", "sqlalchemy", "httpx"}
    offenders = {
        m: sorted(names & forbidden) for m, names in _modules().items() if names & forbidden
    }
    assert offenders == {}


def test_importing_everything_loads_no_forbidden_package_at_run_time() -> None:
    """A fresh interpreter importing the whole SDK has no control plane/FastAPI/SQLAlchemy."""
    code = (
        "import json, sys\n"
        "import vector_hooks\n"
        "light = sorted(m for m in sys.modules if m.split('.')[0] in ('pymilvus', 'weaviate'))\n"
        "import vector_hooks.milvus, vector_hooks.weaviate, vector_hooks.selector\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules}"
        " & {'control_plane', 'fastapi', 'sqlalchemy', 'providers'})\n"
        "print(json.dumps({'light': light, 'bad': bad}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"light": [], "bad": []}


def test_public_modules_have_a_docstring_and_all() -> None:
    """Every public module says what it is for and declares its public names."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if ast.get_docstring(tree) is None:
            missing.append(f"{path.name}: docstring")
        public = not path.name.startswith("_") or path.name == "__init__.py"
        has_all = any(
            isinstance(node, ast.Assign | ast.AnnAssign)
            and any(
                getattr(t, "id", None) == "__all__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
            for node in tree.body
        )
        if public and not has_all:
            missing.append(f"{path.relative_to(PACKAGE)}: __all__")
    assert missing == []
    assert (PACKAGE / "py.typed").is_file()
