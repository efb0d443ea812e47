"""Fuzz: every generated flag document our validator accepts evaluates alike in Python and Node.

A generator seeded with SEED writes DOCUMENTS flagd documents with random targeting (if, and,
or, !, !!, comparisons, between, in, cat, starts_with, ends_with, sem_ver, fractional with
static and dynamic weights, var with missing attributes and defaults, $ref evaluators, and odd
shapes such as `{}` as a rule, literals as conditions and variant names that do not exist) and
random evaluation contexts. Every document `validate_contents` accepts is served by a FlagStore
to the official Python flagd provider (`source_fed_provider`, openfeature-flagd-core 1.0.0) and
to the compiled evaluator (`CompiledProvider`), and evaluated, as the file a flagd user would
write, by ONE Node.js process running @openfeature/flagd-provider in in-process mode
(@openfeature/flagd-core 4.0.1, the same v2 fractional bucketing; tests/node/fuzz.mjs). Value,
variant, reason and error code must be equal for every (flag, context, type); EXCLUSIONS lists
the differences accepted on purpose (they depend on the request, so no validator rule can
refuse them), each with its reason.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openfeature import api as openfeature_api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType
from openfeature.provider import FeatureProvider
from test_interop_node import NODE_DIR, _install_node_modules

from control_plane.flagstore import FlagStore, validate_contents
from providers import source_fed_provider
from providers.compiled import CompiledProvider

pytestmark = pytest.mark.node

#: What the validator says of a comparison or arithmetic over literals Node refuses.
NODE_REFUSES = "Node's flagd evaluator refuses the flag"

SEED = 1405
DOCUMENTS = 300
CONTEXTS_PER_DOCUMENT = 5

#: Context attributes the rules read; "nope" and "user.nope" are never set.
ATTRIBUTES = [
    "email",
    "age",
    "plan",
    "version",
    "tier",
    "weight",
    "tags",
    "user.tier",
    "user.nope",
    "nope",
    "targetingKey",
    "$flagd.flagKey",
]
DEFAULTS: dict[str, Any] = {
    "boolean": False,
    "string": "dflt",
    "number": 7,
    "object": {"dflt": True},
}
_PY_TYPES = {
    "boolean": FlagType.BOOLEAN,
    "string": FlagType.STRING,
    "number": FlagType.FLOAT,
    "object": FlagType.OBJECT,
}
_VARIANT_NAMES = {
    "boolean": (["on", "off"], ["true", "false"]),
    "string": (["hit", "miss"], ["a", "b", "c"], ["true", "false", "1"]),
    "number": (["low", "high"], ["1", "2", "0"]),
    "object": (["x", "y"], ["blue", "green", "true"]),
}


class Generator:
    """Random flag documents and contexts from one seeded random.Random (deterministic)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.names: list[str] = []
        self.evaluators: list[str] = []

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.random.randrange(len(options))]

    def chance(self, probability: float) -> bool:
        return self.random.random() < probability

    # -- documents -----------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        self.evaluators = [f"ev{index}" for index in range(self.random.randrange(3))]
        flags = {f"flag-{index}": self.flag() for index in range(1 + self.random.randrange(3))}
        document: dict[str, Any] = {"flags": flags}
        if self.evaluators:
            self.names = ["hit", "miss", "on", "off", "a", "b", "x", "low"]
            document["$evaluators"] = {name: self.rule(2) for name in self.evaluators}
        if self.chance(0.15):
            document["metadata"] = {"flagSetId": "fuzz", "version": "1"}
        return document

    def flag(self) -> dict[str, Any]:
        kind = self.pick(list(_VARIANT_NAMES))
        self.names = list(self.pick(_VARIANT_NAMES[kind]))
        flag: dict[str, Any] = {
            "state": "DISABLED" if self.chance(0.08) else "ENABLED",
            "variants": {name: self.variant_value(kind, name) for name in self.names},
        }
        roll = self.random.random()
        if roll < 0.8:
            flag["defaultVariant"] = self.pick(self.names)
        elif roll < 0.9:
            flag["defaultVariant"] = None
        elif roll < 0.95:
            flag["defaultVariant"] = "ghost"
        roll = self.random.random()
        if roll < 0.08:
            flag["targeting"] = {}
        elif roll < 0.92:
            flag["targeting"] = self.targeting()
        if self.chance(0.2):
            flag["metadata"] = {"team": "fuzz", "weight": 3, "beta": True}
        return flag

    def variant_value(self, kind: str, name: str) -> Any:
        if kind == "boolean":
            return name in ("on", "true")
        if kind == "string":
            return name.upper() if self.chance(0.5) else f"value-{name}"
        if kind == "number":
            return self.pick([0, 1, 2, 2.5, -3, 100, 0.1])
        return {"colour": name, "n": self.random.randrange(5)}

    def targeting(self) -> dict[str, Any]:
        rule = self.rule(3)
        if isinstance(rule, dict):
            return rule
        return {"if": [self.condition(2), rule, self.variant_name()]}

    # -- rules that name a variant ---------------------------------------------------------

    def variant_name(self) -> Any:
        roll = self.random.random()
        if roll < 0.75:
            return self.pick(self.names)
        if roll < 0.82:
            return None
        if roll < 0.88:
            return "ghost"
        if roll < 0.95:
            return self.pick([True, False])
        return self.pick([1, 0, 2.0])

    def rule(self, depth: int) -> Any:
        """An expression whose value is a variant name (or something that is not one)."""
        if depth <= 0:
            return self.variant_name()
        roll = self.random.random()
        if roll < 0.30:
            return self.if_rule(depth)
        if roll < 0.52:
            return self.fractional(depth)
        if roll < 0.58:
            name = str(self.pick(self.names))
            cut = self.random.randrange(len(name) + 1)
            return {"cat": [name[:cut], name[cut:]] if self.chance(0.8) else [name]}
        if roll < 0.66:
            if self.chance(0.5):
                return {"var": self.pick(["plan", "nope", "tier"])}
            return {"var": [self.pick(["plan", "nope"]), self.variant_name()]}
        if roll < 0.72 and self.evaluators:
            return {"$ref": self.pick(self.evaluators)}
        if roll < 0.78:
            return {self.pick(["or", "and"]): [self.condition(depth - 1), self.variant_name()]}
        if roll < 0.86:
            return self.condition(depth - 1)  # true/false name the variants "true"/"false"
        return self.variant_name()

    def if_rule(self, depth: int) -> dict[str, Any]:
        shape = self.random.random()
        if shape < 0.6:
            return {"if": [self.condition(depth - 1), self.rule(depth - 1), self.rule(depth - 1)]}
        if shape < 0.75:
            return {"if": [self.condition(depth - 1), self.rule(depth - 1)]}
        if shape < 0.9:
            return {
                "if": [
                    self.condition(depth - 1),
                    self.rule(depth - 1),
                    self.condition(depth - 1),
                    self.rule(depth - 1),
                    self.rule(depth - 1),
                ]
            }
        return {"if": [self.condition(depth - 1)]}

    def fractional(self, depth: int) -> dict[str, Any]:
        buckets: list[Any] = []
        for _ in range(1 + self.random.randrange(4)):
            name = self.pick(self.names) if self.chance(0.9) else self.variant_name()
            roll = self.random.random()
            if roll < 0.6:
                buckets.append([name, self.random.randrange(0, 101)])
            elif roll < 0.7:
                buckets.append([name])
            elif roll < 0.8:
                buckets.append([name, {"var": "weight"}])
            elif roll < 0.88:
                buckets.append([name, {"-": [100, {"var": "weight"}]}])
            elif roll < 0.92:
                buckets.append([{"var": "plan"}, 50])
            elif roll < 0.96:
                buckets.append([name, self.pick([-5, 12.5, "30", None])])
            else:
                buckets.append([name, 0])
        roll = self.random.random()
        if roll < 0.55:
            return {"fractional": buckets}
        if roll < 0.75:
            key: Any = {"var": self.pick(["email", "nope", "targetingKey", "age"])}
        elif roll < 0.9:
            key = {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}
        elif roll < 0.95:
            key = self.pick(["fixed", 3])
        else:
            key = self.if_rule(depth)
        return {"fractional": [key, *buckets]}

    # -- conditions -----------------------------------------------------------------------

    def condition(self, depth: int) -> Any:
        roll = self.random.random()
        if depth <= 0 or roll < 0.30:
            return self.comparison()
        if roll < 0.38:
            return {"in": [self.pick(["@example.com", "corp", "a"]), {"var": "email"}]}
        if roll < 0.44:
            return {"in": [self.operand(), ["gold", "silver", 1, True, "hit"]]}
        if roll < 0.52:
            operator = self.pick(["starts_with", "ends_with"])
            return {
                operator: [
                    {"var": self.pick(["email", "plan", "nope", "age"])},
                    self.pick(["a", "bob", ".test", "", "@example.com"]),
                ]
            }
        if roll < 0.60:
            version = self.pick(["1.0.0", "2.0.0", "1.2.3-beta.1", "v1.0.0", "1.2", "1"])
            operator = self.pick(["=", "!=", ">", "<", ">=", "<=", "~", "^"])
            return {"sem_ver": [{"var": self.pick(["version", "nope"])}, operator, version]}
        if roll < 0.68:
            return {
                self.pick(["and", "or"]): [
                    self.condition(depth - 1) for _ in range(1 + self.random.randrange(3))
                ]
            }
        if roll < 0.74:
            inner = self.condition(depth - 1)
            return {"!": inner if self.chance(0.5) else [inner]}
        if roll < 0.78:
            return {"!!": [{"var": self.pick(["tier", "tags", "nope", "age"])}]}
        if roll < 0.82:
            low, high = sorted(self.random.sample(range(0, 100), 2))
            return {self.pick(["<", "<="]): [low, {"var": self.pick(["age", "weight"])}, high]}
        if roll < 0.85:
            return {"missing": self.random.sample(["email", "age", "nope"], 2)}
        if roll < 0.88 and self.evaluators:
            return {"$ref": self.pick(self.evaluators)}
        if roll < 0.91:
            return {"var": self.pick(["tier", "nope", "tags"])}
        if roll < 0.95:
            return self.pick([True, False, 0, 1, "", "x", [], None])
        if roll < 0.97:
            return {}  # the official schema refuses it; so must we
        return {">": [{"var": "$flagd.timestamp"}, 1_000_000]}

    def comparison(self) -> dict[str, Any]:
        operator = self.pick(["==", "===", "!=", "!==", "<", "<=", ">", ">="])
        return {operator: [self.operand(), self.operand()]}

    def operand(self) -> Any:
        roll = self.random.random()
        if roll < 0.5:
            name = self.pick(ATTRIBUTES)
            return {"var": [name, self.literal()]} if self.chance(0.15) else {"var": name}
        if roll < 0.6:
            return {
                self.pick(["+", "-", "*"]): [
                    {"var": self.pick(["age", "weight"])},
                    self.random.randrange(10),
                ]
            }
        return self.literal()

    def literal(self) -> Any:
        return self.pick(
            [
                0,
                1,
                18,
                50,
                17.5,
                -1,
                "18",
                "gold",
                "",
                "a@example.com",
                True,
                False,
                None,
                "flag-0",
                "hit",
            ]
        )

    # -- contexts -------------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        values: dict[str, Callable[[], Any]] = {
            "targetingKey": lambda: self.pick(
                ["jane@company.com", "user-1", "", "ü-ñ", str(self.random.randrange(10_000))]
            ),
            "email": lambda: self.pick(["a@example.com", "bob@corp.test", "x", "", "corp"]),
            "age": lambda: self.pick([self.random.randrange(100), 17.5, "18", "x", True]),
            "plan": lambda: self.pick(["hit", "miss", "on", "a", "x", "low", "ghost", "", 1]),
            "version": lambda: self.pick(
                ["1.0.0", "2.1.3", "1.2.3-beta.1", "v1.0.0", "1.2", "garbage", "10.0.0", 2]
            ),
            "tier": lambda: self.pick(["gold", "silver", 1, 0, True, False, None, ""]),
            "weight": lambda: self.pick(
                [0, 25, 50, 100, 150, -10, "30", 12.5, self.random.randrange(101)]
            ),
            "tags": lambda: self.random.sample(["gold", "beta", "hit"], self.random.randrange(3)),
            "user": lambda: {"tier": self.pick(["gold", 1, None])},
        }
        return {name: make() for name, make in values.items() if self.chance(0.75)}


@dataclass(frozen=True)
class Case:
    flag: str
    type: str
    context: dict[str, Any]

    def to_node(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "type": self.type,
            "default": DEFAULTS[self.type],
            "context": self.context,
        }


@dataclass
class Generated:
    document: dict[str, Any]
    accepted: bool
    refused_for_node: bool = False
    cases: list[Case] = field(default_factory=list)


def _flag_type(flag: dict[str, Any]) -> str:
    value = next(iter(flag["variants"].values()))
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "object"


def _cases(generator: Generator, document: dict[str, Any]) -> list[Case]:
    contexts = [generator.context() for _ in range(CONTEXTS_PER_DOCUMENT)]
    cases: list[Case] = []
    for key, flag in document["flags"].items():
        natural = _flag_type(flag)
        cases.extend(Case(key, natural, context) for context in contexts)
        other = generator.pick([kind for kind in DEFAULTS if kind != natural])
        cases.append(Case(key, other, contexts[0]))  # the wrong type: TYPE_MISMATCH
    cases.append(Case("no-such-flag", "string", contexts[0]))
    return cases


def generate() -> list[Generated]:
    generator = Generator(SEED)
    out = []
    for _ in range(DOCUMENTS):
        document = generator.document()
        result = validate_contents({"doc.flagd.json": json.dumps(document).encode()})
        generated = Generated(
            document, result.ok, any(NODE_REFUSES in issue.message for issue in result.errors)
        )
        if generated.accepted:
            generated.cases = _cases(generator, document)
        out.append(generated)
    return out


# -- evaluation -------------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """JSON values with one number type (JS has one; Python's float getter returns floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return {key: _canonical(item) for key, item in value.items()}


def _answer(value: Any, variant: Any, reason: Any, error_code: Any) -> dict[str, Any]:
    return {
        "value": _canonical(value),
        "variant": variant,
        "reason": None if reason is None else str(reason),
        "errorCode": None if error_code is None else str(error_code),
    }


def _python_answer(client: OpenFeatureClient, case: Case) -> dict[str, Any]:
    attributes = dict(case.context)
    targeting_key = attributes.pop("targetingKey", None)
    details = client.evaluate_flag_details(
        _PY_TYPES[case.type],
        case.flag,
        DEFAULTS[case.type],
        EvaluationContext(targeting_key=targeting_key, attributes=attributes),
    )
    return _answer(details.value, details.variant, details.reason, details.error_code)


def _client(provider: FeatureProvider, domain: str) -> OpenFeatureClient:
    openfeature_api.set_provider_and_wait(provider, domain=domain)  # replaces the last one
    return openfeature_api.get_client(domain)


def _run_node(batch: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["node", str(NODE_DIR / "fuzz.mjs"), str(batch)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"fuzz.mjs failed:\n{result.stderr[-4000:]}"
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines, result.stderr[-4000:]
    assert lines[-1] == {"done": True}, result.stderr[-4000:]
    return lines[:-1]


# -- deliberate exclusions --------------------------------------------------------------------


@dataclass
class Mismatch:
    document: dict[str, Any]
    case: Case
    python: dict[str, Any]
    node: dict[str, Any]
    compiled: dict[str, Any]

    def describe(self) -> str:
        return (
            f"flag {self.case.flag!r} as {self.case.type} with {self.case.context}\n"
            f"  python   {self.python}\n  node     {self.node}\n"
            f"  compiled {self.compiled}\n  document {json.dumps(self.document)}"
        )


@dataclass(frozen=True)
class Exclusion:
    """A known, accepted difference: `applies(mismatch)`, and why it is accepted."""

    name: str
    reason: str
    applies: Callable[[Mismatch], bool]


_LOOSE = frozenset({"==", "!=", "<", "<=", ">", ">="})
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})


def _expanded(rule: Any, evaluators: dict[str, Any]) -> Any:
    """`rule` with each {"$ref": name} replaced by the evaluator (flagd expands one level)."""
    if isinstance(rule, dict):
        if set(rule) == {"$ref"} and rule["$ref"] in evaluators:
            return evaluators[rule["$ref"]]
        return {key: _expanded(value, evaluators) for key, value in rule.items()}
    if isinstance(rule, list):
        return [_expanded(item, evaluators) for item in rule]
    return rule


def _nodes(rule: Any) -> list[tuple[str, Any]]:
    """Every (operator, arguments) in `rule`, outermost first."""
    found: list[tuple[str, Any]] = []
    if isinstance(rule, dict):
        for operator, arguments in rule.items():
            found.append((operator, arguments))
            found.extend(_nodes(arguments))
    elif isinstance(rule, list):
        for item in rule:
            found.extend(_nodes(item))
    return found


def _reads(rule: Any) -> set[str]:
    """Attribute names `var` reads anywhere in `rule`."""
    names = set()
    for operator, arguments in _nodes(rule):
        if operator == "var":
            name = arguments[0] if isinstance(arguments, list) and arguments else arguments
            if isinstance(name, str):
                names.add(name)
    return names


def _absent(context: dict[str, Any], name: str) -> bool:
    """Whether `var` reads null for `name` in `context` (missing, or null on the way)."""
    value: Any = context
    for part in name.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return name != "$flagd.flagKey"
        value = value[part]
    return False


def _rule(mismatch: Mismatch) -> Any:
    flag = mismatch.document["flags"][mismatch.case.flag]
    return _expanded(flag.get("targeting"), mismatch.document.get("$evaluators", {}))


def _operators(mismatch: Mismatch) -> set[str]:
    return {operator for operator, _ in _nodes(_rule(mismatch))}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _node_throws_on_a_non_number(mismatch: Mismatch) -> bool:
    return (
        mismatch.node["errorCode"] == "GENERAL"
        and mismatch.python["errorCode"] != "GENERAL"
        and bool(_operators(mismatch) & (_LOOSE | _ARITHMETIC))
    )


def _null_in_a_comparison(mismatch: Mismatch) -> bool:
    context = mismatch.case.context
    return any(
        operator in _LOOSE | _ARITHMETIC
        and any(_absent(context, name) for name in _reads(arguments))
        for operator, arguments in _nodes(_rule(mismatch))
    )


def _empty_bucketing_key(mismatch: Mismatch) -> bool:
    keyed = any(
        operator == "fractional"
        and isinstance(arguments, list)
        and arguments
        and isinstance(arguments[0], dict)
        for operator, arguments in _nodes(_rule(mismatch))
    )
    return keyed and "" in _strings(mismatch.case.context)


def _non_ascii_bucketing_key(mismatch: Mismatch) -> bool:
    return "fractional" in _operators(mismatch) and any(
        not text.isascii() for text in _strings(mismatch.case.context)
    )


def _boolean_read_as_number(mismatch: Mismatch) -> bool:
    flag = mismatch.document["flags"][mismatch.case.flag]
    return (
        mismatch.case.type == "number"
        and _flag_type(flag) == "boolean"
        and mismatch.node["errorCode"] == "TYPE_MISMATCH"
    )


EXCLUSIONS: list[Exclusion] = [
    Exclusion(
        "node-throws-on-a-non-number",
        "A loose comparison (==, !=, <, <=, >, >=) or arithmetic meeting a value that is no "
        'number in JavaScript next to a number ("gold" == 1, "x" + 1, [] < 2) makes '
        "Node's json-logic-engine 5 throw (ERROR, GENERAL), where Python's JSONLogic compares "
        "like JavaScript (false, NaN). With literals only, the validator refuses the rule; "
        "with a context value the outcome depends on the request. Compare strings with ===.",
        _node_throws_on_a_non_number,
    ),
    Exclusion(
        "null-in-a-comparison-or-arithmetic",
        "A missing (or null) attribute in a loose comparison or arithmetic: Python's JSONLogic "
        '(panzi-json-logic 1.0.1) computes 100 - null as -100 and null <= "" as false, '
        'JavaScript as 100 and true. Give the var a default ({"var": ["w", 0]}) or guard it '
        'with "missing", as the shipped canary flag does.',
        _null_in_a_comparison,
    ),
    Exclusion(
        "empty-bucketing-key",
        'fractional with a bucketing expression that yields "": openfeature-flagd-core 1.0.0 '
        "treats an empty key as none (the default variant), @openfeature/flagd-core 4.0.1 "
        "buckets the empty string.",
        _empty_bucketing_key,
    ),
    Exclusion(
        "non-ascii-bucketing-key",
        "fractional over a key with non-ASCII characters: Python hashes its UTF-8 bytes "
        "(flagd's definition), @openfeature/flagd-core 4.0.1 (imurmurhash) hashes the string's "
        "UTF-16 code units, so such users can land in other buckets in Node.",
        _non_ascii_bucketing_key,
    ),
    Exclusion(
        "boolean-read-as-number",
        "A boolean flag read with Python's float getter: Python's bool is an int, so the "
        "official provider returns 1.0/0.0 where Node reports TYPE_MISMATCH. A caller "
        "question, not a flag one.",
        _boolean_read_as_number,
    ),
]


@dataclass
class Outcome:
    generated: int
    accepted: int
    #: Documents refused by the rule this fuzz test found (operands Node refuses).
    refused_for_node: int
    compared: int
    excluded: dict[str, int]
    mismatches: list[Mismatch]


def compare(tmp_path: Path) -> Outcome:
    """Generate, validate, evaluate in Node (one batch) and Python; classify the differences."""
    generated = generate()
    accepted = [item for item in generated if item.accepted]
    documents = tmp_path / "node"
    documents.mkdir()
    batch = []
    for index, item in enumerate(accepted):
        path = documents / f"{index}.flagd.json"
        path.write_text(json.dumps(item.document), encoding="utf-8")
        batch.append({"path": str(path), "cases": [case.to_node() for case in item.cases]})
    (tmp_path / "batch.json").write_text(json.dumps({"documents": batch}), encoding="utf-8")
    node_lines = _run_node(tmp_path / "batch.json")
    load_errors = [line for line in node_lines if "loadError" in line]
    assert not load_errors, load_errors[:3]
    node_answers = {
        (line["document"], line["case"]): _answer(
            line["value"], line["variant"], line["reason"], line["errorCode"]
        )
        for line in node_lines
    }
    outcome = Outcome(
        len(generated), len(accepted), sum(item.refused_for_node for item in generated), 0, {}, []
    )
    for index, item in enumerate(accepted):
        directory = tmp_path / "py" / str(index)
        directory.mkdir(parents=True)
        (directory / "doc.flagd.json").write_text(json.dumps(item.document), encoding="utf-8")
        store = FlagStore(directory)
        store.reload()
        official = _client(source_fed_provider(store), "fuzz-official")
        compiled = _client(CompiledProvider(store), "fuzz-compiled")
        for position, case in enumerate(item.cases):
            python = _python_answer(official, case)
            node = node_answers[(index, position)]
            ours = _python_answer(compiled, case)
            outcome.compared += 1
            if python == node == ours:
                continue
            found = Mismatch(item.document, case, python, node, ours)
            exclusion = next(
                (rule for rule in EXCLUSIONS if ours == python and rule.applies(found)), None
            )
            if exclusion is None:
                outcome.mismatches.append(found)
            else:
                outcome.excluded[exclusion.name] = outcome.excluded.get(exclusion.name, 0) + 1
    return outcome


def test_accepted_documents_evaluate_alike_in_python_and_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every generated document our validator accepts answers the same value, variant,
    reason and error code in the official Python provider, the compiled evaluator and the
    official Node in-process provider, for every generated context and flag type."""
    _install_node_modules()
    caplog.set_level(logging.CRITICAL, logger="openfeature")  # targeting errors are answers
    outcome = compare(tmp_path)
    print(
        f"fuzz: {outcome.generated} documents, {outcome.accepted} accepted "
        f"({outcome.refused_for_node} refused for operands Node refuses), "
        f"{outcome.compared} evaluations compared, excluded {outcome.excluded}, "
        f"{len(outcome.mismatches)} mismatches"
    )
    assert outcome.accepted >= DOCUMENTS // 4, "the generator should mostly write valid documents"
    assert not outcome.mismatches, (
        f"{len(outcome.mismatches)} mismatches; first ones:\n"
        + "\n".join(mismatch.describe() for mismatch in outcome.mismatches[:5])
    )


NODE_REFUSED_RULES: list[Any] = [
    {"==": ["gold", 1]},
    {"<": ["a@example.com", 1]},
    {"<": [1, "b", 3]},
    {">=": [[], 2]},
    {"+": ["x", 1]},
]
#: The same operators over literals Node takes: numeric strings, strings with strings, null.
NODE_ACCEPTED_RULES: list[Any] = [
    {"==": ["1", 1]},
    {"<": ["a", "b"]},
    {"==": [None, "x"]},
    {"==": [True, 1]},
    {"+": ["3", 1]},
]


def _single(targeting: Any) -> dict[str, Any]:
    return {
        "flags": {
            "f": {
                "state": "ENABLED",
                "variants": {"true": "T", "false": "F"},
                "defaultVariant": "false",
                "targeting": {"if": [targeting, "true", "false"]},
            }
        }
    }


def test_literal_operands_node_refuses_are_refused(tmp_path: Path) -> None:
    """Comparisons and arithmetic over literals that Node refuses (PARSE_ERROR there, false in
    Python) are refused by the validator; the same operators over literals Node takes are not."""
    _install_node_modules()
    batch = []
    for index, rule in enumerate(NODE_REFUSED_RULES + NODE_ACCEPTED_RULES):
        path = tmp_path / f"{index}.flagd.json"
        path.write_text(json.dumps(_single(rule)), encoding="utf-8")
        batch.append(
            {"path": str(path), "cases": [Case("f", "string", {"targetingKey": "u"}).to_node()]}
        )
    (tmp_path / "batch.json").write_text(json.dumps({"documents": batch}), encoding="utf-8")
    node = [line["errorCode"] for line in _run_node(tmp_path / "batch.json")]
    refused = len(NODE_REFUSED_RULES)
    assert node == ["PARSE_ERROR"] * refused + [None] * len(NODE_ACCEPTED_RULES)
    for rule in NODE_REFUSED_RULES:
        result = validate_contents({"f.flagd.json": json.dumps(_single(rule)).encode()})
        assert [NODE_REFUSES in issue.message for issue in result.errors] == [True], rule
    for rule in NODE_ACCEPTED_RULES:
        assert validate_contents({"f.flagd.json": json.dumps(_single(rule)).encode()}).ok, rule
