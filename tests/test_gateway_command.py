"""`control-plane gateway nginx`: the printed config is the shipped template, filled in from the
flag set and settings, and Debian's real nginx accepts it (`nginx -t`); impossible requests are
one line on stderr with exit status 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import write_flags
from gateway_support import NGINX

from control_plane.cli import main

TOKEN = "gateway-token-0123456789abcdef"


def _args(flags_dir: Path, prefix: Path, flag: str = "canary-router", *extra: str) -> list[str]:
    return [
        "gateway",
        "nginx",
        "--flag",
        flag,
        "--listen",
        "127.0.0.1:18080",
        "--control-plane",
        "127.0.0.1:8080",
        "--prefix",
        str(prefix),
        "--flags",
        str(flags_dir),
        *extra,
    ]


@pytest.mark.nginx
@pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx-light)"
)
def test_the_printed_config_passes_nginx_t(
    flags_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The printed config (outcome log, timeout, gateway token, stable fallback from the flag
    set) is complete: `nginx -t -c` on it passes."""
    assert NGINX is not None
    monkeypatch.setenv("CP_GATEWAY_TOKENS", TOKEN)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    status = main(
        _args(
            flags_dir, prefix, "canary-router", "--log-port", "5140", "--decision-timeout-ms", "150"
        )
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    conf = prefix / "nginx.conf"
    conf.write_text(printed.out)
    check = subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "proxy_pass http://control_plane/v1/decide/canary-router;" in printed.out
    assert "access_log syslog:server=127.0.0.1:5140,tag=cp cp_route;" in printed.out
    assert "proxy_read_timeout 150ms;" in printed.out
    # The shipped canary-router's default variant is `stable` on port 9121.
    assert "proxy_pass http://127.0.0.1:9121;" in printed.out
    assert "add_header X-Route-Variant stable always;" in printed.out
    assert f'proxy_set_header Authorization "Bearer {TOKEN}";' in printed.out
    assert 'proxy_set_header x-canary-weight "";' in printed.out


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("no-such-flag", "no flag named 'no-such-flag'"),
        ("vector-hook-pipeline", "is not a routing flag"),
    ],
)
def test_a_flag_that_cannot_route_is_refused_in_one_line(
    flags_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, message: str
) -> None:
    """An unknown flag or a non-routing flag: exit status 2, one line naming it, no config."""
    status = main(_args(flags_dir, tmp_path, flag))
    printed = capsys.readouterr()
    assert status == 2
    assert printed.out == ""
    assert len(printed.err.strip().splitlines()) == 1
    assert message in printed.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--decision-timeout-ms", "5"), "decision timeout 5 ms"),
        (("--log-port", "70000"), "log port 70000"),
        (("--log-port", "5140", "--log-host", "evil;host"), "log host"),
    ],
)
def test_unusable_values_are_refused_in_one_line(
    flags_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    """A value nginx would misread (or a nonsense timeout) is named, nothing is printed."""
    status = main(_args(flags_dir, tmp_path, "canary-router", *extra))
    printed = capsys.readouterr()
    assert (status, printed.out) == (2, "")
    assert message in printed.err


def test_a_default_url_with_a_path_cannot_be_the_fallback(
    flags_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A default variant URL with a path is refused: nginx's proxy_pass would replace the
    request path with it."""
    write_flags(
        flags_dir,
        "extra.flagd.json",
        {
            "prefixed": {
                "state": "ENABLED",
                "defaultVariant": "a",
                "variants": {"a": {"backend": "a", "url": "http://127.0.0.1:9000/base"}},
            }
        },
    )
    status = main(_args(flags_dir, tmp_path, "prefixed"))
    printed = capsys.readouterr()
    assert (status, printed.out) == (2, "")
    assert "must be an origin URL" in printed.err
