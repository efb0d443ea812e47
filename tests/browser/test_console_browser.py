"""The operator console end to end in a real headless Chromium (Debian's), driven by Playwright.

A real control plane (routing, admin API, experiments, canaries, console) runs on loopback with
real model backends behind a routing flag; the tests drive real decisions, exposures, outcome
events and canary traffic through it, then use the console as an operator would: sign in with a
token, read the split chart, abort a canary with its button, edit weights, roll back. Screenshots
go to test-artifacts/screenshots/ (set CONSOLE_README_SCREENSHOTS=1 to refresh the README's
copies in tests/browser/screenshots/).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, write_flags
from experiments_support import (
    ADMIN,
    OPERATOR,
    VIEWER,
    ControlPlane,
    make_settings,
    running,
    wait_for,
)
from servers import BackendApp, ServerThread

from control_plane.db import Database

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "screenshots"
README_SHOTS = Path(__file__).parent / "screenshots"
CHAT = "chat-router"
AB = "ab-test-router"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(apt-get install chromium chromium-driver; .ci/run does)",
    ),
]

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, expect, sync_playwright


@dataclass
class Console:
    """A running control plane with the console, and the two chat model backends."""

    plane: ControlPlane
    stable: BackendApp
    canary: BackendApp

    @property
    def url(self) -> str:
        return self.plane.url

    def client(self, token: str | None = None) -> httpx.Client:
        return self.plane.client(token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the whole module (each test gets its own context and page)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def console(flags_dir: Path, tmp_path: Path) -> Iterator[Console]:
    """The shipped flags plus a chat flag routing to two real backends (canary at 0%)."""
    stable, canary = BackendApp("chat-v1"), BackendApp("chat-v2")
    url = f"sqlite:///{tmp_path / 'console.db'}"
    database = Database.from_url(url)
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                CHAT: {
                    "state": "ENABLED",
                    "metadata": {"description": "Chat model: v1 serves, v2 goes out as a canary."},
                    "variants": {
                        "stable": {"backend": "chat-v1", "url": stable_server.url},
                        "canary": {"backend": "chat-v2", "url": canary_server.url},
                    },
                    "defaultVariant": "stable",
                    "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
                }
            },
        )
        with running(make_settings(flags_dir, url, tmp_path), database) as plane:
            yield Console(plane, stable, canary)
    database.dispose()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty sessionStorage); fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"script errors in the console: {errors}"


def shoot(page: Page, name: str, *, full_page: bool = False, readme: bool = False) -> None:
    """Save a screenshot as a test artifact (and as the README's copy when asked to)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if readme and os.environ.get("CONSOLE_README_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, README_SHOTS / path.name)


def sign_in(page: Page, url: str, token: str, role: str) -> None:
    page.goto(f"{url}/console")
    page.fill("#token", token)
    page.click("#sign-in")
    expect(page.locator("#who-role")).to_have_text(role)


def sign_out(page: Page) -> None:
    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()


def decide(client: httpx.Client, flag: str, users: range | list[str]) -> list[dict[str, Any]]:
    return [
        client.get(f"/v1/decide/{flag}", headers={"x-user-id": f"user-{user}"}).json()
        for user in users
    ]


def text_of(locator: Any) -> str:
    """The element's text (SVG text elements included, which have no innerText)."""
    return str(locator.text_content() or "")


def percentages(text: str) -> list[float]:
    """The percentages shown in `text`, as fractions ("52.3% · 209" -> [0.523])."""
    return [float(number) / 100 for number in re.findall(r"(-?\d+(?:\.\d+)?)%", text)]


def assert_shows(text: str, *fractions: float) -> None:
    """`text` shows exactly these fractions as percentages to one decimal (either rounding
    of a tie: the page rounds in JavaScript)."""
    shown = percentages(text)
    assert len(shown) == len(fractions), text
    for value, expected in zip(shown, fractions, strict=True):
        assert abs(value - expected) <= 0.0005 + 1e-9, text


def start_canary(console: Console, calls: int) -> dict[str, Any]:
    """Start a canary on the chat flag and send `calls` requests through it, spread over about
    two seconds (so the timeline has several points). The run needs 500 canary calls per
    step, so it holds its first step whatever loopback latencies do."""
    with console.client(OPERATOR) as client:
        response = client.post(
            f"/v1/canaries/{CHAT}",
            json={"steps": [20, 50, 100], "intervalSeconds": 600, "minRequests": 500},
        )
        assert response.status_code == 201, response.text
        for index in range(calls):
            answer = client.get(
                f"/v1/dispatch/{CHAT}/v1/chat", headers={"x-user-id": f"chat-user-{index}"}
            )
            assert answer.status_code == 200, answer.text
            time.sleep(2.0 / calls)
    console.plane.flush()
    body: dict[str, Any] = response.json()
    return body


def test_sign_in_with_a_token_shows_the_flag_set_and_its_flags(
    console: Console, page: Page
) -> None:
    """An unknown token is refused with a clear 401; a viewer token opens the console on the
    serving flag set (version and status as the API says) and its routing flags."""
    page.goto(f"{console.url}/console")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", "not-a-real-token")
    page.click("#sign-in")
    refusal = page.locator("#login-error .problem")
    expect(refusal).to_contain_text("401")
    expect(refusal).to_contain_text("not known")
    shoot(page, "login-refused", readme=True)

    page.fill("#token", VIEWER)
    page.click("#sign-in")
    expect(page.locator("#who-name")).to_have_text("dash")
    expect(page.locator("#who-role")).to_have_text("viewer")
    with console.client(VIEWER) as client:
        status = client.get("/v1/flags/status").json()
    panel = page.locator("#flag-set-status")
    expect(panel.locator(".stat-version .stat-value")).to_have_text(f"v{status['version']}")
    expect(panel.locator(".card-title .badge")).to_have_text("ok")
    expect(page.locator("#flag-set-message")).to_have_text(status["message"])
    card = page.locator(f"#flag-{AB}")
    expect(card).to_contain_text("Sticky 50/50 A/B test")
    expect(card.locator("tr[data-variant=model-b]")).to_contain_text("http://127.0.0.1:9102")
    expect(page.locator(f"#flag-{CHAT} tr[data-variant=canary]")).to_contain_text("chat-v2")

    # A refused flag: the rest stays live, the panel says "partial" and lists the refused flag
    # with its file and line (partial acceptance: one bad flag never blocks the others).
    flags_dir = console.plane.app.state.components.settings.flags_dir
    (flags_dir / "broken.flagd.json").write_text(
        '{"flags": {\n  "broken": {"state": "ENABLED", "variants": {"on": true},\n'
        '             "defaultVariant": "missing"}}}\n'
    )
    with console.client(VIEWER) as client:
        wait_for(
            lambda: client.get("/v1/flags/status").json()["state"] == "partial",
            what="the refused flag",
        )
    page.click("button[data-minutes='1']")  # re-reads everything at once
    expect(panel.locator(".card-title .badge")).to_have_text("partial")
    expect(page.locator("#flag-set-message")).to_contain_text("1 refused (broken)")
    refused = panel.locator(".refused-flags tr[data-flag=broken]")
    expect(refused).to_contain_text("broken.flagd.json:3")
    expect(refused).to_contain_text("absent")
    shoot(page, "flag-set-refused")


def test_split_chart_shows_the_observed_decisions(console: Console, page: Page) -> None:
    """After real decisions, the split chart shows each variant's configured weight and the
    observed share and count of exactly those decisions, and follows new ones."""
    with httpx.Client(base_url=console.url, timeout=15) as client:
        counts = Counter(body["variant"] for body in decide(client, AB, range(400)))
    assert set(counts) == {"model-a", "model-b"}
    sign_in(page, console.url, VIEWER, "viewer")
    chart = page.locator(f"#flag-{AB} .split-chart")
    for variant, count in counts.items():
        label = chart.locator(f".label-observed[data-variant={variant}]")
        expect(label).to_have_attribute("data-decisions", str(count))
        assert text_of(label).endswith(f" · {count}")
        assert_shows(text_of(label), count / 400)
        expect(chart.locator(f".label-configured[data-variant={variant}]")).to_have_text(
            "configured 50.0%"
        )
        cell = page.locator(f"#flag-{AB} tr[data-variant={variant}] .observed-cell")
        assert text_of(cell).endswith(f"({count})")
        assert_shows(text_of(cell), count / 400)
    expect(page.locator(f"#flag-{AB} .window-note")).to_have_text(
        "400 decisions in the last 5 min."
    )
    expect(page.locator(f"#flag-{AB} .series-chart svg rect").first).to_be_visible()
    shoot(page, "split-chart", readme=True)

    with httpx.Client(base_url=console.url, timeout=15) as client:
        counts += Counter(body["variant"] for body in decide(client, AB, range(400, 500)))
    page.click("button[data-minutes='1']")  # a new window re-reads the counts at once
    for variant, count in counts.items():
        expect(chart.locator(f".label-observed[data-variant={variant}]")).to_have_attribute(
            "data-decisions", str(count)
        )
    expect(page.locator(f"#flag-{AB} .window-note")).to_have_text(
        "500 decisions in the last 1 min."
    )


def test_operator_aborts_a_canary_with_the_button_and_sees_it_in_the_history(
    console: Console, page: Page
) -> None:
    """An operator sees the running canary with its numbers against the thresholds, aborts
    it with the button (weight to 0, as the API confirms), and finds the abort in the flag
    history and, signed in as admin, in the audit log with the operator's message."""
    start_canary(console, calls=80)
    sign_in(page, console.url, OPERATOR, "operator")
    page.click("a[data-view=canaries]")
    card = page.locator(f"#canary-{CHAT}")
    expect(card.locator(".card-title .badge")).to_have_text("running")
    expect(card.locator(".stat-weight .stat-value")).to_have_text("20%")
    expect(card.locator(".step-current")).to_contain_text("20%")
    expect(card.locator(".canary-error-chart .threshold")).to_have_count(1)
    expect(card.locator(".canary-error-chart")).to_contain_text("max 25.0%")
    with console.client(VIEWER) as client:
        timeline = client.get(f"/v1/canaries/{CHAT}/timeline").json()
    canary_calls = sum(bucket["canaryCalls"] for bucket in timeline["buckets"])
    assert canary_calls > 0
    expect(card.locator(".canary-calls-chart svg")).to_have_attribute(
        "aria-label", re.compile(r"canary calls latest \d+")
    )
    expect(card.locator("button[data-action=pause]")).to_be_visible()
    shoot(page, "canary-running", full_page=True, readme=True)

    card.locator("button[data-action=abort]").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.fill("#confirm-message", "chat-v2 answers look wrong")
    page.click("#confirm-ok")
    expect(card.locator(".card-title .badge")).to_have_text("aborted")
    expect(card.locator(".stat-weight .stat-value")).to_have_text("0%")
    expect(card.locator("tr[data-action=aborted]")).to_contain_text("ops")
    expect(card.locator("button[data-action]")).to_have_count(0)
    with console.client(VIEWER) as client:
        status = client.get(f"/v1/canaries/{CHAT}").json()
        flag = client.get(f"/v1/flags/{CHAT}").json()["flag"]
    assert (status["state"], status["weight"]) == ("aborted", 0)
    assert flag["targeting"] == {"fractional": [["canary", 0], ["stable", 100]]}

    page.click("a[data-view=history]")
    newest = page.locator("#versions li.version").first
    expect(newest).to_contain_text("aborted by ops: chat-v2 answers look wrong")
    expect(newest.locator(".diff")).to_contain_text(f"{CHAT} /targeting/fractional/0/1: 20 → 0")
    # The audit log is for admins: the operator sees the server's 403, plainly.
    expect(page.locator("#audit .problem")).to_contain_text("403")

    sign_out(page)
    sign_in(page, console.url, ADMIN, "admin")
    page.click("a[data-view=history]")
    row = page.locator("#audit tr[data-action='canary.aborted']")
    expect(row).to_contain_text("ops")
    expect(row).to_contain_text("chat-v2 answers look wrong")
    expect(page.locator("#audit tr[data-action='canary.started']")).to_contain_text("ops")
    shoot(page, "history-audit", full_page=True, readme=True)


def test_viewer_sees_no_action_buttons_and_is_refused_actions(console: Console, page: Page) -> None:
    """A viewer sees the canary, flags and history but no pause/resume/abort, weight or
    rollback button; the audit log answers 403, and so does an abort the viewer's token
    sends anyway, while the canary keeps running."""
    start_canary(console, calls=10)
    sign_in(page, console.url, VIEWER, "viewer")
    expect(page.locator(f"#flag-{AB}")).to_be_visible()
    expect(page.locator("button[data-action=edit-weights]")).to_have_count(0)
    expect(page.locator(f"#flag-{CHAT} .badge-slot")).to_contain_text("canary running")
    page.click("a[data-view=canaries]")
    card = page.locator(f"#canary-{CHAT}")
    expect(card.locator(".card-title .badge")).to_have_text("running")
    expect(card.locator("button[data-action]")).to_have_count(0)
    page.click("a[data-view=history]")
    expect(page.locator("#versions li.version").first).to_be_visible()
    expect(page.locator("button[data-action=rollback]")).to_have_count(0)
    refusal = page.locator("#audit .problem")
    expect(refusal).to_contain_text("403")
    expect(refusal).to_contain_text("needs admin")
    shoot(page, "viewer-history")

    answer = page.evaluate(
        """async (flag) => {
        const session = JSON.parse(sessionStorage.getItem("control-plane-console"));
        const response = await fetch(`/v1/canaries/${flag}/abort`, {
            method: "POST", headers: {Authorization: `Bearer ${session.token}`}});
        return {status: response.status, body: await response.json()};
    }""",
        CHAT,
    )
    assert answer["status"] == 403
    assert "role viewer; this needs operator" in answer["body"]["detail"]
    with console.client(VIEWER) as client:
        assert client.get(f"/v1/canaries/{CHAT}").json()["state"] == "running"


def test_operator_edits_weights_and_admin_rolls_back(console: Console, page: Page) -> None:
    """An operator sets the A/B weights to 80/20 in the editor (a new, diffed version); an
    admin rolls back to the version before it from the history, and 50/50 serves again."""
    sign_in(page, console.url, OPERATOR, "operator")
    card = page.locator(f"#flag-{AB}")
    card.locator("button[data-action=edit-weights]").click()
    editor = card.locator(f"form[data-editor={AB}]")
    editor.locator("input[data-variant=model-a]").fill("80")
    editor.locator("input[data-variant=model-b]").fill("20")
    editor.locator("input[name=message]").fill("more traffic to the incumbent")
    shoot(page, "edit-weights")
    editor.locator("button[type=submit]").click()
    expect(card.locator(".label-configured[data-variant=model-a]")).to_have_text("configured 80.0%")
    with console.client(VIEWER) as client:
        edited = client.get(f"/v1/flags/{AB}").json()
    assert edited["flag"]["targeting"] == {"fractional": [["model-a", 80], ["model-b", 20]]}

    page.click("a[data-view=history]")
    newest = page.locator("#versions li.version").first
    expect(newest).to_contain_text("more traffic to the incumbent")
    expect(newest.locator(".diff")).to_contain_text(f"{AB} /targeting/fractional/0/1: 50 → 80")

    sign_out(page)
    sign_in(page, console.url, ADMIN, "admin")
    page.click("a[data-view=history]")
    before = edited["flagSetVersion"] - 1
    page.locator(f"button[data-action=rollback][data-version='{before}']").click()
    page.fill("#confirm-message", "back to 50/50")
    page.click("#confirm-ok")
    newest = page.locator("#versions li.version").first
    expect(newest).to_contain_text(f"rollback to version {before}: back to 50/50")
    expect(newest.locator(".badge").first).to_have_text("rollback")
    with console.client(VIEWER) as client:
        restored = client.get(f"/v1/flags/{AB}").json()
    assert restored["flag"]["targeting"] == {"fractional": [["model-a", 50], ["model-b", 50]]}
    assert restored["flagSetVersion"] == edited["flagSetVersion"] + 1


def test_experiment_results_show_rates_with_intervals(console: Console, page: Page) -> None:
    """After real exposures and conversions, the experiments view charts each variant's rate
    with its 95% interval and shows the lift, p-value, always-valid p-value, verdict, CUPED and
    sample ratio check of the report."""
    with httpx.Client(base_url=console.url, timeout=15) as client:
        decisions = decide(client, AB, range(500))
        events = [
            {
                "decisionId": body["decisionId"],
                "metric": "converted",
                "value": index % (5 if body["variant"] == "model-a" else 3) == 0,
            }
            for index, body in enumerate(decisions)
        ]
        # Revenue with a pre-exposure covariate (revenue.pre): the report adds CUPED.
        for index, body in enumerate(decisions):
            before = 20.0 + (index * 37 % 41)
            events += [
                {"decisionId": body["decisionId"], "metric": "revenue.pre", "value": before},
                {
                    "decisionId": body["decisionId"],
                    "metric": "revenue",
                    "value": 0.8 * before
                    + (index * 13 % 17)
                    + (1.5 if body["variant"] == "model-b" else 0.0),
                },
            ]
        for start in range(0, len(events), 1000):
            batch = {"events": events[start : start + 1000]}
            assert client.post("/v1/events", json=batch).status_code == 202
    console.plane.flush()
    with console.client(VIEWER) as client:
        report = client.get(f"/v1/experiments/{AB}").json()
    converted = report["metrics"][0]["variants"]
    sign_in(page, console.url, VIEWER, "viewer")
    page.click("a[data-view=experiments]")
    card = page.locator(f"#experiment-{AB}")
    for row in converted:
        label = card.locator(
            f"[data-metric=converted] .label-estimate[data-variant={row['variant']}]"
        )
        expect(label).to_be_visible()
        assert_shows(text_of(label), row["rate"], *row["ci95"])
    treatment = converted[1]["comparison"]
    p_value = treatment["pValue"]
    shown = "< 0.0001" if p_value < 0.0001 else f"{p_value:.4f}"
    row_b = card.locator("[data-metric=converted] tr[data-variant=model-b]")
    expect(row_b.locator(".p-value")).to_contain_text(shown)
    assert_shows(text_of(row_b.locator(".lift")), treatment["lift"])
    srm = report["sampleRatio"]
    expect(card.locator("[data-srm]")).to_have_attribute(
        "data-srm", "mismatch" if srm["mismatch"] else "ok"
    )
    # The verdict per treatment, from the always-valid adjusted p-value, in plain words.
    verdict = converted[1]["verdict"]
    shown_verdict = card.locator("[data-metric=converted] .verdict[data-variant=model-b]")
    expect(shown_verdict).to_contain_text(verdict["text"])
    always = treatment["alwaysValid"]["pValueAdjusted"]
    expect(
        card.locator("[data-metric=converted] tr[data-variant=model-b] .always-valid")
    ).to_contain_text("< 0.0001" if always < 0.0001 else f"{always:.4f}")
    expect(card.locator("[data-metric=revenue] [data-cuped=shown]")).to_contain_text(
        "CUPED with revenue.pre"
    )
    shoot(page, "experiment", full_page=True, readme=True)


def test_a_revoked_token_ends_the_session_with_a_clear_401(console: Console, page: Page) -> None:
    """When an admin revokes the token a console tab signed in with, the tab's next request
    takes it back to the sign-in page, which says why; the token no longer signs in."""
    with console.client(ADMIN) as admin:
        created = admin.post("/v1/tokens", json={"name": "night-shift", "role": "operator"})
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        sign_in(page, console.url, token, "operator")
        expect(page.locator("#who-name")).to_have_text("night-shift")
        assert admin.delete("/v1/tokens/night-shift").status_code == 204
    # Open another view (by its address: the tab's auto-refresh may find out first).
    page.evaluate("location.hash = '#history'")
    expect(page.locator("#login")).to_be_visible()
    notice = page.locator("#login-error .problem")
    expect(notice).to_contain_text("401")
    expect(notice).to_contain_text("revoked")
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#token", token)
    page.click("#sign-in")
    expect(page.locator("#login-error .problem")).to_contain_text("not known")
