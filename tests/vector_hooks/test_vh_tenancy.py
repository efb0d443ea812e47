"""Tenant ids, Milvus expression building and caller-filter checks, without a backend."""

from __future__ import annotations

import pytest

from vector_hooks.backends._milvus_expr import (
    check_filter,
    compose,
    in_list,
    quote,
    tenant_condition,
)
from vector_hooks.errors import InvalidFilter, InvalidTenantId, RequestRefused, UnsafeArgument
from vector_hooks.milvus import supports_filter_params
from vector_hooks.tenancy import TENANT_ID_MAX_LENGTH, validate_tenant_id


@pytest.mark.parametrize("tenant", ["acme", "t1", "ACME_eu-2", "a", "x" * TENANT_ID_MAX_LENGTH])
def test_valid_tenant_ids_pass_unchanged(tenant: str) -> None:
    """Ids from the documented alphabet within the length limit are accepted as they are."""
    assert validate_tenant_id(tenant) == tenant


@pytest.mark.parametrize(
    ("tenant", "fragment"),
    [
        ('t1" or tenant_id != "', "character '\"' at position 2"),
        ("", "must not be empty"),
        ("x" * (TENANT_ID_MAX_LENGTH + 1), "the limit is 64"),
        ("acme\n", "character '\\n' at position 4"),
        ("tenant one", "character ' ' at position 6"),
        ("caf\u00e9", "character '\u00e9' at position 3"),
        ("a\\b", "character '\\\\' at position 1"),
        ("\u0661\u0662", "position 0"),  # Arabic-Indic digits are digits, but not ASCII
        (42, "must be a string, not int"),
        (None, "must be a string, not NoneType"),
    ],
)
def test_invalid_tenant_ids_are_refused_naming_the_problem(tenant: object, fragment: str) -> None:
    """Every id outside the alphabet or length is refused with a message saying why."""
    with pytest.raises(InvalidTenantId) as caught:
        validate_tenant_id(tenant)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, RequestRefused)


def test_quote_escapes_quotes_backslashes_and_line_breaks() -> None:
    """String literals are escaped so no value can end the literal early."""
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    with pytest.raises(UnsafeArgument, match="control character"):
        quote("a\x00b")


def test_tenant_condition_as_literal_and_as_template_parameter() -> None:
    """The tenant is a quoted literal, or a {vh_tenant} placeholder on servers with templates."""
    assert tenant_condition("tenant_id", "acme", as_param=False) == 'tenant_id == "acme"'
    assert tenant_condition("tenant_id", "acme", as_param=True) == "tenant_id == {vh_tenant}"


def test_compose_wraps_the_caller_filter_in_parentheses() -> None:
    """The tenant condition is ANDed around the caller filter, each side in parentheses."""
    assert compose('t == "a"', 'lang == "en" or n > 1') == '(t == "a") and (lang == "en" or n > 1)'
    assert compose('t == "a"', "") == 't == "a"'


@pytest.mark.parametrize(
    "expr",
    [
        'lang == "en"',
        "n > 3 and (m < 2 or m > 5)",
        'title like "a)%"',
        "id in [1, 2]",
        "x == 'it\\'s'",
        '  lang == "(" ',
    ],
)
def test_balanced_filters_are_accepted(expr: str) -> None:
    """Filters whose brackets balance outside string literals pass the check."""
    assert check_filter(expr) == expr.strip()


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ('lang == "en") or (tenant_id != "x"', "unbalanced ')' at column 13"),
        ("n > 0 or (1 == 1", "unclosed '('"),
        ('lang == "en', "unterminated string"),
        ('lang == "e\nn"', "line break"),
        ("n > {x}", "template parameters"),
        ("n > 1 \\ or", "backslash outside"),
        ("n > 1\x00", "control character"),
        ("[n > 1)", "unbalanced ')'"),
    ],
)
def test_filters_that_could_escape_their_parentheses_are_refused(expr: str, fragment: str) -> None:
    """Unbalanced brackets, broken literals and stray characters are refused with the spot."""
    with pytest.raises(InvalidFilter) as caught:
        check_filter(expr)
    assert fragment in str(caught.value)


def test_template_placeholders_are_allowed_where_the_server_supports_them() -> None:
    """With filter_params support, {name} placeholders pass the check."""
    assert check_filter("n > {low}", templates=True) == "n > {low}"


def test_in_list_quotes_string_ids_and_refuses_other_types() -> None:
    """Primary-key lists quote strings, keep integers and refuse anything else."""
    assert in_list("id", [1, 'a"b']) == 'id in [1, "a\\"b"]'
    with pytest.raises(UnsafeArgument):
        in_list("id", [1.5])
    with pytest.raises(UnsafeArgument):
        in_list("id", [True])


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("milvus_lite-3.2.2", False),
        ("v2.4.9", False),
        ("v2.5.0", True),
        ("2.6.1", True),
        ("v3.0.0", True),
        ("", False),
        ("unknown", False),
    ],
)
def test_filter_params_support_follows_the_server_version(version: str, expected: bool) -> None:
    """Only Milvus servers >= 2.5 get template parameters; Milvus Lite never does."""
    assert supports_filter_params(version) is expected
