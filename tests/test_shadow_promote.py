"""A shadow becomes a canary in one step (API and CLI): the backend is added as a variant
through the editor (validated, versioned as source "shadow"), the shadow is removed, and a
canary run starts with the mirrored variant as stable."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack, redirect_stderr
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from servers import ServerThread
from shadow_support import shadow_flag

from control_plane.cli import main
from control_plane.cli import shadow as command
from control_plane.http.app import create_app
from control_plane.settings import Settings

FLAG = "shadowed"
VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"


@pytest.fixture
def control_plane(tmp_path: Path, flags_dir: Path) -> Iterator[str]:
    write_flags(
        flags_dir,
        "shadow.flagd.json",
        {
            FLAG: shadow_flag(
                "http://127.0.0.1:9121",
                [{"backend": "model-v3", "url": "http://127.0.0.1:9123", "sample": 10}],
                compare={"ignoreFields": ["id"]},
            )
        },
    )
    settings = Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        exposure_spill_dir=tmp_path / "spill",
        admin_tokens=f"ci:viewer:{VIEWER},ops:operator:{OPERATOR}",  # type: ignore[arg-type]
    )
    with ExitStack() as stack:
        yield stack.enter_context(ServerThread(create_app(settings))).url


def _flag(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{url}/v1/flags/{FLAG}", headers={"authorization": f"Bearer {VIEWER}"}
    ).json()
    flag: dict[str, Any] = body["flag"]
    return flag


def test_promote_turns_the_shadow_into_a_running_canary(control_plane: str) -> None:
    """One POST: variant model-v3 exists with no shadows left, a canary runs at its first
    step against stable, and the version is recorded with source "shadow"."""
    response = httpx.post(
        f"{control_plane}/v1/shadows/{FLAG}/promote",
        headers={"authorization": f"Bearer {OPERATOR}"},
        json={"backend": "model-v3", "canary": {"steps": [10, 50, 100]}},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["stableVariant"], body["canaryVariant"]) == ("stable", "model-v3")
    flag = _flag(control_plane)
    assert flag["variants"]["model-v3"] == {"backend": "model-v3", "url": "http://127.0.0.1:9123"}
    assert "shadows" not in flag["variants"]["stable"]
    assert "compare" not in flag["variants"]["stable"]
    assert flag["targeting"] == {"fractional": [["model-v3", 10], ["stable", 90]]}
    canary = httpx.get(
        f"{control_plane}/v1/canaries/{FLAG}", headers={"authorization": f"Bearer {VIEWER}"}
    ).json()
    assert json.dumps(canary).count('"running"') >= 1
    history = httpx.get(
        f"{control_plane}/v1/flags/history", headers={"authorization": f"Bearer {VIEWER}"}
    ).json()
    assert "shadow" in json.dumps(history)
    report = httpx.get(
        f"{control_plane}/v1/shadows/{FLAG}", headers={"authorization": f"Bearer {VIEWER}"}
    ).json()
    assert report["shadows"] == []  # nothing declared and nothing mirrored any more


@pytest.mark.parametrize(
    ("token", "body", "status"),
    [
        (OPERATOR, {"backend": "nope"}, 422),
        (OPERATOR, {"backend": "model-v3", "variant": "stable"}, 422),
        (OPERATOR, {"backend": 3}, 400),
        (OPERATOR, {"backend": "model-v3", "extra": 1}, 400),
        (VIEWER, {"backend": "model-v3"}, 403),
    ],
)
def test_bad_promotions_are_refused_and_change_nothing(
    control_plane: str, token: str, body: dict[str, Any], status: int
) -> None:
    """Unknown shadow, a taken variant name, a malformed body or a viewer token: a problem
    answer, and the flag keeps its shadow."""
    response = httpx.post(
        f"{control_plane}/v1/shadows/{FLAG}/promote",
        headers={"authorization": f"Bearer {token}"},
        json=body,
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _flag(control_plane)["variants"]["stable"]["shadows"][0]["backend"] == "model-v3"


def test_cli_report_and_promote(control_plane: str) -> None:
    """`control-plane shadow report` prints the declared shadow; `shadow promote` starts the
    canary; a second promote fails with one line and status 1."""
    out = io.StringIO()
    args = ["--url", control_plane, "--token", OPERATOR]
    status = command.report_command(_ns(control_plane, OPERATOR, flag=FLAG, json=False), out)
    assert status == 0
    assert "stable (model-v1) -> model-v3" in out.getvalue()
    assert main(["shadow", "promote", FLAG, "--backend", "model-v3", *args]) == 0
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["shadow", "promote", FLAG, "--backend", "model-v3", *args]) == 1
    assert "has no shadow backend 'model-v3'" in err.getvalue()


def _ns(url: str, token: str, **values: Any) -> Any:
    import argparse

    return argparse.Namespace(url=url, token=token, **values)
