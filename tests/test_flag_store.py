"""The flag store: merging, versioning, refusing bad edits, and the watcher's edge cases.

Watcher steps are driven through `store.poll()` where the order of events matters (half-written
files, deletions, coarse timestamps), so those tests do not depend on thread timing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from servers import ServerThread

from control_plane.errors import FlagsNotLoaded, FlagValidationError
from control_plane.flagstore import FlagSet, FlagStore, ReloadOutcome
from control_plane.flagstore.history import InMemoryRecorder, RecordRequest
from control_plane.http.app import create_app
from control_plane.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def boolean_flag(default: str = "off") -> dict[str, Any]:
    return {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": default}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a background effect; the deadline is a hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the hang guard")
        time.sleep(0.01)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    target = tmp_path / "flags"
    target.mkdir()
    write_flags(target, "a.flagd.json", {"alpha": boolean_flag()})
    (target / "b.flagd.yaml").write_text(
        "flags:\n  beta:\n    state: ENABLED\n    variants: {on: true, off: false}\n"
        "    defaultVariant: on\n"
    )
    return target


def test_reload_merges_every_file_and_records_version_one(directory: Path) -> None:
    """JSON and YAML files merge into one flag set, version 1, with the source of each flag."""
    recorder = InMemoryRecorder()
    store = FlagStore(directory, recorder=recorder)
    with pytest.raises(FlagsNotLoaded):
        _ = store.current
    flag_set = store.reload()
    assert flag_set.version == 1
    assert dict(flag_set.sources) == {"alpha": "a.flagd.json", "beta": "b.flagd.yaml"}
    assert store.files == ("a.flagd.json", "b.flagd.yaml")
    assert [record.source for record in recorder.records] == ["file"]
    assert store.stats.reloads_ok == 1
    assert store.stats.reloads_failed == 0


def test_restart_over_unchanged_flags_reuses_the_recorded_version(directory: Path) -> None:
    """A new store whose recorder's latest version has the same hash serves that version."""
    recorder = InMemoryRecorder()
    assert FlagStore(directory, recorder=recorder).reload().version == 1
    assert FlagStore(directory, recorder=recorder).reload().version == 1
    assert len(recorder.records) == 1
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
    assert FlagStore(directory, recorder=recorder).reload().version == 2
    assert len(recorder.records) == 2


def test_a_formatting_only_edit_keeps_the_version(directory: Path) -> None:
    """Rewriting a file with the same definitions makes no new version and tells no listener."""
    store = FlagStore(directory)
    seen: list[int] = []
    store.reload()
    store.subscribe(lambda flag_set: seen.append(flag_set.version))
    document = json.loads((directory / "a.flagd.json").read_text())
    (directory / "a.flagd.json").write_text(json.dumps(document, separators=(",", ":")))
    assert store.reload().version == 1
    assert seen == [1]
    assert store.stats.reloads_ok == 2


def test_invalid_edit_is_refused_counted_and_the_last_good_set_keeps_serving(
    directory: Path,
) -> None:
    """A bad edit raises with issues, bumps reloads_failed, shows in status; a fix recovers."""
    store = FlagStore(directory, strict=True)
    outcomes: list[ReloadOutcome] = []
    store.subscribe_reloads(outcomes.append)
    good = store.reload()
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("maybe")})
    with pytest.raises(FlagValidationError) as raised:
        store.reload()
    assert raised.value.issues[0].path == "$.flags.alpha.defaultVariant"
    assert store.current is good
    assert store.stats.reloads_failed == 1
    status = store.status()
    assert status["state"] == "error"
    assert status["version"] == good.version
    assert status["issues"][0]["file"] == "a.flagd.json"
    assert status["issues"][0]["path"] == "$.flags.alpha.defaultVariant"
    assert status["issues"][0]["line"] is not None
    assert "keeps serving" in status["message"]
    json.dumps(status)
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
    fixed = store.reload()
    assert fixed.version == good.version + 1
    assert store.status()["state"] == "ok"
    assert store.last_error is None
    assert [(o.ok, o.changed) for o in outcomes] == [(True, True), (False, False), (True, True)]


def test_subscribers_get_the_current_set_then_every_new_one_in_order(directory: Path) -> None:
    """subscribe() delivers now and on change; a failing listener does not stop the others."""
    store = FlagStore(directory, strict=True)
    seen: list[int] = []
    documents: list[dict[str, Any]] = []

    def broken(_: FlagSet) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    unsubscribe = store.subscribe(lambda flag_set: seen.append(flag_set.version))
    store.reload()
    store.subscribe_documents(documents.append)
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
    store.reload()
    unsubscribe()
    unsubscribe()  # idempotent
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("off")})
    store.reload()
    assert seen == [1, 2]
    assert [doc["controlPlane"]["flagSetVersion"] for doc in documents] == [1, 2, 3]
    assert documents[-1]["flags"]["alpha"]["defaultVariant"] == "off"


def test_half_written_file_is_refused_then_accepted_once_complete(directory: Path) -> None:
    """A file caught mid-write is an invalid edit; when the write completes it goes live."""
    store = FlagStore(directory, strict=True)
    store.reload()
    text = json.dumps({"flags": {"alpha": boolean_flag("on")}}, indent=2)
    path = directory / "a.flagd.json"
    with path.open("w") as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
        with pytest.raises(FlagValidationError):
            store.poll()
        assert store.last_error is not None
        assert store.current.version == 1
        handle.write(text[len(text) // 2 :])
    assert store.poll() is True
    assert store.current.version == 2
    assert store.last_error is None


def test_a_file_deleted_and_recreated_within_the_settle_window_never_unpublishes_its_flags(
    directory: Path,
) -> None:
    """A vanished file is pending, still served, until it stays gone for the settle window."""
    store = FlagStore(directory, deletion_settle=0.3)
    store.reload()
    content = (directory / "b.flagd.yaml").read_bytes()
    (directory / "b.flagd.yaml").unlink()
    assert store.poll() is False
    assert "beta" in store.current.flags
    assert [item["file"] for item in store.status()["pendingDeletions"]] == ["b.flagd.yaml"]
    assert store.status()["state"] == "ok"
    (directory / "b.flagd.yaml").write_bytes(content)
    store.poll()
    assert store.current.version == 1
    assert "beta" in store.current.flags
    assert store.status()["pendingDeletions"] == []
    (directory / "b.flagd.yaml").unlink()
    assert store.poll() is False
    assert store.status()["pendingDeletions"]
    wait_until(lambda: store.poll() and "beta" not in store.current.flags)
    assert store.current.version == 2
    assert store.status()["pendingDeletions"] == []


def test_other_edits_go_live_while_a_deletion_is_pending(directory: Path) -> None:
    """An edit of another file is applied during the window; the vanished file keeps serving."""
    store = FlagStore(directory, deletion_settle=60)
    store.reload()
    (directory / "b.flagd.yaml").unlink()
    assert store.poll() is False
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
    assert store.poll() is True
    assert store.current.version == 2
    assert store.current.flags["alpha"]["defaultVariant"] == "on"
    assert "beta" in store.current.flags
    assert store.status()["pendingDeletions"][0]["file"] == "b.flagd.yaml"


def test_settle_window_zero_applies_a_deletion_at_the_next_poll(directory: Path) -> None:
    """With deletion_settle=0 a vanished file's flags go at the first poll that misses it."""
    store = FlagStore(directory, deletion_settle=0)
    store.reload()
    (directory / "b.flagd.yaml").unlink()
    assert store.poll() is True
    assert "beta" not in store.current.flags


def test_same_size_rewrite_with_the_same_timestamp_is_noticed(directory: Path) -> None:
    """Coarse file timestamps cannot hide an edit: recent files are compared by their bytes."""
    store = FlagStore(directory)
    store.reload()
    path = directory / "a.flagd.json"
    before = path.stat()
    old = path.read_text()
    new = old.replace('"defaultVariant": "off"', '"defaultVariant": "on" ')
    assert new != old
    assert len(new) == len(old)
    path.write_text(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert store.poll() is True
    assert store.current.flags["alpha"]["defaultVariant"] == "on"


def test_emptying_the_directory_is_refused(directory: Path) -> None:
    """Removing every flag file is refused (it would unpublish every flag at once)."""
    store = FlagStore(directory, deletion_settle=0)
    store.reload()
    for path in list(directory.iterdir()):
        path.unlink()
    with pytest.raises(FlagValidationError, match="no flag files"):
        store.reload()
    assert store.current.version == 1


class FlakyRecorder(InMemoryRecorder):
    """Fails to record while `down` is set, like a database that is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def record(self, request: RecordRequest) -> int:
        if self.down:
            raise ConnectionError("database unreachable")
        return super().record(request)


def test_a_recorder_outage_refuses_the_edit_and_the_watcher_retries(directory: Path) -> None:
    """When the version cannot be recorded the edit does not go live; it does once it can."""
    recorder = FlakyRecorder()
    store = FlagStore(directory, recorder=recorder, reload_interval=0.05)
    store.reload()
    recorder.down = True
    write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
    with pytest.raises(ConnectionError):
        store.reload()
    assert store.current.version == 1
    assert store.status()["state"] == "error"
    assert "could not record" in store.status()["issues"][0]["message"]
    recorder.down = False
    store.start()
    try:
        wait_until(lambda: store.current.version == 2)
    finally:
        store.stop()
    assert store.status()["state"] == "ok"


def test_watcher_thread_applies_valid_edits_and_refuses_invalid_ones(directory: Path) -> None:
    """With start(), edits go live without a restart; a bad one is refused and counted."""
    store = FlagStore(directory, reload_interval=0.02, strict=True)
    store.reload()
    store.start()
    try:
        write_flags(directory, "a.flagd.json", {"alpha": boolean_flag("on")})
        wait_until(lambda: store.current.version == 2)
        # Written in place, not renamed: the watcher may also read the file empty (a second
        # refusal), so the test waits for at least one.
        (directory / "c.flagd.json").write_text('{"flags": {"gamma": ')
        wait_until(lambda: store.stats.reloads_failed >= 1)
        assert store.current.version == 2
        assert store.status()["issues"][0]["file"] == "c.flagd.json"
        write_flags(directory, "c.flagd.json", {"gamma": boolean_flag()})
        wait_until(lambda: store.current.version == 3)
        assert set(store.current.flags) == {"alpha", "beta", "gamma"}
    finally:
        store.stop()


def test_status_endpoint_reports_the_refused_edit_over_http(tmp_path: Path) -> None:
    """GET /v1/flags/status shows the serving version, then a refused edit's issues."""
    flags = tmp_path / "flags"
    shutil.copytree(FIXTURES / "good_flags", flags)
    token = "viewer-token-0123456789"
    settings = Settings(
        flags_dir=flags,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.02,
        flags_strict=True,
        admin_tokens=f"ops-viewer:viewer:{token}",
    )
    app = create_app(settings)
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as client,
    ):
        anonymous = httpx.get(server.url + "/v1/flags/status")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        body = client.get("/v1/flags/status").json()
        assert body["state"] == "ok"
        assert body["files"] == [
            "daemon-array.flagd.json",
            "features.flagd.yaml",
            "routing.flagd.json",
            "shared.flagd.yml",
        ]
        assert body["flagCount"] == 5
        assert body["issues"] == []
        version = body["version"]
        shutil.copy(FIXTURES / "bad_flags" / "fractional-all-zero.flagd.json", flags)
        wait_until(lambda: client.get("/v1/flags/status").json()["state"] == "error")
        body = client.get("/v1/flags/status").json()
        assert body["version"] == version
        assert body["reloads"]["failed"] >= 1
        zero = [
            issue
            for issue in body["issues"]
            if issue["path"] == "$.flags.canary-router.targeting.fractional"
        ]
        assert zero == [
            {
                "file": "fractional-all-zero.flagd.json",
                "path": "$.flags.canary-router.targeting.fractional",
                "line": 11,
                "column": 23,
                "severity": "error",
                "message": zero[0]["message"],
            }
        ]
        assert body["lastAttemptAt"] >= body["lastSuccessAt"]
