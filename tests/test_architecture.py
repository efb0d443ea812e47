"""The dependency rules of the code base, checked on its import graph.

Imports are read with `ast` from every module of the packages (module level and inside
functions alike; only `if TYPE_CHECKING:` blocks are left out, as they never run), so a rule
cannot be dodged by importing late.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("control_plane", "providers", "vector_hooks", "flags")
#: Domain packages: no HTTP framework, no HTTP edge, no command-line code.
DOMAIN = (
    "control_plane.routing",
    "control_plane.flagstore",
    "control_plane.experiments",
    "control_plane.distribution",
    "control_plane.db",
)
EDGE_MODULES = ("fastapi", "starlette", "control_plane.http", "control_plane.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield prefix
            yield from (f"{prefix}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (names resolved to existing modules)."""
    paths = [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]
    modules = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for imported in _imports(tree, name, path.name == "__init__.py"):
            if imported in modules:
                targets.add(imported)
            elif imported.rpartition(".")[0] in modules:  # from package import name
                targets.add(imported.rpartition(".")[0])
        targets.discard(name)
        graph[name] = targets
    return graph


def external_imports() -> dict[str, set[str]]:
    """Module -> every dotted name it imports, project or not."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found[name] = set(_imports(tree, name, path.name == "__init__.py"))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_there_are_no_import_cycles() -> None:
    """No group of modules imports itself round: each module can be read (and tested) alone."""
    assert _cycles(import_graph()) == []


def test_domain_packages_know_nothing_of_http_or_the_cli() -> None:
    """routing, flagstore, experiments, distribution and db import no FastAPI, edge or CLI."""
    offenders = {
        module: sorted(name for name in names if _under(name, EDGE_MODULES))
        for module, names in external_imports().items()
        if _under(module, DOMAIN)
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_no_package_imports_a_command_module() -> None:
    """Commands sit on top: shared logic lives in the domain packages, not in a command."""
    offenders = {
        module: sorted(name for name in names if _under(name, ("control_plane.cli",)))
        for module, names in external_imports().items()
        if not _under(module, ("control_plane.cli",))
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_sdk_never_imports_the_control_plane() -> None:
    """vector_hooks, providers and flags import nothing of control_plane (services use them)."""
    offenders = {
        module: sorted(name for name in names if _under(name, ("control_plane",)))
        for module, names in external_imports().items()
        if _under(module, ("vector_hooks", "providers", "flags"))
    }
    assert {module: names for module, names in offenders.items() if names} == {}
