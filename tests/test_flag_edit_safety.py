"""Flag edits never wedge the store: refused writes leave disk and database as they were,
read-modify-write edits are guarded by ETag / If-Match, out-of-range version numbers are 4xx,
and a transient deletion of a flag file is not a rollout (issue 9, items 6 and 7).

Everything runs against a real uvicorn server and a real database (SQLite always, PostgreSQL
when TEST_DATABASE_URL is set), as the original reproductions did.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import db_support
import httpx
import pytest
import test_admin_api
from servers import ServerThread
from sqlalchemy import text
from test_admin_api import ADMIN, OPERATOR, PROBLEM, VIEWER, Admin

from control_plane.db import Database, repository
from control_plane.errors import FlagValidationError, VersionNotFound
from control_plane.flagstore.editor import FlagEditor
from control_plane.http.app import create_app
from control_plane.settings import Settings
from flags import AB_TEST_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database
admin = test_admin_api.admin


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for a background effect; the deadline is a hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the hang guard")
        time.sleep(0.01)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def _versions(admin: Admin) -> int:
    with admin.database.session() as session:
        return repository.count_versions(session=session)


def _get(admin: Admin, key: str = AB_TEST_ROUTER) -> tuple[dict[str, Any], str]:
    with admin.client(VIEWER) as client:
        response = client.get(f"/v1/flags/{key}")
    assert response.status_code == 200, response.text
    return response.json()["flag"], response.headers["etag"]


def _still_editable(admin: Admin) -> None:
    """A normal PUT and a hand edit of a file both still go live (the store is not wedged)."""
    definition, etag = _get(admin)
    definition["defaultVariant"] = "model-b"
    with admin.client(OPERATOR) as client:
        response = client.put(
            f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}
        )
    assert response.status_code == 200, response.text
    path = admin.flags_dir / "routing.flagd.json"
    document = json.loads(path.read_text())
    document["flags"][AB_TEST_ROUTER]["defaultVariant"] = "model-a"
    temp = admin.flags_dir / ".routing.tmp"
    temp.write_text(json.dumps(document))
    temp.replace(path)
    wait_until(lambda: admin.store.current.flags[AB_TEST_ROUTER]["defaultVariant"] == "model-a")
    assert admin.store.status()["state"] == "ok"


# -- item 6: a refused write changes nothing -------------------------------------------------


def _with_backend(value: str) -> Callable[[dict[str, Any]], bytes]:
    def edit(definition: dict[str, Any]) -> bytes:
        definition["variants"]["model-a"]["backend"] = value
        return json.dumps(definition).encode()

    return edit


def _with_variant_name(name: str) -> Callable[[dict[str, Any]], bytes]:
    def edit(definition: dict[str, Any]) -> bytes:
        definition["variants"][name] = definition["variants"]["model-a"]
        return json.dumps(definition).encode()

    return edit


def _raw_surrogate(definition: dict[str, Any]) -> bytes:
    # json.dumps escapes the lone surrogate as \ud800: valid JSON that decodes to a bad str.
    definition["metadata"] = {"description": "\ud800"}
    return json.dumps(definition).encode()


@pytest.mark.parametrize(
    ("path", "make_body", "source"),
    [
        # Refused by the request-target check in front of every route (source "path").
        ("/v1/flags/bad%00key", lambda d: json.dumps(d).encode(), "path"),
        ("/v1/flags/bad%07key", lambda d: json.dumps(d).encode(), "path"),
        (f"/v1/flags/{AB_TEST_ROUTER}", _with_backend("a\u0000b"), "variants"),
        (f"/v1/flags/{AB_TEST_ROUTER}", _with_backend("bell\u0007"), "variants"),
        (f"/v1/flags/{AB_TEST_ROUTER}", _with_variant_name("nul\u0000name"), "variants"),
        (f"/v1/flags/{AB_TEST_ROUTER}", _raw_surrogate, "metadata"),
    ],
    ids=[
        "nul-in-key",
        "bell-in-key",
        "nul-in-value",
        "bell-in-value",
        "nul-in-variant-name",
        "lone-surrogate-in-value",
    ],
)
def test_unsafe_text_in_a_put_is_400_and_changes_nothing(
    admin: Admin, path: str, make_body: Callable[[dict[str, Any]], bytes], source: str
) -> None:
    """NUL, control characters or a lone surrogate in a key or value: 400 naming the field,
    nothing written or recorded, and later API and file edits still work."""
    definition, _ = _get(admin)
    before_disk, before_versions = admin.disk(), _versions(admin)
    with admin.client(OPERATOR) as client:
        body = _problem(
            client.put(
                path, content=make_body(definition), headers={"content-type": "application/json"}
            ),
            400,
        )
    assert source in body["source"]
    assert admin.disk() == before_disk
    assert _versions(admin) == before_versions
    assert admin.store.status()["state"] == "ok"
    _still_editable(admin)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bad\u0000key", "model-a"),
        (AB_TEST_ROUTER, "a\u0000b"),
        (AB_TEST_ROUTER, "\udc00"),
    ],
    ids=["nul-in-key", "nul-in-value", "lone-surrogate-in-value"],
)
def test_the_editor_refuses_unsafe_text_without_the_http_edge(
    admin: Admin, key: str, value: str
) -> None:
    """The canary controller's path (the editor itself) refuses such text too, before writing."""
    definition, _ = _get(admin)
    definition["variants"]["model-a"]["backend"] = value
    before_disk, before_versions = admin.disk(), _versions(admin)
    with pytest.raises(FlagValidationError) as refused:
        FlagEditor(admin.store).put_flag(key, definition, actor="canary")
    assert refused.value.issues
    assert admin.disk() == before_disk
    assert _versions(admin) == before_versions
    _still_editable(admin)


def test_a_flag_file_holding_nul_is_refused_with_file_and_line(admin: Admin) -> None:
    """The file watcher's path: the validator refuses the file (file, path, line) and nothing
    reaches the database; once the file is fixed, edits go live again."""
    before_versions = _versions(admin)
    bad = admin.flags_dir / "bad.flagd.json"
    bad.write_text(
        '{\n  "flags": {\n    "nul\\u0000key": {"state": "ENABLED", '
        '"variants": {"on": true}, "defaultVariant": "on"}\n  }\n}\n'
    )
    # Refused on its own (the rest of the directory keeps serving): state "partial".
    wait_until(lambda: admin.store.status()["state"] == "partial")
    assert admin.store.status()["refused"][0]["file"] == "bad.flagd.json"
    issue = admin.store.status()["issues"][0]
    assert (issue["file"], issue["line"]) == ("bad.flagd.json", 3)
    assert "NUL" in issue["message"]
    assert issue["path"] == '$.flags["nul\\u0000key"]'
    assert _versions(admin) == before_versions
    bad.unlink()
    wait_until(lambda: admin.store.status()["state"] == "ok")  # the deletion settles
    _still_editable(admin)


def test_a_database_failure_while_recording_puts_the_files_back(admin: Admin) -> None:
    """When recording the version fails (here: the versions table is gone), the PUT fails
    with a problem document, the files are as they were, and edits work once it is back."""
    definition, etag = _get(admin)
    definition["defaultVariant"] = "model-b"
    before_disk, serving = admin.disk(), admin.store.current.version
    with admin.database.session() as session:
        session.execute(text("ALTER TABLE flag_set_versions RENAME TO flag_set_versions_away"))
    try:
        with admin.client(OPERATOR) as client:
            response = client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}
            )
        assert response.status_code >= 500
        assert response.headers["content-type"].startswith(PROBLEM)
        assert admin.disk() == before_disk
        assert admin.store.current.version == serving
    finally:
        with admin.database.session() as session:
            session.execute(text("ALTER TABLE flag_set_versions_away RENAME TO flag_set_versions"))
    assert admin.store.status()["state"] == "ok"
    _still_editable(admin)


# -- item 6: optimistic concurrency ----------------------------------------------------------


def test_get_answers_an_etag_that_a_put_takes_as_if_match(admin: Admin) -> None:
    """GET's ETag lets a PUT through; the PUT answers the new ETag; the old one is then 412."""
    definition, etag = _get(admin)
    definition["targeting"]["fractional"] = [["model-a", 70], ["model-b", 30]]
    with admin.client(OPERATOR) as client:
        response = client.put(
            f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}
        )
        assert response.status_code == 200, response.text
        new_etag = response.headers["etag"]
        assert new_etag != etag
        assert _get(admin)[1] == new_etag
        before_disk, before_versions = admin.disk(), _versions(admin)
        definition["defaultVariant"] = "model-b"
        stale = _problem(
            client.put(f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}),
            412,
        )
    assert stale["etag"] == new_etag
    assert "changed since you read it" in stale["detail"]
    assert admin.disk() == before_disk
    assert _versions(admin) == before_versions


def test_two_racing_read_modify_write_edits_lose_neither(admin: Admin) -> None:
    """Two clients read the same flag and PUT different changes at once: one wins, the other
    gets 412 and, after reading again, lands its change on top of the winner's."""
    start = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def edit(name: str, change: Callable[[dict[str, Any]], None]) -> None:
        definition, etag = _get(admin)
        start.wait()  # both have read the same version before either writes
        change(definition)
        with admin.client(OPERATOR) as client:
            answers[name] = client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}
            )

    def weights(definition: dict[str, Any]) -> None:
        definition["targeting"]["fractional"] = [["model-a", 90], ["model-b", 10]]

    def default(definition: dict[str, Any]) -> None:
        definition["defaultVariant"] = "model-b"

    threads = [
        threading.Thread(target=edit, args=("weights", weights)),
        threading.Thread(target=edit, args=("default", default)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response in answers.values())
    assert statuses == [200, 412], {name: r.text for name, r in answers.items()}
    loser = next(name for name, r in answers.items() if r.status_code == 412)
    definition, etag = _get(admin)  # the loser reads again and reapplies its change
    (weights if loser == "weights" else default)(definition)
    with admin.client(OPERATOR) as client:
        retried = client.put(
            f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": etag}
        )
    assert retried.status_code == 200, retried.text
    served = admin.store.current.flags[AB_TEST_ROUTER]
    assert served["defaultVariant"] == "model-b"
    assert served["targeting"]["fractional"] == [["model-a", 90], ["model-b", 10]]


def test_if_match_star_weak_tags_and_if_none_match(admin: Admin) -> None:
    """`If-Match: *` needs the flag to exist, a weak tag never matches, `If-None-Match: *`
    creates only, and a malformed header is a 400 naming it."""
    definition, etag = _get(admin)
    new = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    with admin.client(OPERATOR) as client:
        _problem(client.put("/v1/flags/brand-new", json=new, headers={"If-Match": "*"}), 412)
        _problem(
            client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": f"W/{etag}"}
            ),
            412,
        )
        _problem(
            client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-None-Match": "*"}
            ),
            412,
        )
        bad = _problem(
            client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": "no-quotes"}
            ),
            400,
        )
        assert bad["source"] == "header.if-match"
        created = client.put("/v1/flags/brand-new", json=new, headers={"If-None-Match": "*"})
        assert created.status_code == 201, created.text
        listed = client.put(
            f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": f'"other", {etag}'}
        )
        assert listed.status_code == 200, listed.text
        assert (
            client.put(
                f"/v1/flags/{AB_TEST_ROUTER}", json=definition, headers={"If-Match": "*"}
            ).status_code
            == 200
        )


def test_delete_is_guarded_by_if_match_and_versioned(admin: Admin) -> None:
    """DELETE with a stale ETag is 412; with the current one the flag goes, as a new version."""
    new = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    with admin.client(OPERATOR) as client:
        etag = client.put("/v1/flags/short-lived", json=new).headers["etag"]
        new["defaultVariant"] = "on"
        client.put("/v1/flags/short-lived", json=new)
        _problem(client.delete("/v1/flags/short-lived", headers={"If-Match": etag}), 412)
        assert "short-lived" in admin.store.current.flags
        current = client.get("/v1/flags/short-lived").headers["etag"]
        version = admin.store.current.version
        deleted = client.delete("/v1/flags/short-lived", headers={"If-Match": current})
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["flagSetVersion"] == version + 1
        assert "short-lived" not in admin.store.current.flags
        _problem(client.delete("/v1/flags/short-lived"), 404)
    history = test_admin_api._history(admin)
    assert (history[0]["source"], history[0]["diff"]["summary"]["removed"]) == (
        "api",
        ["short-lived"],
    )


def test_rollback_takes_the_flag_set_etag_as_if_match(admin: Admin) -> None:
    """The collection's ETag guards a rollback: stale after any edit (412), fresh goes ahead."""
    target = admin.store.current.version
    with admin.client(VIEWER) as client:
        listing = client.get("/v1/flags")
    stale = listing.headers["etag"]
    assert listing.json()["etag"] == stale
    assert all(item["etag"].startswith('"') for item in listing.json()["flags"])
    definition, _ = _get(admin)
    definition["defaultVariant"] = "model-b"
    with admin.client(OPERATOR) as client:
        assert client.put(f"/v1/flags/{AB_TEST_ROUTER}", json=definition).status_code == 200
    with admin.client(ADMIN) as client:
        fresh = client.get("/v1/flags").headers["etag"]
        assert fresh != stale
        _problem(client.post(f"/v1/flags/rollback/{target}", headers={"If-Match": stale}), 412)
        done = client.post(f"/v1/flags/rollback/{target}", headers={"If-Match": fresh})
    assert done.status_code == 200, done.text
    assert admin.store.current.flags[AB_TEST_ROUTER]["defaultVariant"] == "model-a"


# -- item 6: version numbers out of range ----------------------------------------------------


@pytest.mark.parametrize(
    "version",
    [
        str(2**63),
        str(2**64),
        str(2**31),
        "99999999999999999999999",
        "-1",
        "0",
        "1.5",
        "abc",
    ],
)
def test_out_of_range_version_numbers_are_4xx_never_500(admin: Admin, version: str) -> None:
    """History and rollback answer 400/404 problems for any number; the history cursor a page
    (a cursor above every version excludes nothing) or a 400, never a 500."""
    with admin.client(ADMIN) as client:
        for response in (
            client.get(f"/v1/flags/history/{version}"),
            client.post(f"/v1/flags/rollback/{version}"),
        ):
            assert response.status_code in (400, 404), response.text
            assert response.headers["content-type"].startswith(PROBLEM)
        page = client.get("/v1/flags/history", params={"before": version})
    assert page.status_code in (200, 400), page.text
    if page.status_code == 400:
        assert page.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize("version", [2**63, 2**31, 0, -1])
def test_repository_answers_version_not_found_out_of_range(
    database: Database, version: int
) -> None:
    """get_version never sends an unstorable number to the database; list_versions copes."""
    with database.session() as session:
        with pytest.raises(VersionNotFound):
            repository.get_version(session=session, version=version)
        assert repository.list_versions(session=session, limit=5, before=2**63) == []


# -- item 7: a transient deletion is not a rollout -------------------------------------------


def test_a_deleted_flag_file_keeps_serving_through_the_settle_window(
    tmp_path: Path, flags_dir: Path
) -> None:
    """Delete the routing file: routing keeps answering 200 and status lists the deletion as
    pending; recreated within the window nothing is published; left deleted, its flags go."""
    token = "viewer-token-0123456789"
    settings = Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.02,
        deletion_settle=6.0,  # wide: 50 requests must fit in it on a loaded 2-core machine
        admin_tokens=f"ops-viewer:viewer:{token}",
    )
    routing = flags_dir / "routing.flagd.json"
    content = routing.read_bytes()
    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as client,
    ):

        def status() -> dict[str, Any]:
            body: dict[str, Any] = client.get("/v1/flags/status").json()
            return body

        def route() -> int:
            return client.post(
                f"/v1/route/{AB_TEST_ROUTER}", json={"context": {"targetingKey": "user-1"}}
            ).status_code

        version = status()["version"]
        assert route() == 200
        routing.unlink()
        wait_until(lambda: bool(status()["pendingDeletions"]))
        assert [route() for _ in range(50)] == [200] * 50
        during = status()
        assert during["state"] == "ok"
        assert during["version"] == version
        assert [item["file"] for item in during["pendingDeletions"]] == ["routing.flagd.json"]
        assert during["pendingDeletions"][0]["effectiveAt"] > during["pendingDeletions"][0]["since"]
        assert during["pendingDeletions"] == status()["pendingDeletions"]  # still in the window

        routing.write_bytes(content)
        wait_until(lambda: not status()["pendingDeletions"])
        assert status()["version"] == version  # nothing was published
        assert route() == 200

        routing.unlink()
        wait_until(lambda: route() == 404)
        after = status()
        assert after["pendingDeletions"] == []
        assert after["version"] == version + 1
        assert "routing.flagd.json" not in after["files"]
