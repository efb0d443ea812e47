"""The admin API on a real uvicorn server: auth (401/403), reads, validated atomic edits that are
versioned and attributed, history with diffs, rollback, tokens and the audit log."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import db_support
import httpx
import pytest
from fastapi import Depends
from fastapi.routing import APIRoute
from servers import ServerThread

from control_plane.db import Database, repository
from control_plane.flagstore.loader import load_directory
from control_plane.flagstore.store import FlagStore
from control_plane.http.admin_api import router
from control_plane.http.app import create_app
from control_plane.http.deps import require_gateway_token
from control_plane.settings import Settings
from flags import AB_TEST_ROUTER, CANARY_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

ADMIN = "admin-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"
GATEWAY = "gateway-token-0123456789abcdef"
PROBLEM = "application/problem+json"


@dataclass
class Admin:
    url: str
    store: FlagStore
    database: Database
    flags_dir: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def disk(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.flags_dir.iterdir())}


@pytest.fixture
def admin(database: Database, database_url: str, flags_dir: Path) -> Iterator[Admin]:
    """The real app over a copy of the shipped flags and a real database."""
    settings = Settings(
        flags_dir=flags_dir,
        database_url=database_url,
        sync_port=0,
        reload_interval=0.02,
        admin_tokens=[f"root:admin:{ADMIN}", f"ops:operator:{OPERATOR}", f"dash:viewer:{VIEWER}"],
        gateway_tokens=[GATEWAY],
    )
    app = create_app(settings)

    @app.get("/gateway-only", dependencies=[Depends(require_gateway_token)])
    def gateway_only() -> dict[str, str]:
        return {"ok": "yes"}

    with ServerThread(app) as server:
        yield Admin(server.url, app.state.components.store, database, flags_dir)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def _history(admin: Admin) -> list[dict[str, Any]]:
    with admin.client(VIEWER) as client:
        return list(client.get("/v1/flags/history", params={"limit": 200}).json()["items"])


# -- authentication and roles ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-known-token-at-all"},
        {"Authorization": f"Basic {ADMIN}"},
    ],
)
def test_no_or_unknown_token_is_401(admin: Admin, headers: dict[str, str]) -> None:
    """Without a known bearer token every admin endpoint answers 401 with WWW-Authenticate."""
    with httpx.Client(base_url=admin.url, headers=headers) as client:
        for method, path in [
            ("GET", "/v1/flags"),
            ("GET", "/v1/flags/history"),
            ("PUT", f"/v1/flags/{AB_TEST_ROUTER}"),
            ("POST", "/v1/flags/rollback/1"),
            ("GET", "/v1/tokens"),
        ]:
            response = client.request(method, path, content=b"{not json")
            _problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("token", "method", "path"),
    [
        (VIEWER, "PUT", f"/v1/flags/{AB_TEST_ROUTER}"),
        (OPERATOR, "POST", "/v1/flags/rollback/1"),
        (OPERATOR, "POST", "/v1/tokens"),
        (OPERATOR, "GET", "/v1/tokens"),
        (OPERATOR, "GET", "/v1/audit"),
    ],
)
def test_role_too_low_is_403(admin: Admin, token: str, method: str, path: str) -> None:
    """A known token whose role is too low gets 403 naming the role needed; nothing changes."""
    before = admin.disk()
    with admin.client(token) as client:
        body = _problem(client.request(method, path, json={"state": "ENABLED"}), 403)
    assert "needs" in body["detail"]
    assert admin.disk() == before


def test_whoami(admin: Admin) -> None:
    """A token can see its own name and role."""
    with admin.client(OPERATOR) as client:
        assert client.get("/v1/whoami").json() == {
            "name": "ops",
            "role": "operator",
            "source": "settings",
        }


def test_gateway_token_dependency(admin: Admin) -> None:
    """The routing API dependency lets the gateway token through and refuses anything else."""
    with httpx.Client(base_url=admin.url) as client:
        _problem(client.get("/gateway-only"), 401)
        _problem(client.get("/gateway-only", headers={"Authorization": f"Bearer {ADMIN}"}), 401)
        ok = client.get("/gateway-only", headers={"Authorization": f"Bearer {GATEWAY}"})
        assert ok.json() == {"ok": "yes"}


# -- reading ---------------------------------------------------------------------------------


def test_list_and_get_flags(admin: Admin) -> None:
    """Viewers list every serving flag with its file and version, and read one definition."""
    with admin.client(VIEWER) as client:
        listing = client.get("/v1/flags").json()
        one = client.get(f"/v1/flags/{AB_TEST_ROUTER}").json()
        missing = client.get("/v1/flags/no-such-flag")
    served = admin.store.current
    assert listing["flagSetVersion"] == served.version
    assert {f["key"]: f["source"] for f in listing["flags"]} == dict(served.sources)
    assert one["flag"] == served.flags[AB_TEST_ROUTER]
    assert one["source"] == "routing.flagd.json"
    assert "no-such-flag" in _problem(missing, 404)["detail"]


def test_fixed_paths_are_not_captured_by_the_key_route(admin: Admin) -> None:
    """/v1/flags/status and /v1/flags/history reach their own handlers, not /v1/flags/{key}."""
    with admin.client(VIEWER) as client:
        assert "state" in client.get("/v1/flags/status").json()
        assert "items" in client.get("/v1/flags/history").json()
    paths = [route.path for route in router.routes if isinstance(route, APIRoute)]
    assert paths.index("/v1/flags/history") < paths.index("/v1/flags/{key}")
    assert paths.index("/v1/flags/rollback/{version}") < paths.index("/v1/flags/{key}")


# -- editing ---------------------------------------------------------------------------------


def test_put_edits_the_flag_file_and_records_the_version(admin: Admin) -> None:
    """A valid PUT rewrites the flag in its own file, goes live, and is versioned as the token."""
    with admin.client(VIEWER) as client:
        definition = client.get(f"/v1/flags/{AB_TEST_ROUTER}").json()["flag"]
    definition["targeting"]["fractional"] = [["model-a", 80], ["model-b", 20]]
    previous = admin.store.current.version
    with admin.client(OPERATOR) as client:
        response = client.put(
            f"/v1/flags/{AB_TEST_ROUTER}",
            json=definition,
            params={"message": "shift traffic to model-a"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True
    assert body["flagSetVersion"] == previous + 1
    assert admin.store.current.version == previous + 1
    assert admin.store.current.flags[AB_TEST_ROUTER] == definition
    on_disk = json.loads((admin.flags_dir / "routing.flagd.json").read_text())
    assert on_disk["flags"][AB_TEST_ROUTER] == definition
    assert CANARY_ROUTER in on_disk["flags"]  # the rest of the file is kept
    assert not [p for p in admin.flags_dir.iterdir() if p.name.startswith(".")]  # no temp left
    newest = _history(admin)[0]
    assert (newest["version"], newest["source"], newest["actor"]) == (previous + 1, "api", "ops")
    assert newest["message"] == "shift traffic to model-a"
    assert newest["diff"]["summary"]["changed"] == [AB_TEST_ROUTER]
    assert {
        "op": "replace",
        "path": "/targeting/fractional/0/1",
        "before": 50,
        "after": 80,
    } in newest["diff"]["flags"][0]["changes"]


def test_put_same_definition_is_not_a_new_version(admin: Admin) -> None:
    """Writing back an unchanged definition answers changed=false and adds no version."""
    before = len(_history(admin))
    with admin.client(VIEWER) as client:
        definition = client.get(f"/v1/flags/{AB_TEST_ROUTER}").json()["flag"]
    with admin.client(OPERATOR) as client:
        body = client.put(f"/v1/flags/{AB_TEST_ROUTER}", json=definition).json()
    assert body["changed"] is False
    assert len(_history(admin)) == before


def test_put_new_key_goes_to_the_api_file(admin: Admin) -> None:
    """A new key is created in api.flagd.json (201) and served."""
    definition = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
    }
    with admin.client(OPERATOR) as client:
        response = client.put("/v1/flags/new-feature", json=definition)
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "api.flagd.json"
    document = json.loads((admin.flags_dir / "api.flagd.json").read_text())
    assert document["flags"] == {"new-feature": definition}
    assert admin.store.current.sources["new-feature"] == "api.flagd.json"


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (
            {
                "state": "ENABLED",
                "variants": {"a": {"backend": "m", "url": "http://x"}},
                "defaultVariant": "missing",
            },
            "defaultVariant",
        ),
        (
            {
                "state": "ENABLED",
                "variants": {
                    "a": {"backend": "m", "url": "http://x"},
                    "b": {"backend": "n", "url": "http://y"},
                },
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", -5], ["b", 105]]},
            },
            "fractional",
        ),
        ({"state": "SOMETIMES", "variants": {"a": True}, "defaultVariant": "a"}, "state"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_definition_is_422_and_changes_nothing(
    admin: Admin, definition: Any, expected: str
) -> None:
    """An invalid definition is refused with the validator's issues; files and history stay."""
    before_disk = admin.disk()
    before_history = len(_history(admin))
    with admin.client(OPERATOR) as client:
        body = _problem(client.put(f"/v1/flags/{AB_TEST_ROUTER}", json=definition), 422)
    assert body["issues"]
    assert all({"file", "path", "message"} <= set(issue) for issue in body["issues"])
    assert expected in json.dumps(body)
    assert admin.disk() == before_disk
    assert len(_history(admin)) == before_history


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        ("history", {"state": "ENABLED", "variants": {"a": True}, "defaultVariant": "a"}, 422),
        ("status", {"state": "ENABLED", "variants": {"a": True}, "defaultVariant": "a"}, 422),
        (AB_TEST_ROUTER, None, 400),
    ],
)
def test_reserved_keys_and_bad_bodies(admin: Admin, key: str, body: Any, status: int) -> None:
    """Keys that would shadow admin paths are refused (422); a non-JSON body is a 400."""
    with admin.client(OPERATOR) as client:
        content = b"{this is not json" if body is None else json.dumps(body).encode()
        problem = _problem(client.put(f"/v1/flags/{key}", content=content), status)
    assert (key in problem["detail"]) or ("JSON" in problem["detail"])


def test_concurrent_puts_are_all_versioned_in_order(admin: Admin) -> None:
    """Parallel PUTs on different keys all land, each as its own consecutive api version."""
    start = admin.store.current.version
    failures: list[str] = []

    def put(index: int) -> None:
        definition = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on" if index % 2 else "off",
        }
        with admin.client(OPERATOR) as client:
            response = client.put(f"/v1/flags/parallel-{index}", json=definition)
            if response.status_code != 201:
                failures.append(response.text)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {f"parallel-{i}" for i in range(8)} <= set(admin.store.current.flags)
    newer = [item for item in _history(admin) if item["version"] > start]
    assert sorted(item["version"] for item in newer) == list(range(start + 1, start + 9))
    assert {item["source"] for item in newer} == {"api"}  # never mistaken for a file edit


# -- history and rollback --------------------------------------------------------------------


def _edit_weights(admin: Admin, weights: list[int]) -> int:
    with admin.client(VIEWER) as client:
        definition = client.get(f"/v1/flags/{AB_TEST_ROUTER}").json()["flag"]
    definition = copy.deepcopy(definition)
    definition["targeting"]["fractional"] = [["model-a", weights[0]], ["model-b", weights[1]]]
    with admin.client(OPERATOR) as client:
        response = client.put(f"/v1/flags/{AB_TEST_ROUTER}", json=definition)
    assert response.status_code == 200, response.text
    return int(response.json()["flagSetVersion"])


def test_history_pages_with_a_cursor(admin: Admin) -> None:
    """History is newest first and pages through every version with nextBefore."""
    for weights in ([60, 40], [70, 30], [80, 20], [90, 10]):
        _edit_weights(admin, weights)
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    with admin.client(VIEWER) as client:
        while True:
            page = client.get("/v1/flags/history", params=params).json()
            seen += [item["version"] for item in page["items"]]
            if page["nextBefore"] is None:
                break
            params["before"] = page["nextBefore"]
        assert page["total"] == len(seen) == 5
        _problem(client.get("/v1/flags/history", params={"limit": 0}), 400)
        one = client.get("/v1/flags/history/1").json()
        _problem(client.get("/v1/flags/history/99"), 404)
    assert seen == [5, 4, 3, 2, 1]
    assert one["document"]["flags"][AB_TEST_ROUTER]["targeting"]["fractional"][0][1] == 50


def test_rollback_restores_files_and_is_recorded(admin: Admin) -> None:
    """Rolling back rewrites the files to the stored version and records source=rollback."""
    original = admin.store.current
    _edit_weights(admin, [10, 90])
    with admin.client(OPERATOR) as client:
        client.put(
            "/v1/flags/extra",
            json={"state": "ENABLED", "variants": {"x": "y"}, "defaultVariant": "x"},
        )
    assert "extra" in admin.store.current.flags
    with admin.client(ADMIN) as client:
        response = client.post(
            f"/v1/flags/rollback/{original.version}", json={"message": "bad canary"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    served = admin.store.current
    assert body["changed"] is True
    assert served.content_hash == original.content_hash
    assert served.version == body["flagSetVersion"] > original.version
    assert load_directory(admin.flags_dir).flags == dict(original.flags)
    assert not (admin.flags_dir / "api.flagd.json").exists()
    newest = _history(admin)[0]
    assert (newest["source"], newest["actor"]) == ("rollback", "root")
    assert newest["message"] == f"rollback to version {original.version}: bad canary"
    assert newest["diff"]["summary"]["removed"] == ["extra"]


def test_rollback_to_unknown_version_is_404(admin: Admin) -> None:
    """Rolling back to a version that was never stored changes nothing."""
    before = admin.disk()
    with admin.client(ADMIN) as client:
        _problem(client.post("/v1/flags/rollback/999"), 404)
    assert admin.disk() == before


def test_file_edits_are_still_recorded_as_file(admin: Admin) -> None:
    """An operator editing the file by hand gets a 'file' version by the watcher."""
    path = admin.flags_dir / "routing.flagd.json"
    document = json.loads(path.read_text())
    document["flags"][AB_TEST_ROUTER]["defaultVariant"] = "model-b"
    temp = admin.flags_dir / ".routing.tmp"
    temp.write_text(json.dumps(document))
    temp.replace(path)
    deadline = time.monotonic() + 5
    while admin.store.current.flags[AB_TEST_ROUTER]["defaultVariant"] != "model-b":
        assert time.monotonic() < deadline, "the watcher did not pick up the edit"
        time.sleep(0.01)
    newest = _history(admin)[0]
    assert (newest["source"], newest["actor"]) == ("file", "file-watcher")


# -- tokens and audit ------------------------------------------------------------------------


def test_token_lifecycle(admin: Admin) -> None:
    """Create (secret shown once), use, list without secrets, revoke, and refuse afterwards."""
    with admin.client(ADMIN) as client:
        created = client.post("/v1/tokens", json={"name": "deploy-bot", "role": "operator"})
        assert created.status_code == 201, created.text
        secret = created.json()["token"]
        listing = client.get("/v1/tokens")
        assert secret not in listing.text
        names = {item["name"]: item for item in listing.json()["items"]}
        assert names["deploy-bot"]["role"] == "operator"
        assert names["root"]["source"] == "settings"
        assert all("token" not in item for item in listing.json()["items"])
    with admin.client(secret) as client:
        assert client.get("/v1/whoami").json()["name"] == "deploy-bot"
        response = client.put(
            "/v1/flags/bot-flag",
            json={"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"},
        )
        assert response.status_code == 201
        _problem(client.get("/v1/tokens"), 403)
    assert _history(admin)[0]["actor"] == "deploy-bot"
    with admin.client(ADMIN) as client:
        assert client.delete("/v1/tokens/deploy-bot").status_code == 204
    with admin.client(secret) as client:
        _problem(client.get("/v1/whoami"), 401)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/tokens", {"name": "root", "role": "viewer"}, 409),
        ("POST", "/v1/tokens", {"name": "x", "role": "superuser"}, 400),
        ("POST", "/v1/tokens", {"name": "bad name!", "role": "viewer"}, 400),
        ("DELETE", "/v1/tokens/root", None, 409),
        ("DELETE", "/v1/tokens/nobody", None, 404),
    ],
)
def test_token_management_errors(
    admin: Admin, method: str, path: str, body: Any, status: int
) -> None:
    """Clashing names, bad roles and names, settings tokens and unknown tokens are refused."""
    with admin.client(ADMIN) as client:
        _problem(client.request(method, path, json=body), status)


def test_duplicate_database_token_name_is_409(admin: Admin) -> None:
    """A database token name is never reused, even after revocation."""
    with admin.client(ADMIN) as client:
        assert client.post("/v1/tokens", json={"name": "once"}).status_code == 201
        client.delete("/v1/tokens/once")
        _problem(client.post("/v1/tokens", json={"name": "once"}), 409)


def test_audit_log_attributes_every_write(admin: Admin) -> None:
    """Edits, rollbacks and token changes each appear in the audit log with their actor."""
    version = admin.store.current.version
    _edit_weights(admin, [20, 80])
    with admin.client(ADMIN) as client:
        client.post(f"/v1/flags/rollback/{version}")
        client.post("/v1/tokens", json={"name": "reader", "role": "viewer"})
        client.delete("/v1/tokens/reader")
        events = client.get("/v1/audit").json()["items"]
    assert [(e["action"], e["actor"], e["target"]) for e in events] == [
        ("token.revoke", "root", "reader"),
        ("token.create", "root", "reader"),
        ("flags.rollback", "root", f"version {version}"),
        ("flag.put", "ops", AB_TEST_ROUTER),
    ]


def test_tokens_never_reach_the_logs(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    """No log record (at any level) contains a token, through a full round of admin calls."""
    caplog.set_level(logging.DEBUG)
    with admin.client(ADMIN) as client:
        secret = client.post("/v1/tokens", json={"name": "log-check", "role": "admin"}).json()
    with admin.client(secret["token"]) as client:
        client.get("/v1/flags")
        client.get("/v1/whoami", headers={"Authorization": "Bearer wrong-secret-value"})
    _edit_weights(admin, [55, 45])
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records  # the calls above do log (versions recorded, reloads)
    for token in (ADMIN, OPERATOR, VIEWER, secret["token"], "wrong-secret-value"):
        assert token not in logged
    with admin.database.session() as session:
        assert repository.token_by_name(session=session, name="log-check") is not None
