"""The built-in hooks on hand-made hits: rerank fusion/recency/MMR, redact, audit."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from vector_hooks import SearchRequest, build_pipeline
from vector_hooks.builtins import AuditHook, RedactHook, RerankConfig, TenantAwareRerankHook
from vector_hooks.errors import InvalidTenantId
from vector_hooks.request import Hit, Hits

NOW = 1_800_000_000.0


def _request(limit: int = 3) -> SearchRequest:
    return SearchRequest(
        tenant="acme",
        backend="test",
        operation="search",
        collection="docs",
        limit=limit,
        fetch_limit=limit,
        params={"filter": 'lang == "en"'},
        output_fields=["title"],
        principal="svc-search",
    )


def _rerank(config: dict[str, object]) -> TenantAwareRerankHook:
    return TenantAwareRerankHook(RerankConfig.from_mapping(config), clock=lambda: NOW)


def test_rerank_over_fetches_and_asks_for_the_fields_it_scores() -> None:
    """before_search raises the fetch limit to the candidate count and requires its fields."""
    hook = _rerank(
        {
            "candidates": 50,
            "boosts": {"stars": 0.1},
            "mmr_lambda": 0.5,
            "recency": {"field": "updated_at", "half_life_s": 60},
        }
    )
    request = _request(limit=10)
    hook.before_search(request)
    assert request.fetch_limit == 50
    assert request.want_vectors
    assert request.output_fields == ["title", "stars", "updated_at"]
    assert request.extra_fields == {"stars", "updated_at"}


def test_field_boosts_reorder_by_fused_score() -> None:
    """Numeric and categorical boosts add to the similarity, changing the order."""
    hits = [
        Hit("a", 0.90, {"stars": 0, "lang": "de"}),
        Hit("b", 0.85, {"stars": 5, "lang": "de"}),
        Hit("c", 0.80, {"stars": 0, "lang": "en"}),
    ]
    hook = _rerank({"boosts": {"stars": 0.02, "lang": {"en": 0.2}}})
    ranked = hook.rerank(hits, 3, now=NOW)
    assert [h.id for h in ranked] == ["c", "b", "a"]
    assert ranked[0].rerank_score == pytest.approx(1.0)
    assert ranked[1].rerank_score == pytest.approx(0.95)


def test_recency_decay_halves_per_half_life() -> None:
    """A document one half-life old gets half the recency bonus of a fresh one."""
    hook = _rerank(
        {
            "vector_weight": 0.0,
            "recency": {"field": "updated_at", "half_life_s": 3600, "weight": 1.0},
        }
    )
    fresh = dt.datetime.fromtimestamp(NOW, tz=dt.UTC)
    hits = [
        Hit("old", 0.9, {"updated_at": NOW - 3600}),
        Hit("missing", 0.9, {}),
        Hit("fresh", 0.1, {"updated_at": fresh.isoformat()}),
        Hit("two-half-lives", 0.9, {"updated_at": fresh - dt.timedelta(hours=2)}),
    ]
    ranked = hook.rerank(hits, 4, now=NOW)
    assert [h.id for h in ranked] == ["fresh", "old", "two-half-lives", "missing"]
    assert [h.rerank_score for h in ranked] == pytest.approx([1.0, 0.5, 0.25, 0.0])


def test_mmr_trades_relevance_for_diversity() -> None:
    """With lambda < 1, near-duplicates of the best hit lose to a different relevant one."""
    duplicate = [1.0, 0.0, 0.0]
    hits = [
        Hit("best", 0.95, {}, vector=duplicate),
        Hit("dup-1", 0.94, {}, vector=[0.99, 0.01, 0.0]),
        Hit("dup-2", 0.93, {}, vector=[0.98, 0.02, 0.0]),
        Hit("other", 0.80, {}, vector=[0.0, 1.0, 0.0]),
    ]
    plain = _rerank({}).rerank(list(hits), 2, now=NOW)
    diverse = _rerank({"mmr_lambda": 0.5}).rerank(list(hits), 2, now=NOW)
    assert [h.id for h in plain] == ["best", "dup-1"]
    assert [h.id for h in diverse] == ["best", "other"]


def test_mmr_over_fifty_candidates_returns_the_limit_without_repeats() -> None:
    """MMR picks exactly `limit` distinct hits from an over-fetched candidate set."""
    hits = [Hit(i, 1.0 - i / 100, {}, vector=[float(i % 7), 1.0, float(i % 3)]) for i in range(50)]
    ranked = _rerank({"mmr_lambda": 0.7}).rerank(hits, 10, now=NOW)
    assert len(ranked) == 10
    assert len({h.id for h in ranked}) == 10
    assert ranked[0].id == 0


def test_mmr_without_vectors_fails_and_the_pipeline_keeps_backend_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rerank is a quality hook: missing vectors make it fail open, not fail the search."""
    pipeline = build_pipeline(
        {"hooks": [{"name": "tenant-aware-rerank", "config": {"mmr_lambda": 0.5}}, "tenant-filter"]}
    )

    def backend(request: SearchRequest) -> Hits:
        return [[Hit(i, 1.0 - i / 10, {}) for i in range(5)]]

    with caplog.at_level(logging.WARNING, logger="vector_hooks.pipeline"):
        hits = pipeline.run(_request(limit=3), backend)
    assert [h.id for h in hits[0]] == [0, 1, 2, 3, 4]
    assert "MMR needs candidate vectors" in caplog.text


def test_redact_allows_denies_and_masks_nested_values() -> None:
    """Allow list first, then deny list, then masking of e-mails/phones in nested strings."""
    hook = RedactHook.from_config(
        {
            "allow": ["title", "body", "notes", "contacts", "score"],
            "deny": ["notes"],
            "mask": ["email", "phone", {"name": "ticket", "regex": "TCK-[0-9]+"}],
            "replacement": "***",
        }
    )
    hits: Hits = [
        [
            Hit(
                1,
                1.0,
                {
                    "title": "Mail jane.doe@example.com about TCK-1234",
                    "body": "Call +1 (555) 123-4567 or 030 1234567",
                    "notes": "internal only",
                    "secret": "never shown",
                    "contacts": ["a@b.io", {"fax": "+49 30 1234 5678"}],
                    "score": 7,
                },
            )
        ]
    ]
    out = hook.after_search(_request(), hits)
    assert out is not None
    fields = out[0][0].fields
    assert fields == {
        "title": "Mail *** about ***",
        "body": "Call *** or ***",
        "contacts": ["***", {"fax": "***"}],
        "score": 7,
    }


def test_redact_mask_fields_limits_where_masking_applies() -> None:
    """mask_fields restricts masking to the listed fields."""
    hook = RedactHook.from_config({"mask": ["email"], "mask_fields": ["body"]})
    hits: Hits = [[Hit(1, 1.0, {"body": "x@y.io", "owner": "x@y.io"})]]
    hook.after_search(_request(), hits)
    assert hits[0][0].fields == {"body": "[redacted]", "owner": "x@y.io"}


def test_audit_records_who_searched_what_and_the_outcome(caplog: pytest.LogCaptureFixture) -> None:
    """Audit logs tenant, principal, operation, filter and hit count; refusals too."""
    records: list[dict[str, object]] = []
    pipeline = build_pipeline({"hooks": ["audit", "tenant-filter"]})
    sink_pipeline = build_pipeline({"hooks": ["tenant-filter"]})
    with caplog.at_level(logging.INFO, logger="vector_hooks.audit"):
        pipeline.run(_request(), lambda request: [[Hit(1, 1.0, {}), Hit(2, 0.5, {})]])
        refused = _request()
        refused.tenant = "bad tenant"
        with pytest.raises(InvalidTenantId):
            pipeline.run(refused, lambda request: [[]])
    ok, denied = (json.loads(r.getMessage()) for r in caplog.records)
    assert ok["outcome"] == "ok"
    assert ok["hits"] == 2
    assert ok["tenant"] == "acme"
    assert ok["principal"] == "svc-search"
    assert ok["operation"] == "search"
    assert ok["filter"] == 'lang == "en"'
    assert denied["outcome"] == "refused"
    assert "InvalidTenantId" in denied["error"]
    assert caplog.records[1].levelno == logging.WARNING
    assert caplog.records[0].vector_hooks_audit["hits"] == 2  # type: ignore[attr-defined]

    hook = AuditHook(sink=records.append, include_ids=True)
    request = _request()
    hook.before_search(request)
    hook.after_search(request, [[Hit(5, 1.0, {})], [Hit("x", 1.0, {})]])
    assert records[0]["hit_ids"] == [[5], ["x"]]
    sink_pipeline.close()
