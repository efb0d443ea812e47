"""Property test on a real Milvus Lite: adversarial tenant ids and filters never cross tenants.

For any tenant id and caller filter hypothesis generates (quotes, backslashes, `or`,
parentheses, unicode, newlines, very long strings), a search or query either answers only rows
of that tenant, or is refused with a clear error. The adapter also re-checks every returned row
and raises TenantIsolationError on a foreign one; that error is not caught here, so a filter
that leaked at the Milvus level would fail the test rather than be hidden by the re-check.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymilvus import MilvusClient
from vh_support import make_docs

from vector_hooks.errors import BackendRequestError, InvalidFilter, InvalidTenantId
from vector_hooks.milvus import TenantMilvus
from vector_hooks.tenancy import TENANT_ID_PATTERN

pytest_plugins = ["vh_fixtures"]

DIM = 4
TENANTS = ("t1", "t2", "acme", "acme-eu", "x_y")
INJECTED_TENANTS = (
    't1" or tenant_id != "',
    "t1' or tenant_id != '",
    't1\\" or 1 == 1 or \\"',
    "t1) or (1 == 1",
    't1"\nor tenant_id != "',
    "\uff54\uff11",  # fullwidth "t1"
    "t1\x00",
    "t1 ",
    "a" * 65,
    "",
    "t1\u200b",
)
FRAGMENTS = (
    'lang == "en"',
    "n > 2",
    "n < 0",
    'tenant_id != "t1"',
    'tenant_id in ["t1", "t2"]',
    'note == "a\\"b"',
    'note like "%)%"',
    "1 == 1",
    'tenant_id != ""',
    "(n >= 0)",
    'note == "x) or (1 == 1"',
)
ESCAPES = (
    ") or (1 == 1",
    ') or (tenant_id != "',
    'n > 0) or (tenant_id != "t1"',
    'lang == "en" or tenant_id != "t1"',
    '"',
    "\\",
    "((",
    "))",
    "n > 1\nor 1 == 1",
    'note == "unterminated',
    "n > {p}",
    "]",
    "n in [1, 2",
    'tenant_id == "t1" or true',
)
_filters = st.one_of(
    st.just(""),
    st.sampled_from(FRAGMENTS),
    st.sampled_from(ESCAPES),
    st.builds(
        lambda a, op, b: f"{a} {op} {b}",
        st.sampled_from(FRAGMENTS + ESCAPES),
        st.sampled_from(["and", "or", "||", "&&"]),
        st.sampled_from(FRAGMENTS + ESCAPES),
    ),
    st.text(alphabet='"\'\\()[]{} \n\ttenant_id!=<>orand1t"', max_size=40),
    st.text(max_size=30),
)
_tenants = st.one_of(
    st.sampled_from(TENANTS),
    st.sampled_from(INJECTED_TENANTS),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.text(alphabet="t12\"'\\ ()=!orand\n", min_size=1, max_size=30),
    st.text(max_size=80),
)


@pytest.fixture(scope="module")
def docs(vh_milvus: MilvusClient) -> Iterator[TenantMilvus]:
    """Five tenants, eight rows each, with notes full of quotes and parentheses."""
    name = "vh_property_rows"
    if vh_milvus.has_collection(name):
        vh_milvus.drop_collection(name)
    rng = np.random.default_rng(3)
    rows = [
        {
            "id": t * 100 + i,
            "vector": rng.random(DIM).tolist(),
            "tenant_id": tenant,
            "lang": "en" if i % 2 else "de",
            "n": i,
            "note": ['a"b', "x) or (1 == 1", "p)q"][i % 3],
        }
        for t, tenant in enumerate(TENANTS)
        for i in range(8)
    ]
    make_docs(vh_milvus, name, rows, dim=DIM)
    yield TenantMilvus(vh_milvus, name)
    vh_milvus.drop_collection(name)


def _valid(tenant: str) -> bool:
    return TENANT_ID_PATTERN.fullmatch(tenant) is not None


def _clear(error: InvalidTenantId) -> bool:
    text = str(error)
    return text.startswith("invalid tenant id") and any(
        reason in text
        for reason in ("is not allowed", "must not be empty", "the limit is", "must be a string")
    )


def _attempt(
    docs: TenantMilvus, operation: str, tenant: str, expr: str
) -> tuple[set[str] | None, Exception | None]:
    """The tenants owning the answered rows, or the refusal the call raised."""
    try:
        if operation == "search":
            hits = docs.search(
                tenant,
                data=[[0.3, 0.1, 0.7, 0.2]],
                limit=50,
                filter=expr,
                output_fields=["tenant_id"],
            )
            return {hit["entity"]["tenant_id"] for hit in hits[0]}, None
        rows = docs.query(tenant, filter=expr, output_fields=["tenant_id"])
        return {row["tenant_id"] for row in rows}, None
    except (InvalidTenantId, InvalidFilter, BackendRequestError) as exc:
        return None, exc


@settings(max_examples=80, deadline=None)
@given(tenant=_tenants, expr=_filters)
def test_no_search_or_query_ever_returns_another_tenants_row(
    docs: TenantMilvus, tenant: str, expr: str
) -> None:
    """Any tenant/filter pair answers only that tenant's rows or is refused clearly."""
    for operation in ("search", "query"):
        owners, refusal = _attempt(docs, operation, tenant, expr)
        if isinstance(refusal, InvalidTenantId):
            assert not _valid(tenant), f"a valid id was refused: {refusal}"
            assert _clear(refusal), f"unclear refusal: {refusal}"
        elif isinstance(refusal, InvalidFilter):
            assert str(refusal), "a filter refusal must say what is wrong"
        elif isinstance(refusal, BackendRequestError):
            # Milvus itself rejected a balanced but meaningless expression.
            assert str(refusal).startswith("Milvus:")
        else:
            assert _valid(tenant)
            assert owners is not None
            assert owners <= {tenant}, (
                f"{operation} for {tenant!r} with {expr!r} returned rows of {owners}"
            )
