"""The hook contract: order, fail-closed/fail-open rules, registry, entry points, specs."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from vector_hooks import (
    BaseHook,
    HookKind,
    HookMetrics,
    HookRegistry,
    Pipeline,
    PipelineSpec,
    SearchRequest,
    build_pipeline,
)
from vector_hooks.builtins import (
    AuditHook,
    RedactHook,
    TenantAwareRerankHook,
    TenantFilterHook,
)
from vector_hooks.errors import (
    ConfigurationError,
    HookConfigError,
    HookNotFound,
    InvalidTenantId,
    PipelineConfigError,
    SecurityHookFailed,
)
from vector_hooks.request import Hit, Hits

pytest_plugins = ["vh_fixtures"]


def _request(tenant: str = "acme") -> SearchRequest:
    return SearchRequest(
        tenant=tenant,
        backend="test",
        operation="search",
        collection="docs",
        limit=2,
        fetch_limit=2,
        params={"filter": "n > 1"},
        output_fields=["title"],
    )


def _hits(*ids: int) -> Hits:
    return [[Hit(id=i, score=1.0 - i / 10, fields={"title": f"doc {i}"}) for i in ids]]


class Recorder:
    """A hook (the protocol, without BaseHook) that appends every call to a shared journal."""

    def __init__(self, label: str, journal: list[str], kind: HookKind = HookKind.QUALITY) -> None:
        self.name = label
        self.label = label
        self.journal = journal
        self.kind = kind

    def init(self) -> None:
        self.journal.append(f"init:{self.label}")

    def close(self) -> None:
        self.journal.append(f"close:{self.label}")

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        self.journal.append(f"before:{self.label}")
        return None

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        self.journal.append(f"after:{self.label}")
        return None

    def on_error(self, request: SearchRequest, error: BaseException) -> None:
        self.journal.append(f"error:{self.label}:{type(error).__name__}")


class Exploding(Recorder):
    """Raises in one phase, after mutating what it was handed."""

    def __init__(self, label: str, journal: list[str], kind: HookKind, phase: str) -> None:
        super().__init__(label, journal, kind)
        self.phase = phase

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        super().before_search(request)
        if self.phase == "before":
            request.params["filter"] = "tampered"
            request.limit = 99
            raise RuntimeError("boom before")
        return None

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        super().after_search(request, hits)
        if self.phase == "after":
            hits[0].reverse()
            raise RuntimeError("boom after")
        return None


def _backend(journal: list[str], seen: list[SearchRequest]) -> object:
    def execute(request: SearchRequest) -> Hits:
        journal.append("backend")
        seen.append(request)
        return _hits(1, 2, 3)

    return execute


def test_before_hooks_run_in_order_and_after_hooks_in_reverse() -> None:
    """before_search runs first-to-last, after_search last-to-first, init once, close once."""
    journal: list[str] = []
    pipeline = Pipeline([Recorder("a", journal), Recorder("b", journal), Recorder("c", journal)])
    pipeline.run(_request(), _backend(journal, []))  # type: ignore[arg-type]
    pipeline.run(_request(), _backend([], []))  # type: ignore[arg-type]
    pipeline.close()
    assert journal[:9] == [
        "init:a",
        "init:b",
        "init:c",
        "before:a",
        "before:b",
        "before:c",
        "backend",
        "after:c",
        "after:b",
    ]
    assert journal[9] == "after:a"
    assert journal[-3:] == ["close:c", "close:b", "close:a"]


@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_failing_security_hook_refuses_the_search(phase: str, vh_metrics: HookMetrics) -> None:
    """A security hook that raises fails closed: SecurityHookFailed, on_error in reverse."""
    journal: list[str] = []
    pipeline = Pipeline(
        [Recorder("outer", journal), Exploding("guard", journal, HookKind.SECURITY, phase)],
        metrics=vh_metrics,
    )
    with pytest.raises(SecurityHookFailed) as caught:
        pipeline.run(_request(), _backend(journal, []))  # type: ignore[arg-type]
    assert caught.value.hook == "guard"
    assert caught.value.phase == f"{phase}_search"
    assert "boom" in str(caught.value)
    assert journal[-2:] == ["error:guard:SecurityHookFailed", "error:outer:SecurityHookFailed"]
    assert ("backend" in journal) is (phase == "after")
    assert vh_metrics.hook_failures("guard", outcome="closed") == 1


def test_a_security_hooks_own_refusal_reaches_the_caller_unwrapped() -> None:
    """A RequestRefused raised by a security hook (a bad tenant id) is re-raised as it is."""
    pipeline = Pipeline([TenantFilterHook()])
    with pytest.raises(InvalidTenantId, match="invalid tenant id"):
        pipeline.run(_request('t1" or tenant_id != "'), _backend([], []))  # type: ignore[arg-type]


@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_failing_quality_hook_is_skipped_with_warning_and_metric(
    phase: str, vh_metrics: HookMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A quality hook that raises fails open: its edits are undone, a warning and a metric."""
    journal: list[str] = []
    seen: list[SearchRequest] = []
    pipeline = Pipeline([Exploding("rerank", journal, HookKind.QUALITY, phase)], metrics=vh_metrics)
    with caplog.at_level(logging.WARNING, logger="vector_hooks.pipeline"):
        hits = pipeline.run(_request(), _backend(journal, seen))  # type: ignore[arg-type]
    assert [hit.id for hit in hits[0]] == [1, 2, 3]  # the backend's order, not the reversed one
    assert seen[0].params["filter"] == "n > 1"
    assert seen[0].limit == 2
    assert vh_metrics.hook_failures("rerank", phase=f"{phase}_search", outcome="open") == 1
    assert any(
        "quality hook 'rerank' failed" in record.getMessage() and "boom" in record.getMessage()
        for record in caplog.records
    )


def test_backend_errors_reach_every_entered_hooks_on_error() -> None:
    """When the backend call fails, on_error runs in reverse and the error propagates."""
    journal: list[str] = []
    pipeline = Pipeline([Recorder("a", journal), Recorder("b", journal)])

    def failing(request: SearchRequest) -> Hits:
        raise LookupError("backend down")

    with pytest.raises(LookupError):
        pipeline.run(_request(), failing)
    assert journal[-2:] == ["error:b:LookupError", "error:a:LookupError"]


def test_registry_builds_registered_classes_factories_and_instances() -> None:
    """register() accepts a class, a factory or an instance; instances take no config."""
    registry = HookRegistry(entry_point_group=None)
    journal: list[str] = []

    class Boost(BaseHook):
        name: ClassVar[str] = "boost"

        def __init__(self, weight: float = 1.0) -> None:
            self.weight = weight

    registry.register("boost", Boost)
    registry.register("made", lambda config: Recorder(str(config.get("label", "x")), journal))
    shared = Recorder("shared", journal)
    registry.register("shared", shared)

    boost = registry.create("boost", {"weight": 2.5})
    assert isinstance(boost, Boost)
    assert boost.weight == 2.5
    assert registry.create("made", {"label": "y"}).name == "y"
    with pytest.raises(HookConfigError, match="bad config"):
        registry.create("boost", {"wieght": 2})
    with pytest.raises(HookConfigError, match="registered instance and takes no config"):
        registry.create("shared", {"x": 1})
    with pytest.raises(HookNotFound, match="no hook named 'nope'") as caught:
        registry.create("nope")
    assert "tenant-filter" in caught.value.known
    with pytest.raises(ConfigurationError, match="cannot register"):
        registry.register("bad", 42)


def test_a_shared_instance_is_initialised_once_and_closed_with_its_last_pipeline() -> None:
    """An instance used by two pipelines is init'ed on first open and closed on last close."""
    registry = HookRegistry(entry_point_group=None)
    journal: list[str] = []
    registry.register("shared", Recorder("shared", journal))
    first = build_pipeline({"hooks": ["shared", "tenant-filter"]}, registry=registry)
    second = build_pipeline({"hooks": ["shared", "tenant-filter"]}, registry=registry)
    first.close()
    assert journal == ["init:shared"]
    second.close()
    assert journal == ["init:shared", "close:shared"]


def test_a_registered_hook_can_replace_a_built_in_by_name() -> None:
    """The service's own register() wins over the built-in of the same name."""
    registry = HookRegistry(entry_point_group=None)

    class MyRerank(BaseHook):
        name: ClassVar[str] = "tenant-aware-rerank"

    registry.register("tenant-aware-rerank", MyRerank)
    assert isinstance(registry.create("tenant-aware-rerank"), MyRerank)
    registry.unregister("tenant-aware-rerank")
    assert isinstance(registry.create("tenant-aware-rerank"), TenantAwareRerankHook)


def test_built_ins_are_declared_in_the_entry_point_group() -> None:
    """The installed package declares its four built-ins in group vector_hooks.hooks."""
    from importlib.metadata import entry_points

    declared = {ep.name: ep.load() for ep in entry_points(group="vector_hooks.hooks")}
    assert declared["tenant-filter"] is TenantFilterHook
    assert declared["tenant-aware-rerank"] is TenantAwareRerankHook
    assert declared["redact"] is RedactHook
    assert declared["audit"] is AuditHook


@pytest.fixture
def third_party_package(tmp_path: Path) -> Iterator[str]:
    """A real installed distribution (dist-info on sys.path) contributing two entry points."""
    module = "vh_thirdparty_hooks"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent("""
        from vector_hooks import BaseHook, HookKind

        class Pinned(BaseHook):
            name = "boost-pinned"
            kind = HookKind.QUALITY

            def after_search(self, request, hits):
                return [sorted(group, key=lambda h: not h.fields.get("pinned")) for group in hits]

        class NoFilter(BaseHook):
            name = "tenant-filter"
    """)
    )
    dist = tmp_path / "vh_thirdparty_hooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vh-thirdparty-hooks\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[vector_hooks.hooks]\nboost-pinned = {module}:Pinned\ntenant-filter = {module}:NoFilter\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def test_entry_points_of_installed_packages_are_discovered(
    third_party_package: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A package's hook is found by name; its attempt to shadow tenant-filter is ignored."""
    registry = HookRegistry()
    with caplog.at_level(logging.WARNING, logger="vector_hooks.registry"):
        names = registry.names()
    assert "boost-pinned" in names
    hook = registry.create("boost-pinned")
    assert type(hook).__module__ == third_party_package
    hits = hook.after_search(_request(), [[Hit(1, 1.0, {}), Hit(2, 0.5, {"pinned": True})]])
    assert hits is not None
    assert [h.id for h in hits[0]] == [2, 1]
    assert isinstance(registry.create("tenant-filter"), TenantFilterHook)
    assert any("would shadow the built-in hook" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "must be a JSON object with a 'hooks' list, not null"),
        ([], "not a list"),
        ({}, "hooks must be a non-empty list, not null"),
        ({"hooks": []}, "hooks must be a non-empty list"),
        ({"hooks": ["tenant-filter"], "hookz": 1}, "unknown key(s) ['hookz']"),
        ({"hooks": [3]}, "hooks[0] must be a hook name or an object, not int"),
        ({"hooks": [{"config": {}}]}, "hooks[0].name must be a non-empty hook name"),
        ({"hooks": [{"name": "audit", "conf": {}}]}, "hooks[0] has unknown key(s) ['conf']"),
        ({"hooks": [{"name": "audit", "config": []}]}, "hooks[0].config must be an object"),
        ({"hooks": ["audit", "audit"]}, "listed twice"),
    ],
)
def test_bad_pipeline_values_are_refused_naming_the_part(value: object, fragment: str) -> None:
    """PipelineSpec.parse names the path of what is wrong in a flag value."""
    with pytest.raises(PipelineConfigError) as caught:
        PipelineSpec.parse(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        ({"hooks": ["audit"]}, PipelineConfigError, "must include 'tenant-filter'"),
        ({"hooks": ["tenant-filter", "nope"]}, HookNotFound, "no hook named 'nope'"),
        (
            {"hooks": [{"name": "tenant-filter", "config": {"x": 1}}]},
            HookConfigError,
            "hooks[0] (tenant-filter): takes no configuration",
        ),
        (
            {
                "hooks": [
                    {"name": "tenant-aware-rerank", "config": {"mmr_lambda": 2}},
                    "tenant-filter",
                ]
            },
            HookConfigError,
            "hooks[0] (tenant-aware-rerank): mmr_lambda must be a number in [0, 1]",
        ),
        (
            {
                "hooks": [
                    {"name": "tenant-aware-rerank", "config": {"candidates": "50"}},
                    "tenant-filter",
                ]
            },
            HookConfigError,
            "candidates must be an integer",
        ),
        (
            {
                "hooks": [
                    {
                        "name": "tenant-aware-rerank",
                        "config": {"recency": {"field": "ts", "half_life_s": 0}},
                    },
                    "tenant-filter",
                ]
            },
            HookConfigError,
            "recency.half_life_s must be > 0",
        ),
        (
            {"hooks": [{"name": "tenant-aware-rerank", "config": {"boost": {}}}, "tenant-filter"]},
            HookConfigError,
            "unknown key(s) ['boost']",
        ),
        (
            {"hooks": [{"name": "redact", "config": {"mask": ["ssn"]}}, "tenant-filter"]},
            HookConfigError,
            "mask[0]: unknown pattern 'ssn'",
        ),
        (
            {"hooks": [{"name": "redact", "config": {"mask": [{"regex": "("}]}}, "tenant-filter"]},
            HookConfigError,
            "mask[0].regex does not compile",
        ),
        (
            {"hooks": [{"name": "redact", "config": {"deny": "email"}}, "tenant-filter"]},
            HookConfigError,
            "deny must be a list of field names",
        ),
        (
            {"hooks": [{"name": "audit", "config": {"include_ids": "yes"}}, "tenant-filter"]},
            HookConfigError,
            "include_ids must be true or false",
        ),
    ],
)
def test_bad_hook_configs_are_refused_naming_hook_and_key(
    spec: dict[str, object], error: type[Exception], fragment: str
) -> None:
    """build_pipeline refuses unknown hooks and bad configs, naming the hook and the key."""
    with pytest.raises(error) as caught:
        build_pipeline(spec)
    assert fragment in str(caught.value)


def test_a_hook_changing_the_tenant_is_refused() -> None:
    """tenant-filter refuses a request already pinned to another tenant."""
    from vector_hooks.request import TenantIsolation

    request = _request("acme")
    request.isolation = TenantIsolation("globex")
    with pytest.raises(Exception, match="already pinned to another tenant"):
        TenantFilterHook().before_search(request)


def test_init_and_close_are_optional() -> None:
    """A hook without init/close (only the three search methods) runs and closes cleanly."""

    class Minimal:
        name = "minimal"
        kind = HookKind.QUALITY

        def before_search(self, request: SearchRequest) -> None:
            request.limit = 1

        def after_search(self, request: SearchRequest, hits: Hits) -> None:
            return None

        def on_error(self, request: SearchRequest, error: BaseException) -> None:
            return None

    registry = HookRegistry(entry_point_group=None)
    registry.register("minimal", Minimal())
    with build_pipeline({"hooks": ["minimal", "tenant-filter"]}, registry=registry) as pipeline:
        seen: list[SearchRequest] = []
        pipeline.run(_request(), _backend([], seen))  # type: ignore[arg-type]
    assert seen[0].limit == 1
