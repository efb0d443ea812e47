"""The console's Shadows view in a real headless Chromium (Debian's), driven by Playwright.

A real control plane mirrors real dispatch traffic to two loopback backends that differ from
the primary in known ways (one changes a field on every fourth request and answers later, one
fails every request); the view must show the numbers of `GET /v1/shadows/{flag}`, and an
operator promotes a shadow to a canary with its button. The screenshot goes to
test-artifacts/screenshots/shadows.png (and, with CONSOLE_README_SCREENSHOTS=1, to
tests/browser/screenshots/).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_console_browser as console_browser
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, ControlPlane, make_settings, running
from servers import ServerThread
from shadow_support import ModelBackend, shadow_flag
from test_console_browser import CHROMIUM, shoot, sign_in, text_of

from control_plane.db import Database

FLAG = "summarise-router"
N = 48
CHANGED_EVERY = 4  # model-v3 answers differently on every fourth request: 12 of 48

# The console module's Chromium (one per module) and its page fixture, which fails a test on any
# script error: pytest finds fixtures by their name in this module.
browser = console_browser.browser
page = console_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]

if CHROMIUM.exists():
    from playwright.sync_api import Page, expect


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane whose flag mirrors every request of `stable` to model-v3 and model-v4,
    with noise calibration on every request and the noisy `created` field redacted."""
    primary = ModelBackend("model-v1")
    changed = ModelBackend("model-v3", changed_every=CHANGED_EVERY, delay=0.02)
    failing = ModelBackend("model-v4", status=503)
    url = f"sqlite:///{tmp_path / 'console.db'}"
    database = Database.from_url(url)
    with ExitStack() as stack:
        urls = {
            b.name: stack.enter_context(ServerThread(b)).url for b in (primary, changed, failing)
        }
        write_flags(
            flags_dir,
            "shadow.flagd.json",
            {
                FLAG: shadow_flag(
                    urls["model-v1"],
                    [
                        {"backend": "model-v3", "url": urls["model-v3"], "sample": 100},
                        {"backend": "model-v4", "url": urls["model-v4"], "sample": 100},
                    ],
                    compare={"noiseSample": 100, "redactFields": ["created", "user.email"]},
                )
            },
        )
        yield stack.enter_context(running(make_settings(flags_dir, url, tmp_path), database))
    database.dispose()


def _mirror_traffic(plane: ControlPlane) -> dict[str, Any]:
    """N requests through the dispatch proxy; the report once every copy is compared."""
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        for n in range(N):
            answer = client.post(
                f"/v1/dispatch/{FLAG}/v1/predict",
                json={"id": n},
                headers={"x-user-id": f"reader-{n}"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["answer"] == f"a{n}"  # always the primary's own answer
    with plane.client(VIEWER) as client:
        deadline = time.monotonic() + 30
        while True:
            report: dict[str, Any] = client.get(f"/v1/shadows/{FLAG}").json()
            if all(row["compared"] == N for row in report["shadows"]):
                return report
            assert time.monotonic() < deadline, f"comparisons did not finish: {report}"
            time.sleep(0.05)


def _numbers(text: str) -> list[float]:
    return [float(value.replace(",", "")) for value in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def _shows_pct(text: str, fraction: float) -> None:
    """`text` shows `fraction` as a percentage with one decimal (either rounding of a tie)."""
    shown = [float(value) / 100 for value in re.findall(r"(-?\d+(?:\.\d+)?)%", text)]
    assert shown, text
    assert abs(shown[-1] - fraction) <= 0.0005 + 1e-9, text


def _shows_ms(text: str, value: float) -> None:
    shown = _numbers(text)
    assert shown, text
    digits = 0 if value >= 100 else 1
    assert abs(shown[0] - value) <= 0.5 * 10**-digits + 1e-9, (text, value)


def test_shadows_view_shows_the_reports_numbers_and_promotes(
    plane: ControlPlane, page: Page
) -> None:
    """After real mirrored traffic the Shadows view shows, per shadow backend, exactly the
    report's mirrored/compared counts, status mismatches, diff rate, per-field rates with the
    noisy field set apart, primary and shadow p50/p99 in the latency chart, and the newest
    redacted examples; an operator then promotes model-v3 to a canary with its button."""
    report = _mirror_traffic(plane)
    rows = {row["backend"]: row for row in report["shadows"]}
    changed, failing = rows["model-v3"], rows["model-v4"]
    # The known differences, as the API reports them (what the page must then show).
    assert {f["field"]: f["diffs"] for f in changed["fields"]} == {"answer": N // CHANGED_EVERY}
    assert [f["field"] for f in changed["noisyFields"]] == ["created"]
    assert failing["statusMismatches"] == N

    sign_in(page, plane.url, OPERATOR, "operator")
    page.click("a[data-view=shadows]")
    card = page.locator(f"#shadow-{FLAG}")
    expect(card.locator("section.shadow")).to_have_count(2)
    for backend, row in rows.items():
        block = card.locator(f"section.shadow[data-backend={backend}]")
        expect(block.locator(".stat-mirrored .stat-value")).to_have_text(str(row["mirrored"]))
        expect(block.locator(".stat-compared .stat-value")).to_have_text(str(row["compared"]))
        status = text_of(block.locator(".stat-status .stat-value"))
        assert _numbers(status)[0] == row["statusMismatches"], status
        if row["statusMismatches"]:  # "48 · 100.0%", or a plain "0"
            _shows_pct(status, row["statusMismatchRate"])
        _shows_pct(text_of(block.locator(".stat-diff-rate .stat-value")), row["diffRate"])
        expect(block.locator(".stat-noise .stat-value")).to_have_text(str(row["noise"]["pairs"]))
        for field in row["fields"]:
            line = block.locator(f".fields-real tr[data-field='{field['field']}']")
            expect(line.locator("td").nth(1)).to_have_text(str(field["diffs"]))
            _shows_pct(text_of(line.locator(".field-rate")), field["rate"])
        for field in row["noisyFields"]:
            line = block.locator(f".fields-noisy tr[data-field='{field['field']}']")
            expect(line.locator("td").nth(1)).to_have_text(str(field["diffs"]))
            _shows_pct(text_of(line.locator(".noise-rate")), field["noiseRate"])
        latency = row["latency"]
        for quantile in ("p50", "p99"):
            for role in ("primary", "shadow"):
                label = block.locator(f".shadow-latency .label-{role}[data-quantile={quantile}]")
                value = latency[f"{role}Ms"][quantile]
                expect(label).to_have_attribute("data-value", str(value))
                _shows_ms(text_of(label), value)
            ratio_label = block.locator(f".shadow-latency .label-ratio[data-quantile={quantile}]")
            expect(ratio_label).to_have_attribute("data-value", str(latency[f"{quantile}Ratio"]))
            shown_ratio = _numbers(text_of(ratio_label))[0]  # "3.81x primary"
            assert abs(shown_ratio - latency[f"{quantile}Ratio"]) <= 0.005 + 1e-9
        shown = row["examples"][:5]
        expect(block.locator(".examples tbody tr")).to_have_count(len(shown))
        expect(block.locator(".examples tbody tr").first).to_have_attribute(
            "data-decision", shown[0]["decisionId"]
        )
    # No redacted value reaches the page; the changed field shows both answers.
    body = text_of(card)
    assert "@example.com" not in body
    assert "[redacted]" in body
    first = card.locator("section.shadow[data-backend=model-v3] .examples tbody tr").first
    expect(first.locator("li[data-field=answer]")).to_contain_text(re.compile(r'"a\d+" → "b\d+"'))
    expect(
        card.locator("section.shadow[data-backend=model-v4] .examples tbody tr").first
    ).to_contain_text("200 → 503")
    # The slower candidate: its p50 ratio is above 1 and drawn as such.
    assert changed["latency"]["p50Ratio"] > 1
    shoot(page, "shadows", full_page=True, readme=True)

    block = card.locator("section.shadow[data-backend=model-v3]")
    block.locator("button[data-action=promote]").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.fill("#promote-steps", "10, 50, 100")
    page.click("#confirm-ok")
    expect(page.locator("#toast")).to_contain_text("canary running at 10%")
    expect(block.locator(".badge").first).to_have_text("no longer declared")
    expect(block.locator("button[data-action=promote]")).to_have_count(0)
    with plane.client(VIEWER) as client:
        flag = client.get(f"/v1/flags/{FLAG}").json()["flag"]
        canary = client.get(f"/v1/canaries/{FLAG}").json()
    assert [s["backend"] for s in flag["variants"]["stable"]["shadows"]] == ["model-v4"]
    assert flag["targeting"] == {"fractional": [["model-v3", 10], ["stable", 90]]}
    assert (canary["state"], canary["weight"]) == ("running", 10)


def test_a_viewer_sees_the_shadows_but_no_promote_button(plane: ControlPlane, page: Page) -> None:
    """A viewer reads the same report, with no promote button."""
    _mirror_traffic(plane)
    sign_in(page, plane.url, VIEWER, "viewer")
    page.click("a[data-view=shadows]")
    block = page.locator(f"#shadow-{FLAG} section.shadow[data-backend=model-v3]")
    expect(block.locator(".stat-compared .stat-value")).to_have_text(str(N))
    expect(page.locator("button[data-action=promote]")).to_have_count(0)
