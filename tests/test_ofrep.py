"""OFREP endpoints on a real uvicorn server: status codes, error codes, bodies, ETag and 304."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from distribution_support import ofrep_app, settings_for, write_document
from servers import ServerThread

from control_plane.flagstore import FlagStore
from flags import FLAGS_DIR, REGION_ROUTER

TYPED_FLAGS: dict[str, Any] = {
    "bool-flag": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "off", None]},
    },
    "string-flag": {
        "state": "ENABLED",
        "variants": {"hi": "hi", "bye": "bye"},
        "defaultVariant": "hi",
    },
    "int-flag": {"state": "ENABLED", "variants": {"one": 1, "ten": 10}, "defaultVariant": "ten"},
    # Numbers with a fraction make the flag a float flag; its whole-number variant stays a float.
    "float-flag": {
        "state": "ENABLED",
        "variants": {"whole": 1, "half": 0.5},
        "defaultVariant": "whole",
    },
    "object-flag": {
        "state": "ENABLED",
        "variants": {"a": {"size": 1}, "b": {"size": 2}},
        "defaultVariant": "b",
    },
    "disabled-flag": {
        "state": "DISABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    },
    "code-default-flag": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": None,
    },
    # The variant comes from the context, so only evaluation can tell it does not exist.
    "dynamic-variant-flag": {
        "state": "ENABLED",
        "variants": {"red": "red", "blue": "blue"},
        "defaultVariant": "red",
        "targeting": {"var": "color"},
    },
}


class OfrepServer:
    def __init__(self, flags_dir: Path, server: ServerThread) -> None:
        self.flags_dir = flags_dir
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=10)

    @property
    def store(self) -> FlagStore:
        store: FlagStore = self.server.server.config.app.state.components.store
        return store

    def single(self, key: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.http.post(f"/ofrep/v1/evaluate/flags/{key}", **kwargs)

    def bulk(self, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.http.post("/ofrep/v1/evaluate/flags", **kwargs)


@pytest.fixture
def ofrep(tmp_path: Path) -> Iterator[OfrepServer]:
    flags_dir = tmp_path / "flags"
    flags_dir.mkdir()
    shutil.copy(FLAGS_DIR / "routing.flagd.json", flags_dir)
    write_document(flags_dir, "typed.flagd.json", {"flags": TYPED_FLAGS})
    app = ofrep_app(settings_for(tmp_path, flags_dir))
    with ServerThread(app) as server:
        client = OfrepServer(flags_dir, server)
        try:
            yield client
        finally:
            client.http.close()


def test_single_flag_answers_value_variant_reason_and_metadata(ofrep: OfrepServer) -> None:
    """A targeting match answers 200 with the variant's value, TARGETING_MATCH and metadata."""
    response = ofrep.single(REGION_ROUTER, {"context": {"targetingKey": "u1", "user-region": "cn"}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["key"] == REGION_ROUTER
    assert body["value"] == {"backend": "model-cn", "url": "http://127.0.0.1:9112"}
    assert body["variant"] == "cn"
    assert body["reason"] == "TARGETING_MATCH"
    # Metadata as flagd has it; the project's facts travel in headers (issue 14).
    assert not {"flagSetVersion", "flagSetHash", "bucketing"} & set(body["metadata"])
    assert "description" in body["metadata"]  # the flag's own metadata
    assert response.headers["x-flag-set-version"] == str(ofrep.store.current.version)
    assert response.headers["x-bucketing"] == "flagd-fractional-v2"


@pytest.mark.parametrize(
    ("key", "value", "variant", "reason"),
    [
        ("bool-flag", True, "on", "STATIC"),  # flagd's DEFAULT: not in OFREP's reasons
        ("string-flag", "hi", "hi", "STATIC"),
        ("int-flag", 10, "ten", "STATIC"),
        ("float-flag", 1.0, "whole", "STATIC"),
        ("object-flag", {"size": 2}, "b", "STATIC"),
    ],
)
def test_every_flag_type_is_answered_with_its_value(
    ofrep: OfrepServer, key: str, value: Any, variant: str, reason: str
) -> None:
    """Each flag answers its value whatever its type (OFREP requests carry no type)."""
    body = ofrep.single(key, {"context": {"targetingKey": "u1"}}).json()
    assert (body["value"], body["variant"], body["reason"]) == (value, variant, reason)
    assert type(body["value"]) is type(value)


def test_float_flag_values_are_json_floats(ofrep: OfrepServer) -> None:
    """A float flag's whole-number variant is written 1.0, so typed clients see a float."""
    response = ofrep.single("float-flag", {})
    assert '"value":1.0' in response.text


@pytest.mark.parametrize(
    ("key", "reason"), [("disabled-flag", "DISABLED"), ("code-default-flag", "STATIC")]
)
def test_code_default_answers_leave_out_the_value(
    ofrep: OfrepServer, key: str, reason: str
) -> None:
    """A disabled flag or one without a default variant defers to the caller's code default."""
    response = ofrep.single(key, {"context": {}})
    assert response.status_code == 200
    body = response.json()
    assert "value" not in body
    assert body["reason"] == reason
    assert "variant" not in body  # the schema's variant is a string: left out, never null


def test_unknown_flag_is_404_flag_not_found(ofrep: OfrepServer) -> None:
    """An unknown key answers 404 with errorCode FLAG_NOT_FOUND and the key."""
    response = ofrep.single("no-such-flag", {"context": {}})
    assert response.status_code == 404
    body = response.json()
    assert body["key"] == "no-such-flag"
    assert body["errorCode"] == "FLAG_NOT_FOUND"
    assert "no-such-flag" in body["errorDetails"]


def test_evaluation_error_is_400_general(ofrep: OfrepServer) -> None:
    """A rule resolving to a variant that does not exist answers 400 GENERAL with details."""
    response = ofrep.single("dynamic-variant-flag", {"context": {"color": "green"}})
    assert response.status_code == 400
    body = response.json()
    assert body["key"] == "dynamic-variant-flag"
    assert body["errorCode"] == "GENERAL"
    assert "green" in body["errorDetails"]


@pytest.mark.parametrize(
    ("content", "code", "named"),
    [
        (b"{not json", "PARSE_ERROR", "not valid JSON"),
        (b"\xff\xfe", "PARSE_ERROR", "not valid UTF-8"),
        (b"[1, 2]", "INVALID_CONTEXT", "an array"),
        (b'{"context": 5}', "INVALID_CONTEXT", "`context` must be a JSON object"),
        (b'{"context": {"targetingKey": 7}}', "INVALID_CONTEXT", "targetingKey"),
    ],
)
def test_bad_request_bodies_are_400_with_the_ofrep_error_code(
    ofrep: OfrepServer, content: bytes, code: str, named: str
) -> None:
    """Unparseable bodies are PARSE_ERROR, unusable contexts INVALID_CONTEXT, single and bulk."""
    headers = {"content-type": "application/json"}
    single = ofrep.single(REGION_ROUTER, content=content, headers=headers)
    assert single.status_code == 400
    assert single.json()["key"] == REGION_ROUTER
    assert single.json()["errorCode"] == code
    assert named in single.json()["errorDetails"]
    bulk = ofrep.bulk(content=content, headers=headers)
    assert bulk.status_code == 400
    assert bulk.json()["errorCode"] == code
    assert named in bulk.json()["errorDetails"]


def test_empty_body_evaluates_with_an_empty_context(ofrep: OfrepServer) -> None:
    """No body at all is an empty context, as flagd treats it."""
    response = ofrep.single(REGION_ROUTER, content=b"")
    assert response.status_code == 200
    assert response.json()["variant"] == "global"


def test_oversized_body_is_400_parse_error(ofrep: OfrepServer) -> None:
    """A body over 1 MiB is refused before it is parsed: OFREP's 400 PARSE_ERROR."""
    huge = json.dumps({"context": {"blob": "x" * (1 << 20)}}).encode()
    response = ofrep.single(REGION_ROUTER, content=huge)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "PARSE_ERROR"
    assert "larger than" in response.json()["errorDetails"]


def test_no_valid_flag_set_is_500_with_retry_after(tmp_path: Path) -> None:
    """Before a valid flag set is loaded, OFREP answers its 500 generalErrorResponse with
    Retry-After (503 is not in OFREP's vocabulary)."""
    flags_dir = tmp_path / "flags"
    flags_dir.mkdir()
    (flags_dir / "broken.flagd.json").write_text("{ this is not json")
    app = ofrep_app(settings_for(tmp_path, flags_dir))
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as http:
        single = http.post(f"/ofrep/v1/evaluate/flags/{REGION_ROUTER}", json={})
        bulk = http.post("/ofrep/v1/evaluate/flags", json={})
    for response in (single, bulk):
        assert response.status_code == 500
        assert response.headers["retry-after"] == "1"
        assert response.json()["errorDetails"]


def test_bulk_answers_every_flag_as_single_evaluations_do(ofrep: OfrepServer) -> None:
    """The bulk answer lists every flag once, each item equal to that flag's single answer."""
    body = {
        "context": {
            "targetingKey": "user-7",
            "user-region": "cn",
            "color": "green",
            "email": "a@example.com",
        }
    }
    response = ofrep.bulk(body)
    assert response.status_code == 200
    answer = response.json()
    items = {item["key"]: item for item in answer["flags"]}
    assert len(items) == len(answer["flags"])
    assert set(items) == set(ofrep.store.current.flags)
    for key, item in items.items():
        assert item == ofrep.single(key, body).json(), key
    assert "metadata" not in answer
    assert response.headers["x-flag-set-version"] == str(ofrep.store.current.version)


def test_bulk_etag_and_if_none_match(ofrep: OfrepServer) -> None:
    """Bulk answers carry an ETag; If-None-Match naming it answers 304 with no body."""
    body = {"context": {"targetingKey": "user-1"}}
    first = ofrep.bulk(body)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert ofrep.bulk(body).headers["etag"] == etag  # same flags, same context: same tag
    for header in (etag, f"W/{etag}", etag.strip('"'), f'"other", {etag}', "*"):
        again = ofrep.bulk(body, headers={"if-none-match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    stale = ofrep.bulk(body, headers={"if-none-match": '"something-else"'})
    assert stale.status_code == 200
    assert stale.json() == first.json()


def test_bulk_etag_follows_context_and_flag_changes(ofrep: OfrepServer) -> None:
    """Another context, or a reloaded flag set, gives a new ETag and a full 200 answer."""
    body = {"context": {"targetingKey": "user-1"}}
    etag = ofrep.bulk(body).headers["etag"]
    other = ofrep.bulk(
        {"context": {"targetingKey": "user-1", "user-region": "cn"}},
        headers={"if-none-match": etag},
    )
    assert other.status_code == 200
    assert other.headers["etag"] != etag
    flags = dict(TYPED_FLAGS)
    flags["string-flag"] = {**flags["string-flag"], "defaultVariant": "bye"}
    write_document(ofrep.flags_dir, "typed.flagd.json", {"flags": flags})
    ofrep.store.reload()
    changed = ofrep.bulk(body, headers={"if-none-match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    items = {item["key"]: item for item in changed.json()["flags"]}
    assert items["string-flag"]["value"] == "bye"


def test_bulk_answers_never_mix_flag_set_versions(ofrep: OfrepServer) -> None:
    """While flag sets are swapped continuously, every bulk answer comes from one version."""

    def document(variant: str) -> dict[str, Any]:
        return {
            "flags": {
                f"mix-{index}": {
                    "state": "ENABLED",
                    "variants": {"a": "a", "b": "b"},
                    "defaultVariant": variant,
                }
                for index in range(150)
            }
        }

    stop = threading.Event()

    def reload_forever() -> None:
        variant = "a"
        while not stop.is_set():
            variant = "b" if variant == "a" else "a"
            write_document(ofrep.flags_dir, "mix.flagd.json", document(variant))
            ofrep.store.reload()

    write_document(ofrep.flags_dir, "mix.flagd.json", document("a"))
    ofrep.store.reload()
    reloader = threading.Thread(target=reload_forever)
    reloader.start()
    seen_versions: set[int] = set()
    try:
        for _ in range(60):
            response = ofrep.bulk({"context": {}})
            answer = response.json()
            version = int(response.headers["x-flag-set-version"])
            seen_versions.add(version)
            mixed = [item for item in answer["flags"] if item["key"].startswith("mix-")]
            assert len(mixed) == 150
            assert len({item["value"] for item in mixed}) == 1, "values from two versions"
            assert all("$flagSetVersion" not in item["metadata"] for item in answer["flags"])
    finally:
        stop.set()
        reloader.join(timeout=10)
    assert len(seen_versions) > 1  # the swaps really happened during the requests
