"""Read a YAML flag file as JSON data, with the line and column of every value.

YAML 1.1 (PyYAML's default) reads `on`, `off`, `yes` and `no` as booleans and `2024-01-01` as a
date, which would silently turn the common flagd variants `on:`/`off:` into `true`/`false`. Flag
files are JSON documents written in YAML syntax, so this loader resolves scalars the YAML 1.2
core way (only `true`/`false` are booleans, no dates), keeps mapping keys as their text, records
where each value starts, and reports keys a mapping repeats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from control_plane.flagstore.issues import Location

__all__ = ["YamlDocument", "load_yaml"]

_MAX_DEPTH = 200


class _JsonLikeLoader(yaml.SafeLoader):  # type: ignore[misc]  # no stubs
    """SafeLoader with YAML 1.2 core scalar resolution."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level table


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$",
        list("-+0123456789."),
    ),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
):
    _JsonLikeLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


@dataclass
class YamlDocument:
    data: Any
    positions: dict[Location, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Location, int, int]] = field(default_factory=list)
    #: Values YAML can hold but JSON cannot (binary, sets, non-finite numbers, complex keys).
    problems: list[tuple[Location, str]] = field(default_factory=list)


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document; raises yaml.YAMLError (with a mark) on a syntax error."""
    loader = _JsonLikeLoader(text)
    try:
        node = loader.get_single_node()
        document = YamlDocument(data=None)
        if node is not None:
            document.data = _build(loader, node, (), document, 0)
        return document
    finally:
        loader.dispose()


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _build(
    loader: _JsonLikeLoader, node: Node, path: Location, document: YamlDocument, depth: int
) -> Any:
    document.positions[path] = _mark(node)
    if depth > _MAX_DEPTH:
        document.problems.append((path, f"nested more than {_MAX_DEPTH} levels deep"))
        return None
    if isinstance(node, MappingNode):
        loader.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                document.problems.append(
                    (path, f"line {_mark(key_node)[0]}: a mapping key must be a plain string")
                )
                continue
            key = str(key_node.value)
            if key in mapping:
                document.duplicates.append(((*path, key), *_mark(key_node)))
            mapping[key] = _build(loader, value_node, (*path, key), document, depth + 1)
        return mapping
    if isinstance(node, SequenceNode):
        return [
            _build(loader, item, (*path, index), document, depth + 1)
            for index, item in enumerate(node.value)
        ]
    value = loader.construct_object(node, deep=True)
    if isinstance(value, float) and not math.isfinite(value):
        document.problems.append((path, f"{value} is not a finite number; JSON cannot hold it"))
        return None
    if value is not None and not isinstance(value, str | int | float | bool):
        document.problems.append(
            (
                path,
                f"a YAML {type(value).__name__} value cannot be written as JSON; "
                "quote it to make it a string",
            )
        )
        return None
    return value
