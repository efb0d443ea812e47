"""The docs stay true: the settings reference matches `Settings`, links resolve, and every
snippet marked runnable runs.

Runnable snippets are fenced blocks right after a `<!-- runnable -->` comment (see
docs/README.md, "Writing docs"). Python blocks run in a subprocess, shell blocks with
`bash -euo pipefail`, each in a fresh temp directory holding the shipped example flags in
`./flags`, with the venv's bin first on PATH. `<!-- runnable: server -->` blocks also get a
running `control-plane serve` (one for the whole module) whose address replaces
`127.0.0.1:8080` / `localhost:8080` in the block and is in `$CP_URL`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_tools"))

import settings_reference  # noqa: E402 - the docs tool is not a package

from control_plane.cli.init import write_examples  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
SNIPPET_TIMEOUT = 90  # seconds; the slowest (Milvus Lite) takes a few
README_LIMIT = 25 * 1024


# ---------------------------------------------------------------- settings reference


def _table_rows(page: str) -> dict[str, list[str]]:
    block = settings_reference.committed_table(page)
    assert block is not None, (
        "docs/configuration.md lost its generated-table markers; restore them and run "
        f"`{settings_reference.REGENERATE}`"
    )
    rows: dict[str, list[str]] = {}
    for line in block.splitlines():
        match = re.match(r"^\| `([a-z0-9_]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in re.split(r"(?<!\\)\|", match.group(2))]
    return rows


def test_configuration_page_documents_exactly_the_settings_fields() -> None:
    """Every Settings field has a row in docs/configuration.md and every row is a field."""
    rows = _table_rows((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    fields = set(Settings.model_fields)
    missing = sorted(fields - set(rows))
    extra = sorted(set(rows) - fields)
    assert not missing, (
        f"docs/configuration.md lacks the fields {missing}; "
        f"regenerate it with `{settings_reference.REGENERATE}`"
    )
    assert not extra, (
        f"docs/configuration.md documents {extra}, which are not Settings fields; "
        f"regenerate it with `{settings_reference.REGENERATE}`"
    )


def test_configuration_page_defaults_and_env_names_match_the_fields() -> None:
    """Each row's environment name and default are the field's own."""
    rows = _table_rows((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    for name, field in Settings.model_fields.items():
        if name not in rows:
            continue  # reported by the test above
        env, _type, default, _meaning = rows[name][:4]
        expected_env = settings_reference.env_names(name, field)[0]
        assert f"`{expected_env}`" in env, (
            f"{name}: environment {env} is not {expected_env}; run "
            f"`{settings_reference.REGENERATE}`"
        )
        value = field.get_default(call_default_factory=True)
        if isinstance(value, bool):
            assert default == f"`{str(value).lower()}`", name
        elif isinstance(value, int | float | str):
            assert default == f"`{value}`", (
                f"{name}: documented default {default}, the field's is {value!r}; run "
                f"`{settings_reference.REGENERATE}`"
            )
        elif value is None:
            assert default == "unset", name


def test_every_settings_field_has_a_meaning() -> None:
    """No field is undocumented: each has a `#:` comment, a description or a fallback."""
    undocumented = [row["name"] for row in settings_reference.settings_rows() if not row["meaning"]]
    assert not undocumented, (
        f"add a `#:` comment above these fields in control_plane/settings.py: {undocumented}, "
        f"then run `{settings_reference.REGENERATE}`"
    )


def test_configuration_page_is_what_the_generator_prints() -> None:
    """The committed table is exactly the generator's output (types, bounds, meanings too)."""
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_reference.committed_table(page) == settings_reference.render_table(), (
        f"docs/configuration.md is stale; regenerate it with `{settings_reference.REGENERATE}`"
    )


def test_fallback_meanings_name_only_fields() -> None:
    """The generator's fallback meanings do not outlive the fields they describe."""
    assert set(settings_reference.FALLBACK_MEANINGS) <= set(Settings.model_fields)


# ---------------------------------------------------------------- README and links


def test_readme_is_small_and_keeps_the_ci_command() -> None:
    """The README stays a front page (at most ~25 KB) and holds the test command CI runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= README_LIMIT, len(readme.encode())
    ci_command = (
        "python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    )
    assert ci_command in readme
    ci_run = ROOT / ".ci" / "run"
    if ci_run.exists():
        assert ci_command in ci_run.read_text(encoding="utf-8")


_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", "", line)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links() -> list[tuple[Path, int, str]]:
    found = []
    for doc in DOC_FILES:
        for number, line in _prose_lines(doc.read_text(encoding="utf-8")):
            for match in _LINK.finditer(line):
                found.append((doc, number, match.group(1)))
    return found


def test_docs_have_links_to_check() -> None:
    """The link check below sees links (a broken pattern would pass vacuously)."""
    assert len(_links()) > 20


@pytest.mark.parametrize(
    ("doc", "line", "target"),
    _links(),
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_relative_links_resolve(doc: Path, line: int, target: str) -> None:
    """Every relative link in README.md and docs/*.md names an existing file and heading."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return  # http(s), mailto: not checked here (no network)
    path_part, _, anchor = target.partition("#")
    destination = (doc.parent / path_part).resolve() if path_part else doc
    where = f"{doc.relative_to(ROOT)}:{line}: {target}"
    assert destination.exists(), f"{where}: no such file"
    if anchor:
        assert destination.suffix == ".md", f"{where}: an anchor into a non-markdown file"
        assert anchor in _anchors(destination), f"{where}: no heading #{anchor}"


# ---------------------------------------------------------------- runnable snippets


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int
    language: str
    needs_server: bool
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


_MARKER = re.compile(r"^<!--\s*runnable(?::\s*(?P<options>[a-z ,-]+?))?\s*-->\s*$")
_LANGUAGES = {"sh": "bash", "bash": "bash", "shell": "bash", "python": "python", "py": "python"}


def _snippets() -> list[Snippet]:
    found = []
    for doc in DOC_FILES:
        lines = doc.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            marker = _MARKER.match(line.strip())
            if not marker:
                continue
            options = {part.strip() for part in (marker.group("options") or "").split(",")}
            fence = lines[index + 1] if index + 1 < len(lines) else ""
            opening = re.match(r"^```(\w+)", fence)
            where = f"{doc.relative_to(ROOT)}:{index + 1}"
            if opening is None or opening.group(1) not in _LANGUAGES:
                raise AssertionError(
                    f"{where}: a runnable marker must be followed by a "
                    "```sh, ```bash or ```python block"
                )
            unknown = options - {"", "server"}
            if unknown:
                raise AssertionError(f"{where}: unknown runnable options {sorted(unknown)}")
            end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith("```"))
            found.append(
                Snippet(
                    doc,
                    index + 2,
                    _LANGUAGES[opening.group(1)],
                    "server" in options,
                    "\n".join(lines[index + 2 : end]) + "\n",
                )
            )
    return found


SNIPPETS = _snippets()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class DocServer:
    url: str
    env: dict[str, str]


def _base_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CP_", "FLAGD_", "OTEL_")) and key != "DATABASE_URL"
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocServer]:
    """A real `control-plane serve` on free loopback ports, with admin and tester keys."""
    home = tmp_path_factory.mktemp("doc-server")
    write_examples(home / "flags")
    port, sync_port = _free_port(), _free_port()
    admin = secrets.token_hex(16)
    env = _base_env() | {
        "CP_PORT": str(port),
        "CP_SYNC_PORT": str(sync_port),
        "CP_ADMIN_TOKENS": f"root:admin:{admin}",
        "CP_TESTER_TOKEN_KEY": secrets.token_hex(20),
        "CP_EXPOSURE_SALT": secrets.token_hex(16),
        "DATABASE_URL": f"sqlite:///{home / 'control-plane.db'}",
        "CP_LOG_FORMAT": "json",
    }
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "control-plane"), "serve"],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "control-plane serve did not get ready:\n"
                    + (home / "serve.log").read_text(errors="replace")
                )
            time.sleep(0.1)
        snippet_env = {
            key: env[key] for key in ("CP_TESTER_TOKEN_KEY", "CP_EXPOSURE_SALT", "DATABASE_URL")
        }
        snippet_env |= {
            "CP_URL": url,
            "CP_TOKEN": admin,
            "FLAGD_HOST": "127.0.0.1",
            "FLAGD_PORT": str(sync_port),
        }
        yield DocServer(url=url, env=snippet_env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_docs_have_runnable_snippets() -> None:
    """Snippets are found (a broken marker pattern would pass vacuously)."""
    assert len(SNIPPETS) >= 10
    assert {snippet.language for snippet in SNIPPETS} == {"bash", "python"}


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda snippet: snippet.id)
def test_runnable_snippet_runs(
    snippet: Snippet, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A snippet marked runnable in the docs runs as written and exits 0."""
    # The script lives apart from the working directory: Python puts a script's own directory
    # first on sys.path, where `./flags` (the flag directory) would shadow the `flags` package.
    work, scripts = tmp_path / "work", tmp_path / "script"
    scripts.mkdir()
    write_examples(work / "flags")
    env = _base_env()
    code = snippet.code
    if snippet.needs_server:
        server: DocServer = request.getfixturevalue("doc_server")
        env |= server.env
        host_port = server.url.removeprefix("http://")
        code = code.replace("127.0.0.1:8080", host_port).replace("localhost:8080", host_port)
    if snippet.language == "python":
        script = scripts / "snippet.py"
        command = [sys.executable, str(script)]
    else:
        script = scripts / "snippet.sh"
        command = [shutil.which("bash") or "/bin/bash", "-euo", "pipefail", str(script)]
    script.write_text(code, encoding="utf-8")
    try:
        done = subprocess.run(
            command,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=SNIPPET_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{snippet.id}: still running after {SNIPPET_TIMEOUT} s") from exc
    assert done.returncode == 0, (
        f"{snippet.id} exited {done.returncode}\n--- code\n{code}--- stdout\n{done.stdout}"
        f"--- stderr\n{done.stderr}"
    )
