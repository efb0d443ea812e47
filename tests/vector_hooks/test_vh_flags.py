"""Flag-selected pipelines through the official flagd provider (FILE mode) and OpenFeature."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from pymilvus import MilvusClient
from vh_support import make_docs, replace_file, wait_until

from control_plane.flagstore.validate import validate_contents
from flags import FLAGS_DIR, VECTOR_HOOK_PIPELINE
from providers.flagd import file_provider
from vector_hooks import FlagPipelineSelector, HookMetrics
from vector_hooks.milvus import TenantMilvus

pytest_plugins = ["vh_fixtures"]

SHIPPED = FLAGS_DIR / "vector-hooks.flagd.json"
DIM = 4


def _document(
    variants: dict[str, Any], targeting: dict[str, Any] | None = None, default: str = "base"
) -> str:
    flag: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": default}
    if targeting is not None:
        flag["targeting"] = targeting
    return json.dumps({"flags": {VECTOR_HOOK_PIPELINE: flag}}, indent=2)


def _client(path: Path, vh_domain: str) -> OpenFeatureClient:
    api.set_provider_and_wait(file_provider(str(path), poll_ms=100), vh_domain)
    return api.get_client(vh_domain)


@pytest.fixture
def selector_for(vh_domain: str, vh_metrics: HookMetrics) -> Iterator[Any]:
    """Builds selectors on a flag file; closes them at the end."""
    made: list[FlagPipelineSelector] = []

    def build(path: Path) -> FlagPipelineSelector:
        selector = FlagPipelineSelector(_client(path, vh_domain), metrics=vh_metrics)
        made.append(selector)
        return selector

    yield build
    for selector in made:
        selector.close()


def test_the_shipped_flag_file_is_a_valid_flagd_file_with_a_new_key() -> None:
    """The control plane's validator accepts the file, and no other file defines the key."""
    result = validate_contents({SHIPPED.name: SHIPPED.read_bytes()})
    assert result.issues == ()
    assert set(result.flags) == {VECTOR_HOOK_PIPELINE}
    owners = [
        path.name
        for path in FLAGS_DIR.glob("*.flagd.json")
        if VECTOR_HOOK_PIPELINE in json.loads(path.read_text()).get("flags", {})
    ]
    assert owners == [SHIPPED.name]


def test_the_shipped_flag_picks_each_tenants_pipeline(tmp_path: Path, selector_for: Any) -> None:
    """Evaluated per tenant, the shipped flag gives strict, isolate-only or standard hooks."""
    path = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, path)
    selector = selector_for(path)
    assert selector.select("acme").names == (
        "audit",
        "redact",
        "tenant-aware-rerank",
        "tenant-filter",
    )
    assert selector.select("sandbox").names == ("tenant-filter",)
    assert selector.select("someone-else").names == (
        "audit",
        "tenant-aware-rerank",
        "tenant-filter",
    )
    assert selector.select("someone-else") is selector.select("another-one")  # cached by value


@pytest.fixture
def docs_collection(vh_milvus: MilvusClient, vh_collection: str) -> Iterator[str]:
    """Two tenants whose documents mention e-mail addresses."""
    rng = np.random.default_rng(5)
    rows = [
        {
            "id": i,
            "vector": rng.random(DIM).tolist(),
            "tenant_id": tenant,
            "body": f"contact {tenant}{i}@example.com",
        }
        for i, tenant in enumerate(["acme", "globex"] * 5)
    ]
    make_docs(vh_milvus, vh_collection, rows, dim=DIM)
    yield vh_collection
    vh_milvus.drop_collection(vh_collection)


def test_editing_the_flag_file_changes_a_running_services_pipeline(
    tmp_path: Path, vh_milvus: MilvusClient, docs_collection: str, selector_for: Any
) -> None:
    """After the flag file is edited, the same TenantMilvus masks e-mails for one tenant only."""
    path = tmp_path / "pipeline.flagd.json"
    base = {"hooks": ["tenant-filter"]}
    masked = {"hooks": [{"name": "redact", "config": {"mask": ["email"]}}, "tenant-filter"]}
    replace_file(path, _document({"base": base}))
    docs = TenantMilvus(vh_milvus, docs_collection, pipeline=selector_for(path))

    def bodies(tenant: str) -> list[str]:
        hits = docs.search(tenant, data=[[0.5] * DIM], limit=5, output_fields=["body"])
        return [hit["entity"]["body"] for hit in hits[0]]

    assert all("@example.com" in body for body in bodies("acme"))
    replace_file(
        path,
        _document(
            {"base": base, "masked": masked},
            targeting={"if": [{"==": [{"var": "tenant"}, "acme"]}, "masked", "base"]},
        ),
    )
    wait_until(
        lambda: all(b.endswith("[redacted]") for b in bodies("acme")),
        what="the edited flag to mask acme's e-mails",
    )
    assert all("@example.com" in body for body in bodies("globex"))


@pytest.mark.parametrize(
    ("bad_value", "reason"),
    [
        (
            {"hooks": [{"name": "redact", "config": {"mask": ["email"]}}]},
            "must include 'tenant-filter'",
        ),
        ({"hooks": ["tenant-filter", "no-such-hook"]}, "no hook named 'no-such-hook'"),
        (
            {
                "hooks": [
                    {"name": "tenant-aware-rerank", "config": {"mmr_lambda": -1}},
                    "tenant-filter",
                ]
            },
            "mmr_lambda must be a number in [0, 1]",
        ),
        ({"pipeline": []}, "unknown key(s) ['pipeline']"),
    ],
)
def test_a_bad_flag_value_falls_back_to_the_safe_pipeline_and_says_why(
    tmp_path: Path,
    selector_for: Any,
    vh_metrics: HookMetrics,
    caplog: pytest.LogCaptureFixture,
    bad_value: dict[str, Any],
    reason: str,
) -> None:
    """An unusable variant yields the isolate-only default, one warning naming the problem,
    and a fallback count per use."""
    path = tmp_path / "pipeline.flagd.json"
    replace_file(path, _document({"base": bad_value}))
    selector = selector_for(path)
    with caplog.at_level(logging.WARNING, logger="vector_hooks.selector"):
        first = selector.select("acme")
        second = selector.select("acme")
    assert first is second is selector.default
    assert first.names == ("tenant-filter",)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert reason in warnings[0]
    assert "variant 'base'" in warnings[0]
    assert vh_metrics.pipeline_fallbacks("invalid-value") == 2


def test_a_flag_that_cannot_be_evaluated_falls_back_to_the_safe_pipeline(
    tmp_path: Path, selector_for: Any, vh_metrics: HookMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing flag or a non-object flag gives the default pipeline and logs the error code."""
    path = tmp_path / "pipeline.flagd.json"
    replace_file(
        path,
        json.dumps(
            {
                "flags": {
                    "something-else": {
                        "state": "ENABLED",
                        "variants": {"on": True},
                        "defaultVariant": "on",
                    }
                }
            }
        ),
    )
    selector = selector_for(path)
    with caplog.at_level(logging.WARNING, logger="vector_hooks.selector"):
        assert selector.select("acme") is selector.default
    assert "FLAG_NOT_FOUND" in caplog.text
    assert vh_metrics.pipeline_fallbacks("evaluation-error") == 1

    replace_file(
        path,
        json.dumps(
            {
                "flags": {
                    VECTOR_HOOK_PIPELINE: {
                        "state": "ENABLED",
                        "variants": {"on": True},
                        "defaultVariant": "on",
                    }
                }
            }
        ),
    )

    def mismatch_reported() -> bool:
        assert selector.select("acme") is selector.default
        return "TYPE_MISMATCH" in caplog.text

    with caplog.at_level(logging.WARNING, logger="vector_hooks.selector"):
        wait_until(mismatch_reported, what="the boolean flag to be reported as a type mismatch")


def test_the_shipped_variants_all_build(tmp_path: Path) -> None:
    """Every variant in the shipped file is a usable pipeline (none falls back)."""
    from vector_hooks import build_pipeline

    document = json.loads(SHIPPED.read_text())
    for name, value in document["flags"][VECTOR_HOOK_PIPELINE]["variants"].items():
        pipeline = build_pipeline(copy.deepcopy(value), label=name)
        assert pipeline.names[-1] == "tenant-filter"
        pipeline.close()
