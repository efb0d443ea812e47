"""`control-plane experiments report FLAG` and `control-plane canary start|pause|resume|abort|
watch|list`: clients of a running control plane's HTTP API.

The server is `--url` (or CP_URL, default http://127.0.0.1:8080) and the admin API token
`--token` (or CP_TOKEN). Errors print one line (the problem's title and detail, and each
invalid field) and exit with status 1; a server that cannot be reached is status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from control_plane.cli.progress import Progress

__all__ = ["add_canary", "add_experiments"]

_FINISHED = ("promoted", "rolled_back", "aborted")


class _CommandFailed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("CP_URL", "http://127.0.0.1:8080"),
        help="control plane base URL (default: CP_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CP_TOKEN"),
        help="admin API bearer token (default: CP_TOKEN)",
    )


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = httpx.request(
            method,
            args.url.rstrip("/") + path,
            json=body,
            params=params,
            headers=headers,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise _CommandFailed(f"cannot reach {args.url}: {exc}", status=2) from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400:
        if isinstance(payload, dict) and "title" in payload:
            message = f"{response.status_code} {payload['title']}: {payload.get('detail', '')}"
            for item in payload.get("errors") or []:
                if isinstance(item, dict):
                    where = item.get("field") or item.get("location") or ""
                    message += f"\n  {where}: {item.get('message', '')}"
        else:
            message = f"{response.status_code}: {response.text[:500]}"
        raise _CommandFailed(message)
    return payload


def _run(name: str, action: Any, args: argparse.Namespace) -> int:
    try:
        return int(action(args))
    except _CommandFailed as exc:
        print(f"control-plane {name}: {exc}", file=sys.stderr)
        return exc.status


# -- experiments -----------------------------------------------------------------------------


def _report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from control_plane.experiments.report_text import report_lines

    out = out or sys.stdout
    # The server reads the whole exposure log: on a terminal, a clock runs meanwhile.
    with Progress(f"computing the report of {args.flag} on {args.url}", tick=True):
        params: dict[str, Any] = {"correction": args.correction}
        if args.phase is not None:
            params["phase"] = args.phase
        report = _call(args, "GET", f"/v1/experiments/{args.flag}", params=params)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        print("\n".join(report_lines(report)), file=out)
    return 0


def add_experiments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    experiments = commands.add_parser(
        "experiments",
        help="experiment results (exposures, metrics, tests)",
        description="Read experiment results from a running control plane.",
    )
    sub = experiments.add_subparsers(dest="experiments_command", required=True)
    report = sub.add_parser(
        "report",
        help="per-variant units, metrics with 95%% intervals, lift, p-values, verdicts, SRM",
        description="Print the results of the experiment on FLAG (its current phase): units "
        "exposed per variant, each metric's rate or mean with a 95% interval, lift "
        "and difference against the control variant with fixed-horizon p-values "
        "(two-proportion z-test, Welch's t-test), always-valid p-values and "
        "confidence sequences (mSPRT), CUPED with a <metric>.pre covariate, "
        "p-values adjusted for multiple comparisons, a verdict per metric, the "
        "sample ratio check, and backend calls per variant. Needs a viewer token.",
    )
    report.add_argument("flag", metavar="FLAG")
    report.add_argument(
        "--correction",
        choices=("holm", "bh"),
        default="holm",
        help="multiple-comparison adjustment: holm (default) or bh",
    )
    report.add_argument("--phase", type=int, help="an earlier phase (default: the current)")
    report.add_argument("--json", action="store_true", help="print the JSON report")
    _client_options(report)
    report.set_defaults(command=lambda args: _run("experiments report", _report, args))


# -- canary ----------------------------------------------------------------------------------


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of percentages, e.g. 5,10,25,50,100"
        ) from None
    if not steps:
        raise argparse.ArgumentTypeError("give at least one step")
    return steps


def _start(args: argparse.Namespace) -> int:
    from control_plane.experiments.report_text import canary_lines

    spec: dict[str, Any] = {"stableVariant": args.stable, "canaryVariant": args.canary}
    for key, value in (
        ("steps", args.steps),
        ("intervalSeconds", args.interval),
        ("minRequests", args.min_requests),
        ("maxErrorRate", args.max_error_rate),
        ("maxP99LatencyRatio", args.max_latency_ratio),
    ):
        if value is not None:
            spec[key] = value
    status = _call(args, "POST", f"/v1/canaries/{args.flag}", spec)
    print("\n".join(canary_lines(status)))
    return 0


def _action(verb: str) -> Any:
    def act(args: argparse.Namespace) -> int:
        from control_plane.experiments.report_text import canary_lines

        body = {"message": args.message} if args.message else None
        status = _call(args, "POST", f"/v1/canaries/{args.flag}/{verb}", body)
        print("\n".join(canary_lines(status)))
        return 0

    return act


def _watch(args: argparse.Namespace) -> int:
    from control_plane.experiments.report_text import canary_event_line, canary_lines

    last_event = 0
    shown: tuple[Any, ...] = ()
    # On a terminal, a live line under the events: weight and this step's numbers, each poll.
    with Progress(f"canary {args.flag}", tick=True, interval=0.2) as live:
        while True:
            status = _call(args, "GET", f"/v1/canaries/{args.flag}", params={"after": last_event})
            for event in status["events"]:
                live.line(canary_event_line(event))
                last_event = max(last_event, int(event["id"]))
            # The summary when the run moves (state, step) or its step's verdict changes.
            current = status.get("current") or {}
            key = (status["state"], status["step"], current.get("verdict"))
            if key != shown:
                live.line("\n".join(canary_lines(status)))
                shown = key
            live.update(status=_live_status(status))
            if status["state"] in _FINISHED:
                return 0 if status["state"] == "promoted" else 3
            time.sleep(args.every)


def _live_status(status: dict[str, Any]) -> str:
    text = (
        f"{status['state']}, step {status['step']}/{len(status['steps'])}, "
        f"weight {status['weight']}%"
    )
    current = status.get("current")
    if current:
        text += f"; this step {current['canaryCalls']} calls, {current['canaryErrors']} errors"
    return text


def _list(args: argparse.Namespace) -> int:
    runs = _call(args, "GET", "/v1/canaries", params={"active": str(not args.all).lower()})
    items = runs["items"]
    if not items:
        print("no canaries" if args.all else "no running or paused canaries (--all: history)")
        return 0
    for run in items:
        print(
            f"{run['id']:>5}  {run['flag']:<24} {run['state']:<11} step {run['step']}/"
            f"{len(run['steps'])}  weight {run['weight']:>3}%  started {run['startedAt']}"
            f" by {run['createdBy']}" + (f"  ({run['reason']})" if run["reason"] else "")
        )
    return 0


def add_canary(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    canary = commands.add_parser(
        "canary",
        help="progressive canaries: start, pause, resume, abort, watch, list",
        description="Drive progressive canaries on a running control plane. Acting needs an "
        "operator token; watch and list need a viewer token.",
    )
    sub = canary.add_subparsers(dest="canary_command", required=True)

    start = sub.add_parser(
        "start",
        help="start a canary on a routing flag",
        description="Start raising the canary variant's weight on FLAG step by step. Each step "
        "lasts --interval seconds and needs --min-requests canary requests; the "
        "canary is compared with stable by the spec's checks (errors, latency, "
        "Prometheus metrics), and failureThreshold failed checks roll it back to 0%; "
        "after the last step the canary becomes the default variant.",
    )
    start.add_argument("flag", metavar="FLAG")
    start.add_argument("--stable", default="stable", help="stable variant (default stable)")
    start.add_argument("--canary", default="canary", help="canary variant (default canary)")
    start.add_argument(
        "--steps", type=_steps, help="canary weights in percent, e.g. 5,10,25,50,100 (the default)"
    )
    start.add_argument("--interval", type=float, help="seconds per step (default 60)")
    start.add_argument(
        "--min-requests",
        dest="min_requests",
        type=int,
        help="canary requests a step needs (default 100)",
    )
    start.add_argument(
        "--max-error-rate",
        dest="max_error_rate",
        type=float,
        help="largest canary error rate, 0-1 (default 0.05)",
    )
    start.add_argument(
        "--max-latency-ratio",
        dest="max_latency_ratio",
        type=float,
        help="largest canary p99 latency as a multiple of stable's (default 1.5)",
    )
    _client_options(start)
    start.set_defaults(command=lambda args: _run("canary start", _start, args))

    for verb, text in (
        ("pause", "hold the canary at its current weight"),
        ("resume", "continue a paused canary (the step starts over)"),
        ("abort", "stop the canary: its weight goes to 0 at once"),
    ):
        parser = sub.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument("flag", metavar="FLAG")
        parser.add_argument("--message", "-m", help="why (kept in the audit log)")
        _client_options(parser)
        parser.set_defaults(
            command=lambda args, verb=verb: _run(f"canary {verb}", _action(verb), args)
        )

    watch = sub.add_parser(
        "watch",
        help="follow a canary until it is promoted, rolled back or aborted",
        description="Print the canary's events as they happen and its state; exit status 0 "
        "when it is promoted, 3 when it is rolled back or aborted.",
    )
    watch.add_argument("flag", metavar="FLAG")
    watch.add_argument("--every", type=float, default=1.0, help="poll interval in seconds")
    _client_options(watch)
    watch.set_defaults(command=lambda args: _run("canary watch", _watch, args))

    listing = sub.add_parser(
        "list",
        help="running and paused canaries",
        description="List running and paused canaries (--all: every run).",
    )
    listing.add_argument("--all", action="store_true", help="include finished runs")
    _client_options(listing)
    listing.set_defaults(command=lambda args: _run("canary list", _list, args))
