"""Shadow traffic through a real nginx: the shipped config's `mirror` sends each decided request
to the control plane, which samples, replays the primary, sends the shadow copy and compares."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from gateway_support import Nginx, needs_nginx
from servers import ServerThread
from shadow_support import ModelBackend, shadow_flag

from control_plane.gateway import render_nginx_config
from control_plane.http.app import create_app
from control_plane.settings import Settings
from control_plane.shadow.mirror import SHADOW_HEADER

pytestmark = needs_nginx
FLAG = "shadowed"
VIEWER = "viewer-token-0123456789abcdef"
N = 40


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _report(control_plane: str, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=control_plane, timeout=10) as client:
        while True:
            body: dict[str, Any] = client.get(
                f"/v1/shadows/{FLAG}", headers={"authorization": f"Bearer {VIEWER}"}
            ).json()
            if all(row["compared"] >= expected for row in body["shadows"]):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(json.dumps(body)[:2000])
            time.sleep(0.05)


def test_nginx_mirrors_to_the_control_plane_and_diffs_are_reported(
    tmp_path: Path, flags_dir: Path, stack: ExitStack
) -> None:
    """Every client answer through nginx is the primary's; the shadow got a copy of each
    request (marked as a shadow, with nginx's decision id), the changed field's diff rate is
    the known one and the per-call timestamp is noise."""
    primary = ModelBackend("model-v1")
    changed = ModelBackend("changed", changed_every=4)
    urls = {b.name: stack.enter_context(ServerThread(b)).url for b in (primary, changed)}
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                urls["model-v1"],
                [{"backend": "changed", "url": urls["changed"], "sample": 100}],
                compare={"noiseSample": 100},
            )
        },
    )
    settings = Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        exposure_spill_dir=tmp_path / "spill",
        admin_tokens=f"ci:viewer:{VIEWER}",  # type: ignore[arg-type]
    )
    control_plane = stack.enter_context(ServerThread(create_app(settings)))
    nginx = stack.enter_context(
        Nginx(
            tmp_path / "nginx",
            control_plane=f"127.0.0.1:{control_plane.port}",
            flag=FLAG,
            stable_variant="stable",
            stable_url=urls["model-v1"],
            shadow=True,
        )
    )
    with httpx.Client(base_url=nginx.url, timeout=10) as client:
        responses = [client.post("/v1/predict", json={"id": n}) for n in range(N)]
    for n, response in enumerate(responses):
        assert response.status_code == 200, nginx.error_log()
        assert response.json()["answer"] == f"a{n}"
    copies = changed.requests
    # nginx's mirror is best effort: a request whose decision timed out on a loaded machine
    # falls back (no decision, no copy). Every copy that arrived is compared, at the known rate.
    assert len(copies) >= N * 0.8
    ids = [json.loads(c["body"])["id"] for c in copies]
    report = _report(control_plane.url, len(copies))
    row = report["shadows"][0]
    assert row["backend"] == "changed"
    assert row["mirrored"] == row["compared"] == len(copies)
    expected = sum(1 for n in ids if n % 4 == 0) / len(copies)
    assert {f["field"]: f["rate"] for f in row["fields"]} == {"answer": expected}
    assert [f["field"] for f in row["noisyFields"]] == ["created"]
    assert row["statusMismatches"] == 0
    decision_ids = {r.headers.get("x-route-decision-id") for r in responses}
    assert {c["headers"]["x-route-decision-id"] for c in copies} <= decision_ids
    assert all(
        c["headers"][SHADOW_HEADER] == "shadow" and c["path"] == "/v1/predict" for c in copies
    )
    served = [r for r in primary.requests if SHADOW_HEADER not in r["headers"]]
    assert len(served) == N  # nginx's own requests; replays and noise calls are marked


def test_config_without_shadows_has_no_mirror(tmp_path: Path) -> None:
    """The mirror is rendered only for a flag that declares shadows, and both forms pass
    nginx -t."""
    fields = {
        "control_plane": "127.0.0.1:9",
        "flag": FLAG,
        "stable_variant": "stable",
        "stable_url": "http://127.0.0.1:9",
    }
    plain = render_nginx_config(prefix=tmp_path, listen="127.0.0.1:1", **fields)
    mirrored = render_nginx_config(prefix=tmp_path, listen="127.0.0.1:1", shadow=True, **fields)
    assert "mirror /_shadow;" not in plain
    assert "location = /_shadow" not in plain
    assert "mirror /_shadow;" in mirrored
    assert f"proxy_pass http://control_plane/v1/shadow/{FLAG}$request_uri;" in mirrored
    for index, extra in enumerate(({}, {"shadow": True})):
        checked = Nginx(tmp_path / f"n{index}", **fields, **extra).check()
        assert checked.returncode == 0, checked.stderr
