"""The decide path's metrics give the samples prometheus_client's Counter and Histogram give."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.http.decision_metrics import DecisionMetrics
from control_plane.http.metrics import _LATENCY_BUCKETS

#: (flag, variant, reason, seconds, anonymous): bounds exactly, between them, past the last.
DECISIONS = [
    ("region-router", "global", "TARGETING_MATCH", 0.00005, False),
    ("region-router", "global", "TARGETING_MATCH", 0.00004, True),
    ("region-router", "eu", "TARGETING_MATCH", 0.0003, False),
    ("region-router", "eu", "DEFAULT", 0.25, True),
    ("ab-test-router", "model-a", "TARGETING_MATCH", 0.0, False),
    ("ab-test-router", "model-b", "TARGETING_MATCH", 3.0, False),
]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")  # creation times differ by construction
    }


def reference(decisions: list[tuple[str, str, str, float, bool]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counts = Counter(
        "control_plane_decisions",
        "Routing decisions made, per flag and variant.",
        ["flag", "variant", "reason"],
        registry=registry,
    )
    latency = Histogram(
        "control_plane_decision_seconds",
        "Time to evaluate one routing decision.",
        ["flag"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    anonymous = Counter(
        "control_plane_anonymous_decisions", "Anonymous.", ["flag"], registry=registry
    )
    for flag, variant, reason, seconds, unkeyed in decisions:
        counts.labels(flag, variant, reason).inc()
        latency.labels(flag).observe(seconds)
        if unkeyed:
            anonymous.labels(flag).inc()
    return registry


def test_the_samples_are_the_ones_prometheus_client_gives() -> None:
    registry = CollectorRegistry()
    metrics = DecisionMetrics(registry, _LATENCY_BUCKETS)
    for flag, variant, reason, seconds, unkeyed in DECISIONS:
        metrics.observe(flag, variant, reason, seconds, anonymous=unkeyed)
    ours, theirs = samples(registry), samples(reference(DECISIONS))
    assert ours == theirs
    assert (
        ours[
            ("control_plane_decision_seconds_bucket", (("flag", "region-router"), ("le", "5e-05")))
        ]
        == 2
    )
    text = generate_latest(registry).decode()
    assert (
        'control_plane_decisions_created{flag="region-router",reason="DEFAULT",variant="eu"}'
        in text
    )
    assert 'control_plane_decision_seconds_created{flag="ab-test-router"}' in text


def test_nothing_is_lost_when_threads_count_at_once() -> None:
    registry = CollectorRegistry()
    metrics = DecisionMetrics(registry, _LATENCY_BUCKETS)

    def count() -> None:
        for _ in range(20_000):
            metrics.observe("f", "v", "r", 0.001, anonymous=True)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = samples(registry)
    assert (
        found[("control_plane_decisions_total", (("flag", "f"), ("reason", "r"), ("variant", "v")))]
        == 80_000
    )
    assert found[("control_plane_decision_seconds_count", (("flag", "f"),))] == 80_000
    assert found[("control_plane_anonymous_decisions_total", (("flag", "f"),))] == 80_000
