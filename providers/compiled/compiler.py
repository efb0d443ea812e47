"""Compile one flag's targeting (flagd JSONLogic) into Python closures, once per definition.

A compiled rule is `fn(attributes, targeting_key) -> value` and computes exactly what
flagd-core's interpreter (panzi-json-logic plus flagd's operators) computes for the same context:
the same evaluation order, the same errors, the same mixed-type comparisons, because every
operator either calls the interpreter's own built-in function or is a fast path taken only for
argument types where the result is provably the built-in's (a str against a str, a number
against a number, a bool condition).

Two modes. Most rules only read context attributes, `targetingKey` and `$flagd.flagKey`: they
run on the caller's attributes as they are (no copy). A rule that needs the whole JSONLogic data
object (`$flagd.timestamp`, a computed `var` key, `missing`, or a rare operator left to the
interpreter: `map`, `filter`, `reduce`, `all`, `some`, `none` and unknown ones; arithmetic,
`merge`, `substr` and the like run as the interpreter's own functions) is
compiled in data mode and gets the same dict flagd-core builds per evaluation
(`attributes + {"$flagd": {flagKey, timestamp}, "targetingKey": ...}`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import mmh3
from json_logic import jsonLogic
from json_logic.builtins import (
    BUILTINS,
    greater_than,
    greater_than_or_equal,
    less_than,
    less_than_or_equal,
    not_,
    op_equals,
    op_in,
    op_var,
    to_bool,
    to_string,
)

from providers.compiled.bucketing import (
    MAX_WEIGHT_SUM,
    Generation,
    fractional,
    fractional_operator,
    hash_v2,
)
from providers.compiled.cbor import UnencodableKey, head
from providers.compiled.operators import (
    SEMVER_COMPARATORS,
    ends_with,
    parse_version,
    sem_ver,
    starts_with,
)

__all__ = ["CompiledRule", "Rule", "compile_rule", "interpreter_operations"]

#: A compiled rule: (attributes or data dict, targeting key) -> JSONLogic value.
Rule = Callable[[Any, Any], Any]

_DYNAMIC = object()
#: Forms the interpreter handles itself with a changed data context: left to it.
_INTERPRETED_FORMS = frozenset({"filter", "reduce", "map", "all", "some", "none"})
#: Built-ins that read the data object.
_DATA_OPERATIONS = frozenset({"var", "missing", "missing_some"})
_NUMBER_TYPES = (int, float)


def interpreter_operations(generation: Generation) -> dict[str, Any]:
    """The interpreter's operation table with flagd's operators (for rules left to it)."""
    return {
        **BUILTINS,
        "fractional": fractional_operator(generation),
        "starts_with": starts_with,
        "ends_with": ends_with,
        "sem_ver": sem_ver,
    }


_OPERATIONS = {generation: interpreter_operations(generation) for generation in ("v2", "v3")}


class _Node(NamedTuple):
    fn: Rule
    #: The literal value, or _DYNAMIC for anything computed.
    const: Any = _DYNAMIC
    #: The value's Python truthiness is JSONLogic's (never a float or a dict): bool, None...
    plain: bool = False
    #: For a two-item list `[literal, expression]`: the literal and the expression's rule.
    shape: tuple[Any, Rule] | None = None


@dataclass(frozen=True)
class CompiledRule:
    """A flag's compiled targeting; `needs_data`: call it with flagd's full data dict."""

    fn: Rule
    needs_data: bool


class _NeedsData(Exception):
    """Raised while compiling in attribute mode by a node that needs the data dict."""


def _const(value: Any) -> _Node:
    plain = value is None or type(value) in (bool, int, str, list)
    return _Node(lambda a, t: value, value, plain)


def _is_const(node: _Node) -> bool:
    return node.const is not _DYNAMIC


def _walk(data: Any, props: Sequence[str], default: Any) -> Any:
    """op_var's path walk after its first step (same JavaScript-like rules)."""
    for prop in props:
        if isinstance(data, list | str):
            if prop == "length":
                return len(data)
            try:
                index = int(prop, 10)
            except ValueError:
                return default
            if prop != str(index) or index < 0 or index >= len(data):
                return default
            data = data[index]
        elif isinstance(data, dict):
            data = data.get(prop)
        else:
            return default
    return default if data is None else data


def compile_rule(flag_key: str, targeting: Any, generation: Generation) -> CompiledRule:
    """Compile `targeting` (already $ref-resolved) for flag `flag_key`."""
    try:
        return CompiledRule(
            _Compiler(flag_key, generation, data_mode=False).node(targeting).fn, needs_data=False
        )
    except _NeedsData:
        return CompiledRule(
            _Compiler(flag_key, generation, data_mode=True).node(targeting).fn, needs_data=True
        )


class _Compiler:
    def __init__(self, flag_key: str, generation: Generation, *, data_mode: bool) -> None:
        self.flag_key = flag_key
        self.generation = generation
        self.data_mode = data_mode
        self.operations = _OPERATIONS[generation]

    # -- structure -----------------------------------------------------------------------

    def node(self, logic: Any) -> _Node:
        if isinstance(logic, list):
            items = [self.node(item) for item in logic]
            if all(_is_const(item) for item in items):
                # The items' values, not `logic`: an item may be an operation that folded to a
                # constant ([{"if": []}] is [None], as JSONLogic evaluates it).
                return _const([item.const for item in items])
            fns = tuple(item.fn for item in items)
            shape = None
            if len(items) == 2 and _is_const(items[0]) and not _is_const(items[1]):
                shape = (items[0].const, items[1].fn)
            return _Node(lambda a, t: [fn(a, t) for fn in fns], plain=True, shape=shape)
        if not isinstance(logic, dict) or len(logic) != 1:
            return _const(logic)
        op, args = next(iter(logic.items()))
        if not isinstance(args, list):
            args = [args]
        if op in ("if", "?:"):
            return self.if_(args)
        if op in ("and", "or"):
            return self.and_or(op, args)
        if op in _INTERPRETED_FORMS or not isinstance(op, str):
            return self.interpreted(logic)
        builder = _BUILDERS.get(op)
        if builder is not None:
            return builder(self, [self.node(arg) for arg in args])
        if op == "-" and len(args) == 2:
            return self.minus([self.node(arg) for arg in args])
        if op in BUILTINS and op not in _DATA_OPERATIONS:
            return self.call(BUILTINS[op], [self.node(arg) for arg in args])
        return self.interpreted(logic)

    def interpreted(self, logic: Any) -> _Node:
        if not self.data_mode:
            raise _NeedsData
        operations = self.operations
        return _Node(lambda d, t: jsonLogic(logic, d, operations))

    def call(
        self, operation: Any, args: list[_Node], data: bool = False, plain: bool = False
    ) -> _Node:
        """The built-in `operation` over the evaluated args (data: it reads the data dict)."""
        if data and not self.data_mode:
            raise _NeedsData
        fns = tuple(arg.fn for arg in args)
        if data:
            return _Node(lambda d, t: operation(d, *[fn(d, t) for fn in fns]), plain=plain)
        if len(fns) == 1:
            (f0,) = fns
            return _Node(lambda a, t: operation(None, f0(a, t)), plain=plain)
        if len(fns) == 2:
            f0, f1 = fns
            return _Node(lambda a, t: operation(None, f0(a, t), f1(a, t)), plain=plain)
        return _Node(lambda a, t: operation(None, *[fn(a, t) for fn in fns]), plain=plain)

    # -- control flow --------------------------------------------------------------------

    def if_(self, raw: list[Any]) -> _Node:
        args = [self.node(arg) for arg in raw]
        if not args:
            return _const(None)
        if len(args) == 1:
            return args[0]
        otherwise = args[-1] if len(args) % 2 else _const(None)
        pairs = [(args[index], args[index + 1]) for index in range(0, len(args) - 1, 2)]
        plain = otherwise.plain and all(then.plain for _, then in pairs)
        if len(pairs) == 1:
            return _Node(_branch(*pairs[0], otherwise), plain=plain)
        conditions = tuple(
            (cond.fn if cond.plain else _truthy(cond.fn), then.fn) for cond, then in pairs
        )
        other = otherwise.fn

        def chain(a: Any, t: Any) -> Any:
            for condition, then in conditions:
                if condition(a, t):
                    return then(a, t)
            return other(a, t)

        return _Node(chain, plain=plain)

    def and_or(self, op: str, raw: list[Any]) -> _Node:
        args = [self.node(arg) for arg in raw]
        if not args:
            return _const(None)
        if len(args) == 1:
            return args[0]
        plain = all(arg.plain for arg in args)
        fns = tuple(arg.fn for arg in args)
        if plain and len(fns) == 2:  # Python's and/or give JSONLogic's answer for plain values
            f0, f1 = fns
            if op == "and":
                return _Node(lambda a, t: f0(a, t) and f1(a, t), plain=True)
            return _Node(lambda a, t: f0(a, t) or f1(a, t), plain=True)
        if op == "and":

            def all_of(a: Any, t: Any) -> Any:
                current = None
                for fn in fns:
                    current = fn(a, t)
                    if not_(current):
                        return current
                return current

            return _Node(all_of, plain=plain)

        def any_of(a: Any, t: Any) -> Any:
            current = None
            for fn in fns:
                current = fn(a, t)
                if to_bool(current):
                    return current
            return current

        return _Node(any_of, plain=plain)

    # -- operators -----------------------------------------------------------------------

    def var(self, args: list[_Node]) -> _Node:
        if (
            not args
            or len(args) > 2
            or not _is_const(args[0])
            or not isinstance(args[0].const, str)
            or args[0].const == ""
        ):
            return self.call(op_var, args, data=True)
        props = args[0].const.split(".")
        default = args[1] if len(args) == 2 else _const(None)
        first, rest = props[0], props[1:]
        flag_key = self.flag_key
        if self.data_mode:
            get: Rule = lambda d, t: d.get(first)  # noqa: E731
        elif first == "targetingKey":
            get = lambda a, t: t  # noqa: E731
        elif first == "$flagd":
            if not rest or rest[0] != "flagKey":
                raise _NeedsData
            rest = rest[1:]
            get = lambda a, t: flag_key  # noqa: E731
        else:
            get = lambda a, t: a.get(first)  # noqa: E731
        if not _is_const(default):
            default_fn = default.fn
            return _Node(lambda a, t: _walk(get(a, t), rest, default_fn(a, t)))
        value = default.const
        if rest:
            return _Node(lambda a, t: _walk(get(a, t), rest, value))
        if value is None:
            return _Node(get)

        def with_default(a: Any, t: Any) -> Any:
            found = get(a, t)
            return value if found is None else found

        return _Node(with_default)

    def missing(self, args: list[_Node]) -> _Node:
        keys = _plain_keys(args)
        if keys is None or self.data_mode:
            return self.call(BUILTINS["missing"], args, data=True, plain=True)
        # Plain attribute names (no dots, not targetingKey/$flagd): op_var is one lookup.
        return _Node(
            lambda a, t: [key for key in keys if (v := a.get(key)) is None or v == ""], plain=True
        )

    def missing_some(self, args: list[_Node]) -> _Node:
        return self.call(BUILTINS["missing_some"], args, data=True, plain=True)

    def equals(self, args: list[_Node], negate: bool = False) -> _Node:
        operation = BUILTINS["!="] if negate else op_equals
        if len(args) != 2:
            return self.call(operation, args, plain=True)
        left, right = args
        if _is_const(right) and type(right.const) is str and not _is_const(left):
            fn, text = left.fn, right.const

            def left_dynamic(a: Any, t: Any) -> bool:
                value = fn(a, t)
                if type(value) is str:
                    return (value != text) if negate else (value == text)
                return operation(None, value, text)  # type: ignore[no-any-return]

            return _Node(left_dynamic, plain=True)
        if _is_const(left) and type(left.const) is str and not _is_const(right):
            fn, text = right.fn, left.const

            def right_dynamic(a: Any, t: Any) -> bool:
                value = fn(a, t)
                if type(value) is str:
                    return (text != value) if negate else (text == value)
                return operation(None, text, value)  # type: ignore[no-any-return]

            return _Node(right_dynamic, plain=True)
        return self.call(operation, args, plain=True)

    def not_equals(self, args: list[_Node]) -> _Node:
        return self.equals(args, negate=True)

    def compare(self, name: str, args: list[_Node]) -> _Node:
        operation = BUILTINS[name]
        if len(args) != 2:
            return self.call(operation, args, plain=True)
        two = _TWO_ARG[name]
        left, right = args
        native = _NATIVE[name]
        if _is_const(right) and type(right.const) in _NUMBER_TYPES and not _is_const(left):
            fn, number = left.fn, right.const

            def number_right(a: Any, t: Any) -> Any:
                value = fn(a, t)
                if type(value) is int or type(value) is float:
                    return native(value, number)
                return two(value, number)

            return _Node(number_right, plain=True)
        if _is_const(left) and type(left.const) in _NUMBER_TYPES and not _is_const(right):
            fn, number = right.fn, left.const

            def number_left(a: Any, t: Any) -> Any:
                value = fn(a, t)
                if type(value) is int or type(value) is float:
                    return native(number, value)
                return two(number, value)

            return _Node(number_left, plain=True)
        return self.call(operation, args, plain=True)

    def in_(self, args: list[_Node]) -> _Node:
        if len(args) != 2 or _is_const(args[0]) or not _is_const(args[1]):
            return self.call(op_in, args, plain=True)
        fn, haystack = args[0].fn, args[1].const
        if isinstance(haystack, list):
            if all(type(item) is str for item in haystack):
                strings = frozenset(haystack)
                return _Node(
                    lambda a, t: (v in strings) if type(v := fn(a, t)) is str else v in haystack,
                    plain=True,
                )
            return _Node(lambda a, t: fn(a, t) in haystack, plain=True)
        if isinstance(haystack, str):
            return _Node(
                lambda a, t: (v if type(v := fn(a, t)) is str else to_string(v)) in haystack,
                plain=True,
            )
        return self.call(op_in, args, plain=True)

    def cat(self, args: list[_Node]) -> _Node:
        fns = tuple(arg.fn for arg in args)
        return _Node(
            lambda a, t: "".join([v if type(v := fn(a, t)) is str else to_string(v) for fn in fns]),
            plain=True,
        )

    def not_op(self, args: list[_Node]) -> _Node:
        if len(args) == 1:
            (arg,) = args
            fn = arg.fn
            if arg.plain:
                return _Node(lambda a, t: not fn(a, t), plain=True)
            return _Node(lambda a, t: not_(fn(a, t)), plain=True)
        return self.call(BUILTINS["!"], args, plain=True)

    def bool_op(self, args: list[_Node]) -> _Node:
        if len(args) == 1:
            (arg,) = args
            fn = arg.fn
            if arg.plain:
                return _Node(lambda a, t: bool(fn(a, t)), plain=True)
            return _Node(lambda a, t: to_bool(fn(a, t)), plain=True)
        return self.call(BUILTINS["!!"], args, plain=True)

    def starts_ends(self, name: str, args: list[_Node]) -> _Node:
        operation = starts_with if name == "starts_with" else ends_with
        if len(args) == 2 and _is_const(args[1]) and isinstance(args[1].const, str):
            fn, affix = args[0].fn, args[1].const
            if name == "starts_with":
                return _Node(
                    lambda a, t: v.startswith(affix) if isinstance(v := fn(a, t), str) else None,
                    plain=True,
                )
            return _Node(
                lambda a, t: v.endswith(affix) if isinstance(v := fn(a, t), str) else None,
                plain=True,
            )
        return self.call(operation, args, plain=True)

    def sem_ver(self, args: list[_Node]) -> _Node:
        if len(args) != 3 or not _is_const(args[1]) or not _is_const(args[2]) or _is_const(args[0]):
            return self.call(sem_ver, args, plain=True)
        fn, op, right = args[0].fn, args[1].const, parse_version(args[2].const)
        comparator = SEMVER_COMPARATORS.get(op) if isinstance(op, str) else None
        if comparator is None or right is None:
            return _Node(lambda a, t: (fn(a, t), None)[1], plain=True)

        def compare(a: Any, t: Any) -> bool | None:
            left = parse_version(fn(a, t))
            return None if left is None else comparator(left, right)

        return _Node(compare, plain=True)

    def minus(self, args: list[_Node]) -> _Node:
        """`{"-": [number, x]}` (the "rest of the weight" idiom): native when x is a number."""
        left, right = args
        operation = BUILTINS["-"]
        if not (_is_const(left) and type(left.const) in _NUMBER_TYPES) or _is_const(right):
            return self.call(operation, args)
        number, fn = left.const, right.fn

        def subtract(a: Any, t: Any) -> Any:
            value = fn(a, t)
            if type(value) is int or type(value) is float:
                return number - value
            return operation(None, number, value)

        return _Node(subtract)

    def dynamic_shorthand(self, variants: list[Any], weights: list[Rule]) -> _Node:
        """Shorthand fractional whose weights are computed (`["canary", {"var": "w"}]`)."""
        generation, flag_key = self.generation, self.flag_key
        count = len(variants)
        pairs = tuple(zip(variants, weights, strict=True))

        def shorthand(a: Any, t: Any) -> Any:
            values = [weight(a, t) for weight in weights]
            if generation == "v2":
                if not t:
                    return None
                hash_value = hash_v2(flag_key + t)
            else:
                if not isinstance(t, str) or not t:
                    return None
                return fractional(
                    generation,
                    flag_key,
                    t,
                    [[v, w] for (v, _), w in zip(pairs, values, strict=True)],
                )
            total = 0
            for index in range(count):
                value = values[index]
                if isinstance(value, bool) or not isinstance(value, int):
                    return None
                if value < 0:
                    values[index] = value = 0
                total += value
            if total > MAX_WEIGHT_SUM:
                return None
            bucket = (hash_value * total) >> 32
            end = 0
            for index in range(count):
                end += values[index]
                if bucket < end:
                    return variants[index]
            return None

        if generation == "v2" and count == 2:
            return _Node(_two_way_v2(flag_key, variants, weights, shorthand))
        return _Node(shorthand)

    def fractional(self, args: list[_Node]) -> _Node:
        generation, flag_key = self.generation, self.flag_key
        fns = tuple(arg.fn for arg in args)
        generic = _Node(lambda a, t: fractional(generation, flag_key, t, [fn(a, t) for fn in fns]))
        if not args:
            return _const(None)
        first = args[0]
        if not _is_const(first):
            # A computed first fraction (`["canary", {"var": "w"}]`): the shorthand either way.
            # Anything else computed there may be a bucket-by value: the generic call decides.
            dynamic = _dynamic_weights(args) if first.shape is not None else None
            return generic if dynamic is None else self.dynamic_shorthand(*dynamic)
        bucket_by = (
            isinstance(first.const, str)
            if generation == "v2"
            else not isinstance(first.const, list)
        )
        fractions = args[1:] if bucket_by else args
        if not all(_is_const(fraction) for fraction in fractions):
            dynamic = _dynamic_weights(fractions) if not bucket_by else None
            if dynamic is None:
                return generic
            return self.dynamic_shorthand(*dynamic)
        select = _static_selector([fraction.const for fraction in fractions], generation)
        if bucket_by:
            # A constant key: the hash is constant too (still raised lazily when unencodable).
            return _Node(
                lambda a, t: fractional(
                    generation, flag_key, t, [first.const, *[f.const for f in fractions]]
                )
            )
        if generation == "v2":

            def shorthand_v2(a: Any, t: Any) -> Any:
                if not t:
                    return None
                return select(hash_v2(flag_key + t))

            return _Node(shorthand_v2)
        try:
            prefix = _cbor_pair_head(flag_key)
        except UnencodableKey:
            return generic

        def shorthand_v3(a: Any, t: Any) -> Any:
            if not isinstance(t, str) or not t:
                return None
            try:
                key = t.encode("utf-8")
            except UnicodeEncodeError:
                return None
            return select(mmh3.hash(prefix + head(3, len(key)) + key, 0, False))

        return _Node(shorthand_v3)


def _two_way_v2(flag_key: str, variants: list[Any], weights: list[Rule], general: Rule) -> Rule:
    """The v2 shorthand split two ways by computed weights (the weighted canary's
    `[["canary", w], ["stable", {"-": [100, w]}]]`), without the general case's lists: 1.37 to
    0.90 µs a decision. Weights that are not plain ints go to `general`, which gives the answer."""
    first, second = variants
    first_weight, second_weight = weights

    def two_way(a: Any, t: Any) -> Any:
        w0, w1 = first_weight(a, t), second_weight(a, t)
        if type(w0) is not int or type(w1) is not int:
            return general(a, t)  # bools, floats, strings, None: as the general case decides
        if not t:
            return None
        if w0 < 0:
            w0 = 0
        total = w0 + (w1 if w1 > 0 else 0)
        if total > MAX_WEIGHT_SUM:
            return None
        bucket = (hash_v2(flag_key + t) * total) >> 32
        if bucket < w0:
            return first
        return second if bucket < total else None

    return two_way


def _plain_keys(args: list[_Node]) -> tuple[str, ...] | None:
    """`missing`'s keys when they are literal attribute names a single lookup finds."""
    raw: Any = [arg.const for arg in args]
    if len(args) == 1 and isinstance(raw[0], list):
        raw = raw[0]
    if not args or any(not _is_const(arg) for arg in args):
        return None
    for key in raw:
        if type(key) is not str or not key or "." in key or key in ("targetingKey", "$flagd"):
            return None
    return tuple(raw)


def _dynamic_weights(fractions: list[_Node]) -> tuple[list[Any], list[Rule]] | None:
    """(variants, weight rules) when every fraction is `[literal variant, weight expression]`
    or a literal `[variant, weight]` / `[variant]` (weight 1), as `pick` reads them."""
    variants: list[Any] = []
    weights: list[Rule] = []
    for fraction in fractions:
        if _is_const(fraction):
            item = fraction.const
            if not isinstance(item, list) or not 1 <= len(item) <= 2:
                return None
            variants.append(item[0])
            weights.append(_const(item[1] if len(item) == 2 else 1).fn)
        elif fraction.shape is None:
            return None
        else:
            variant, weight = fraction.shape
            variants.append(variant)
            weights.append(weight)
    return variants, weights


def _cbor_pair_head(flag_key: str) -> bytes:
    """CBOR of `[flag_key, ` (an array of two, then the key as text): the v3 shorthand prefix."""
    try:
        data = flag_key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnencodableKey("the flag key is not valid Unicode") from exc
    return b"\x82" + head(3, len(data)) + data


def _static_selector(fractions: list[Any], generation: Generation) -> Callable[[int], Any]:
    """hash -> variant for constant fractions (None when they can never match)."""
    variants: list[Any] = []
    ends: list[int] = []
    total = 0
    for fraction in fractions:
        if not isinstance(fraction, list | tuple) or not fraction or len(fraction) > 2:
            return lambda hash_value: None
        weight = 1
        if len(fraction) == 2:
            raw = fraction[1]
            if isinstance(raw, bool) or not isinstance(raw, int):
                return lambda hash_value: None
            weight = max(0, raw)
        total += weight
        variants.append(fraction[0])
        ends.append(total)
    if total > MAX_WEIGHT_SUM or (generation == "v3" and total <= 0):
        return lambda hash_value: None
    count = len(variants)

    def select(hash_value: int) -> Any:
        index = bisect_right(ends, (hash_value * total) >> 32)
        return variants[index] if index < count else None

    return select


def _branch(cond: _Node, then: _Node, other: _Node) -> Rule:
    """One `if` condition with its two outcomes, literals inlined."""
    test = cond.fn if cond.plain else _truthy(cond.fn)
    if _is_const(then) and _is_const(other):
        yes, no = then.const, other.const
        return lambda a, t: yes if test(a, t) else no
    if _is_const(then):
        yes, other_fn = then.const, other.fn
        return lambda a, t: yes if test(a, t) else other_fn(a, t)
    if _is_const(other):
        then_fn, no = then.fn, other.const
        return lambda a, t: then_fn(a, t) if test(a, t) else no
    then_fn, other_fn = then.fn, other.fn
    return lambda a, t: then_fn(a, t) if test(a, t) else other_fn(a, t)


def _truthy(fn: Rule) -> Rule:
    return lambda a, t: to_bool(fn(a, t))


_TWO_ARG = {
    "<": less_than,
    ">": greater_than,
    "<=": less_than_or_equal,
    ">=": greater_than_or_equal,
}
_NATIVE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, y: x < y,
    ">": lambda x, y: x > y,
    "<=": lambda x, y: x <= y,
    ">=": lambda x, y: x >= y,
}


def _strict(negate: bool) -> Callable[[_Compiler, list[_Node]], _Node]:
    def build(compiler: _Compiler, args: list[_Node]) -> _Node:
        if len(args) == 2:
            f0, f1 = args[0].fn, args[1].fn
            if negate:
                return _Node(lambda a, t: f0(a, t) != f1(a, t), plain=True)
            return _Node(lambda a, t: f0(a, t) == f1(a, t), plain=True)
        return compiler.call(BUILTINS["!==" if negate else "==="], args, plain=True)

    return build


_BUILDERS: dict[str, Callable[[_Compiler, list[_Node]], _Node]] = {
    "var": _Compiler.var,
    "missing": _Compiler.missing,
    "missing_some": _Compiler.missing_some,
    "==": _Compiler.equals,
    "!=": _Compiler.not_equals,
    "===": _strict(negate=False),
    "!==": _strict(negate=True),
    "<": lambda c, args: c.compare("<", args),
    ">": lambda c, args: c.compare(">", args),
    "<=": lambda c, args: c.compare("<=", args),
    ">=": lambda c, args: c.compare(">=", args),
    "in": _Compiler.in_,
    "cat": _Compiler.cat,
    "!": _Compiler.not_op,
    "!!": _Compiler.bool_op,
    "starts_with": lambda c, args: c.starts_ends("starts_with", args),
    "ends_with": lambda c, args: c.starts_ends("ends_with", args),
    "sem_ver": _Compiler.sem_ver,
    "fractional": _Compiler.fractional,
}
