"""OFREP to the letter (issue 14): answers checked against the OFREP OpenAPI document.

The schema fragments below are encoded by hand from open-feature/protocol
`service/openapi.yaml` (Apache-2.0; components evaluationSuccess, evaluationFailure,
flagNotFound, generalErrorResponse, bulkEvaluationSuccess, bulkEvaluationFailure, and the
paths' status codes). `reason` lists the spec's values (STATIC, TARGETING_MATCH, SPLIT,
DISABLED, UNKNOWN); `variant` is a string when present.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from distribution_support import ofrep_app, settings_for, write_document
from servers import ServerThread

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the OFREP schemas")

TOKEN = "ofrep-gateway-token-0123456789"
_METADATA = {"type": "object", "additionalProperties": {"type": ["boolean", "string", "number"]}}
SUCCESS = {
    "type": "object",
    "required": ["key", "reason", "metadata"],
    "properties": {
        "key": {"type": "string"},
        "reason": {"enum": ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"]},
        "variant": {"type": "string"},
        "metadata": _METADATA,
    },
}
FAILURE = {
    "type": "object",
    "required": ["key", "errorCode"],
    "properties": {
        "key": {"type": "string"},
        "errorCode": {
            "enum": ["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"]
        },
        "errorDetails": {"type": "string"},
    },
}
NOT_FOUND = {
    "type": "object",
    "required": ["key", "errorCode"],
    "properties": {
        "key": {"type": "string"},
        "errorCode": {"enum": ["FLAG_NOT_FOUND"]},
        "errorDetails": {"type": "string"},
    },
}
GENERAL = {"type": "object", "properties": {"errorDetails": {"type": "string"}}}
BULK = {
    "type": "object",
    "required": ["flags"],
    "properties": {"flags": {"type": "array", "items": {"anyOf": [SUCCESS, FAILURE]}}},
}
BULK_FAILURE = {
    "type": "object",
    "required": ["errorCode"],
    "properties": {"errorCode": {"type": "string"}, "errorDetails": {"type": "string"}},
}
#: The statuses each path documents.
SINGLE_STATUSES = {200, 400, 401, 403, 404, 429, 500}
BULK_STATUSES = {200, 304, 400, 401, 403, 429, 500}

FLAGS: dict[str, Any] = {
    "static": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
        "metadata": {"team": "a"},
    },
    "targeted": {
        "state": "ENABLED",
        "variants": {"a": "A", "b": "B"},
        "defaultVariant": "a",
        "targeting": {"if": [{"==": [{"var": "x"}, 1]}, "b", None]},
    },
    "split": {
        "state": "ENABLED",
        "variants": {"a": 1, "b": 2},
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", 50], ["b", 50]]},
    },
    "disabled": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
    "no-default": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": None},
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    flags = tmp_path / "flags"
    flags.mkdir()
    write_document(flags, "f.flagd.json", {"metadata": {"flagSetId": "web"}, "flags": FLAGS})
    app = ofrep_app(
        settings_for(
            tmp_path, flags, gateway_tokens=TOKEN, ofrep_rate_limit=0.5, ofrep_rate_burst=40
        )
    )
    with ServerThread(app) as running:
        yield running.url


def _check(schema: dict[str, Any], body: Any) -> None:
    jsonschema.validate(body, schema)


def test_every_answer_matches_the_spec_schema(server: str) -> None:
    """Success, failure, not-found and bulk answers validate against OFREP's schemas, with
    X-API-Key as the credential."""
    with httpx.Client(base_url=server, headers={"x-api-key": TOKEN}) as http:
        for key in FLAGS:
            response = http.post(
                f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"targetingKey": "u", "x": 1}}
            )
            assert response.status_code == 200, response.text
            _check(SUCCESS, response.json())
        assert "variant" not in http.post("/ofrep/v1/evaluate/flags/no-default").json()
        assert http.post("/ofrep/v1/evaluate/flags/static").json()["metadata"] == {
            "flagSetId": "web",
            "team": "a",
        }
        missing = http.post("/ofrep/v1/evaluate/flags/nope", json={})
        assert missing.status_code == 404
        _check(NOT_FOUND, missing.json())
        bad = http.post("/ofrep/v1/evaluate/flags/static", content=b"{not json")
        assert bad.status_code == 400
        _check(FAILURE, bad.json())
        bulk = http.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "u"}})
        assert bulk.status_code == 200
        _check(BULK, bulk.json())
        assert bulk.headers["etag"].startswith('"')
        bad_bulk = http.post("/ofrep/v1/evaluate/flags", content=b"[1")
        assert bad_bulk.status_code in BULK_STATUSES
        _check(BULK_FAILURE, bad_bulk.json())


def test_missing_or_wrong_credentials_are_401_general_error(server: str) -> None:
    """Without a token, or with a wrong one, OFREP answers 401 with generalErrorResponse JSON."""
    for headers in (
        {},
        {"x-api-key": "wrong-token-0123456789"},
        {"authorization": "Bearer wrong-token-0123456789"},
    ):
        response = httpx.post(f"{server}/ofrep/v1/evaluate/flags/static", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        _check(GENERAL, response.json())
    ok = httpx.post(
        f"{server}/ofrep/v1/evaluate/flags/static", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200


def test_over_the_rate_limit_is_429_with_retry_after(server: str) -> None:
    """A client over its token bucket gets 429 with a Retry-After in seconds."""
    statuses: list[int] = []
    with httpx.Client(base_url=server, headers={"x-api-key": TOKEN}) as http:
        for _ in range(60):
            response = http.post("/ofrep/v1/evaluate/flags/static")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                _check(GENERAL, response.json())
                break
    assert statuses[-1] == 429
    assert set(statuses) <= SINGLE_STATUSES
