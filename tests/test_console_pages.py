"""The console's page and assets: served from the package with a strict Content-Security-Policy,
complete (every referenced file and module import exists), and nothing fetched from anywhere
but this server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from experiments_support import ControlPlane, make_settings, running

from control_plane.console.assets import load_assets
from control_plane.db import Database
from flags import FLAGS_DIR

PROBLEM = "application/problem+json"
#: The only absolute URL the front end may contain: the SVG namespace (an identifier, never
#: fetched).
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane for these read-only checks."""
    tmp_path = tmp_path_factory.mktemp("console-pages")
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    database = Database.from_url(url)
    with running(make_settings(FLAGS_DIR, url, tmp_path), database) as control_plane:
        yield control_plane
    database.dispose()


@pytest.mark.parametrize("path", ["/console", "/console/"])
def test_console_page_is_served_with_a_strict_policy(plane: ControlPlane, path: str) -> None:
    """The page needs no token, and forbids inline script, foreign origins and framing."""
    response = httpx.get(plane.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert '<script type="module" src="/console/static/app.js">' in response.text


def test_every_referenced_asset_and_module_exists() -> None:
    """Each file the page links and each module a script imports ships in the package."""
    assets = load_assets()
    page = assets["index.html"].body.decode()
    linked = re.findall(r'(?:src|href)="/console/static/([^"]+)"', page)
    assert set(linked) == {"app.js", "console.css"}
    imported = set()
    for name, asset in assets.items():
        if name.endswith(".js"):
            imported |= set(re.findall(r'from "\./([^"]+)"', asset.body.decode()))
    assert imported
    missing = (set(linked) | imported) - set(assets)
    assert not missing, f"referenced but not shipped: {missing}"


def test_no_asset_points_outside_the_server() -> None:
    """No asset names an absolute URL (so nothing is fetched from the internet at run time)
    and no script writes markup from strings (innerHTML), which the policy relies on."""
    for name, asset in load_assets().items():
        text = asset.body.decode()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {SVG_NAMESPACE}, f"{name} refers to {urls - {SVG_NAMESPACE}}"
        assert "@import" not in text, name
        assert not re.search(
            r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML\(|document\.write", text
        ), name


def test_assets_have_types_and_etags(plane: ControlPlane) -> None:
    """Scripts and styles carry their media types and an ETag; a matching If-None-Match is
    answered 304 without a body."""
    with httpx.Client(base_url=plane.url) as client:
        script = client.get("/console/static/app.js")
        style = client.get("/console/static/console.css")
        again = client.get(
            "/console/static/app.js", headers={"if-none-match": script.headers["etag"]}
        )
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert script.headers["cache-control"] == "no-cache"
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/missing.js",
        "/console/static/..%2Fpages.py",
        "/console/static/../pages.py",
        "/console/static/",
    ],
)
def test_unknown_assets_are_404_problems(plane: ControlPlane, path: str) -> None:
    """A name that is not a shipped asset (or tries to leave the folder) is a 404 problem."""
    response = httpx.get(plane.url + path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)


def test_static_folder_is_shipped_as_package_data() -> None:
    """pyproject's package data covers the console's static folder (a wheel would ship it)."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert '"console/static/*"' in pyproject.read_text()
    assert {"index.html", "app.js", "console.css", "charts.js"} <= set(load_assets())
