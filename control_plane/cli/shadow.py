"""`control-plane shadow report FLAG` and `control-plane shadow promote FLAG --backend B`:
clients of a running control plane's HTTP API (`--url` / CP_URL, `--token` / CP_TOKEN).

Errors print one line (the problem's title and detail) with exit status 1; a server that
cannot be reached is status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

__all__ = ["add_shadow", "promote_command", "report_command", "report_lines"]


class _Failed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = httpx.request(
            method, args.url.rstrip("/") + path, json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        raise _Failed(f"cannot reach {args.url}: {exc}", status=2) from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400:
        if isinstance(payload, dict) and "title" in payload:
            raise _Failed(f"{response.status_code} {payload['title']}: {payload.get('detail', '')}")
        raise _Failed(f"{response.status_code}: {response.text[:500]}")
    return payload


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as text: one block per shadow backend."""
    lines = [f"shadow report for {report['flag']} ({report['storage']})"]
    if not report["shadows"]:
        lines.append("  no shadows declared or seen")
    for row in report["shadows"]:
        latency = row["latency"]
        mw = latency.get("mannWhitney") or {}
        lines += [
            f"  {row['variant']} ({row['primaryBackend']}) -> {row['backend']}"
            f"  sample {row['sample']}%",
            f"    mirrored {row['mirrored']}  compared {row['compared']}  dropped "
            f"{row['droppedTotal']}  shadow errors {row['shadowErrors']}",
            f"    requests differing {_pct(row['diffRate'])}  status mismatches "
            f"{row['statusMismatches']} ({_pct(row['statusMismatchRate'])})",
            f"    latency p50 {latency['primaryMs']['p50']} -> {latency['shadowMs']['p50']} ms "
            f"(x{latency['p50Ratio']}), p99 {latency['primaryMs']['p99']} -> "
            f"{latency['shadowMs']['p99']} ms (x{latency['p99Ratio']}), shadow slower "
            f"p={mw.get('pShadowSlower', '-')}",
        ]
        for field in row["fields"][:15]:
            lines.append(f"    field {field['field']}: {_pct(field['rate'])}")
        for field in row["noisyFields"][:15]:
            lines.append(
                f"    noisy {field['field']}: {_pct(field['rate'])} (primaries "
                f"{_pct(field['noiseRate'])})"
            )
    return lines


def report_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        report = _call(args, "GET", f"/v1/shadows/{args.flag}")
    except _Failed as exc:
        print(f"control-plane shadow report: {exc}", file=sys.stderr)
        return exc.status
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write("\n".join(report_lines(report)) + "\n")
    return 0


def promote_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    body: dict[str, Any] = {"backend": args.backend}
    if args.variant:
        body["variant"] = args.variant
    if args.canary:
        try:
            body["canary"] = json.loads(args.canary)
        except ValueError as exc:
            print(f"control-plane shadow promote: --canary is not JSON: {exc}", file=sys.stderr)
            return 2
    try:
        result = _call(args, "POST", f"/v1/shadows/{args.flag}/promote", body)
    except _Failed as exc:
        print(f"control-plane shadow promote: {exc}", file=sys.stderr)
        return exc.status
    canary = result.get("canary") or {}
    run = canary.get("run") or canary
    out.write(
        f"{result['flag']}: shadow {result['backend']} is now variant "
        f"{result['canaryVariant']} (flag set v{result['flagSetVersion']}); canary "
        f"against {result['stableVariant']} started at {run.get('weight', '?')}%\n"
    )
    return 0


def add_shadow(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`control-plane shadow report|promote`."""
    shadow = commands.add_parser(
        "shadow",
        help="shadow traffic: report, promote to a canary",
        description="Read a flag's shadow traffic report, or promote "
        "a shadow backend to a canary, through a running "
        "control plane's API.",
    )
    kinds = shadow.add_subparsers(dest="shadow", required=True)
    for name, handler, text in (
        ("report", report_command, "diff rates, status, latency"),
        ("promote", promote_command, "the shadow becomes a variant and a canary starts"),
    ):
        sub = kinds.add_parser(name, help=text, description=text)
        sub.add_argument("flag", help="the routing flag")
        sub.add_argument(
            "--url",
            default=os.environ.get("CP_URL", "http://127.0.0.1:8080"),
            help="control plane base URL (default: CP_URL or http://127.0.0.1:8080)",
        )
        sub.add_argument(
            "--token",
            default=os.environ.get("CP_TOKEN"),
            help="admin API bearer token (default: CP_TOKEN); viewer for report, "
            "operator for promote",
        )
        if name == "report":
            sub.add_argument("--json", action="store_true", help="print the report as JSON")
        else:
            sub.add_argument("--backend", required=True, help="the shadow backend to promote")
            sub.add_argument("--variant", help="name of the new variant (default: the backend)")
            sub.add_argument(
                "--canary",
                metavar="JSON",
                help="canary spec fields, e.g. '{\"steps\": [5, 25, 100]}'",
            )
        sub.set_defaults(command=handler)
