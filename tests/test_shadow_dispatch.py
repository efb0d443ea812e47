"""Shadow traffic through the dispatch proxy, against real backends on loopback that differ in
known ways: the reported diff rates equal the known ones, and the primary is unaffected."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from servers import ServerThread
from shadow_support import ModelBackend, shadow_flag

from control_plane.http.app import create_app
from control_plane.settings import Settings
from control_plane.shadow.mirror import SHADOW_HEADER, sampled

FLAG = "shadowed"
VIEWER = "viewer-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {VIEWER}"}
N = 40


def _settings(tmp_path: Path, flags_dir: Path, **values: Any) -> Settings:
    return Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        exposure_spill_dir=tmp_path / "spill",
        admin_tokens=f"ci:viewer:{VIEWER}",  # type: ignore[arg-type]
        **values,
    )


def _serve(stack: ExitStack, app: Any) -> str:
    return stack.enter_context(ServerThread(app)).url


def _report(client: httpx.Client, flag: str = FLAG) -> dict[str, Any]:
    response = client.get(f"/v1/shadows/{flag}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _settled(client: httpx.Client, expected: int, flag: str = FLAG) -> dict[str, Any]:
    """The report once every shadow has `expected` copies compared or dropped."""
    deadline = time.monotonic() + 20
    while True:
        report = _report(client, flag)
        if all(row["compared"] + row["droppedTotal"] >= expected for row in report["shadows"]):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"comparisons did not finish: {json.dumps(report)[:2000]}")
        time.sleep(0.05)


def _send(client: httpx.Client, count: int) -> list[httpx.Response]:
    return [
        client.post(
            f"/v1/dispatch/{FLAG}/v1/predict",
            json={"id": n},
            headers={"x-user-id": f"user-{n}", "authorization": "Bearer secret"},
        )
        for n in range(count)
    ]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_known_differences_are_reported_at_their_known_rates(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """A changed field differs at exactly its rate, a per-call timestamp is set apart as noise,
    a tiny number change within the tolerance is no difference, a failing backend is a status
    mismatch every time, and the client always gets the primary's own answer."""
    primary = ModelBackend("model-v1")
    changed = ModelBackend("changed", changed_every=4, score_offset=1e-9)
    failing = ModelBackend("failing", status=503)
    slow = ModelBackend("slow", delay=0.03)
    urls = {b.name: _serve(stack, b) for b in (primary, changed, failing, slow)}
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                urls["model-v1"],
                [
                    {"backend": "changed", "url": urls["changed"], "sample": 100},
                    {"backend": "failing", "url": urls["failing"], "sample": 100},
                    {"backend": "slow", "url": urls["slow"], "sample": 100},
                ],
                compare={
                    "numberTolerance": 1e-6,
                    "noiseSample": 100,
                    "redactFields": ["user.email"],
                },
            )
        },
    )
    control_plane = _serve(stack, create_app(_settings(tmp_path, flags_dir)))
    with httpx.Client(base_url=control_plane, timeout=10) as client:
        responses = _send(client, N)
        report = _settled(client, N)
    for n, response in enumerate(responses):
        assert response.status_code == 200
        body = response.json()
        assert body["answer"] == f"a{n}"
        assert body["score"] == 0.5
        assert response.headers["x-route-backend"] == "model-v1"
    rows = {row["backend"]: row for row in report["shadows"]}
    assert set(rows) == {"changed", "failing", "slow"}
    changed_row = rows["changed"]
    assert changed_row["mirrored"] == changed_row["compared"] == N
    assert {f["field"]: f["rate"] for f in changed_row["fields"]} == {"answer": 10 / N}
    assert [f["field"] for f in changed_row["noisyFields"]] == ["created"]
    assert changed_row["diffRate"] == 10 / N
    assert changed_row["statusMismatches"] == 0
    assert changed_row["noise"]["pairs"] == N
    example = changed_row["examples"][0]
    assert example["differingFields"] == ["answer"]
    assert example["fields"]["answer"]["primary"].startswith("a")
    failing_row = rows["failing"]
    assert failing_row["statusMismatches"] == N
    assert failing_row["statusMismatchRate"] == 1.0
    assert rows["slow"]["diffRate"] == 0.0
    latency = rows["slow"]["latency"]
    assert latency["samples"] == N
    assert latency["p50Ratio"] > 1
    assert latency["mannWhitney"]["pShadowSlower"] < 0.01
    # The copies carried what the primary got, minus credentials, plus the shadow marker.
    copy = changed.requests[0]
    assert copy["headers"][SHADOW_HEADER] == "shadow"
    assert "authorization" not in copy["headers"]
    assert copy["headers"]["x-route-decision-id"] == responses[0].headers["x-route-decision-id"]
    assert primary.requests[0]["path"] == copy["path"] == "/v1/predict"
    noise_calls = [r for r in primary.requests if r["headers"].get(SHADOW_HEADER) == "noise"]
    assert len(noise_calls) == N


def test_redacted_fields_never_appear_in_examples(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """A field under redactFields that differs is counted, but its values read [redacted]."""
    primary = ModelBackend("model-v1")
    other = ModelBackend("other", changed_every=1)
    urls = {b.name: _serve(stack, b) for b in (primary, other)}
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                urls["model-v1"],
                [
                    {"backend": "other", "url": urls["other"], "sample": 100},
                ],
                compare={
                    "ignoreFields": ["created"],
                    "redactFields": ["answer", "user.*"],
                    "noiseSample": 0,
                },
            )
        },
    )
    control_plane = _serve(stack, create_app(_settings(tmp_path, flags_dir)))
    with httpx.Client(base_url=control_plane, timeout=10) as client:
        _send(client, 5)
        report = _settled(client, 5)
    row = report["shadows"][0]
    assert {f["field"] for f in row["fields"]} == {"answer"}  # created ignored, not noisy
    assert row["noisyFields"] == []
    text = json.dumps(row["examples"])
    assert "[redacted]" in text
    assert not any(f'"a{n}"' in text or f'"b{n}"' in text for n in range(5))
    assert "@example.com" not in text


def test_sampling_is_deterministic_per_decision_id(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """With sample 30, exactly the decisions whose id hashes under 30% are mirrored."""
    primary = ModelBackend("model-v1")
    shadow = ModelBackend("model-v3")
    urls = {b.name: _serve(stack, b) for b in (primary, shadow)}
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                urls["model-v1"], [{"backend": "model-v3", "url": urls["model-v3"], "sample": 30}]
            )
        },
    )
    control_plane = _serve(stack, create_app(_settings(tmp_path, flags_dir)))
    with httpx.Client(base_url=control_plane, timeout=10) as client:
        responses = _send(client, 60)
        ids = [r.headers["x-route-decision-id"] for r in responses]
        expected = sum(sampled(i, "model-v3", 30) for i in ids)
        report = _settled(client, expected)
    row = report["shadows"][0]
    assert 0 < expected < 60
    assert row["mirrored"] == row["compared"] == expected
    assert sorted(r["headers"]["x-route-decision-id"] for r in shadow.requests) == sorted(
        i for i in ids if sampled(i, "model-v3", 30)
    )


def test_a_hanging_shadow_neither_delays_nor_fails_the_primary(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """While the shadow holds every copy, all primary requests are answered; the bounded queue
    drops the overflow and counts it; once released, what was queued is compared."""
    gate = threading.Event()
    primary = ModelBackend("model-v1")
    hung = ModelBackend("hung", gate=gate)
    urls = {b.name: _serve(stack, b) for b in (primary, hung)}
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                urls["model-v1"],
                [{"backend": "hung", "url": urls["hung"], "sample": 100}],
                compare={"noiseSample": 0, "ignoreFields": ["created"]},
            )
        },
    )
    settings = _settings(tmp_path, flags_dir, shadow_workers=1, shadow_queue_size=2)
    control_plane = _serve(stack, create_app(settings))
    try:
        with httpx.Client(base_url=control_plane, timeout=10) as client:
            responses = _send(client, 10)
            assert [r.status_code for r in responses] == [200] * 10
            assert [r.json()["answer"] for r in responses] == [f"a{n}" for n in range(10)]
            held = _report(client)["shadows"][0]
            # One copy in the worker, two in the queue, the rest dropped.
            assert held["mirrored"] == 3
            assert held["dropped"] == {"queue-full": 7}
            gate.set()
            row = _settled(client, 10)["shadows"][0]
            assert row["compared"] == 3
            assert row["diffRate"] == 0.0
            metrics = client.get("/metrics").text
    finally:
        gate.set()
    assert (
        'control_plane_shadow_dropped_total{backend="hung",flag="shadowed",reason="queue-full"} 7.0'
    ) in metrics
    assert 'control_plane_shadow_compared_total{backend="hung",flag="shadowed"} 3.0' in metrics


def test_an_unreachable_shadow_is_a_shadow_error_not_a_primary_one(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """A shadow URL nobody listens on: every copy is a shadow error; every primary is 200."""
    primary = ModelBackend("model-v1")
    url = _serve(stack, primary)
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                url,
                [{"backend": "gone", "url": "http://127.0.0.1:9", "sample": 100}],
                compare={"noiseSample": 0},
            )
        },
    )
    control_plane = _serve(stack, create_app(_settings(tmp_path, flags_dir)))
    with httpx.Client(base_url=control_plane, timeout=10) as client:
        responses = _send(client, 5)
        row = _settled(client, 5)["shadows"][0]
    assert [r.status_code for r in responses] == [200] * 5
    assert row["shadowErrors"] == 5
    assert row["statusMismatches"] == 5
    assert row["examples"][0]["errors"]["shadow"].startswith("refused")
