"""Hot reload under load: edits (valid, invalid, half-written) while decisions run concurrently.

Every generation of the flag file routes each variant to URLs that carry the generation number
and stamps it in the flag metadata. A decision is consistent when its URL, its flag metadata and
the flag set version it reports all belong to the same published flag set; a mix would show up
as a URL of one generation under the version of another.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openfeature import api as openfeature_api
from servers import ServerThread

from control_plane.flagstore import FlagSet, FlagStore
from control_plane.http.app import create_app
from control_plane.routing.decisions import Decider
from control_plane.settings import Settings
from providers import source_fed_provider

FLAGS = ("router-a", "router-b")
_GENERATION = re.compile(r"/gen-(\d+)/")


def document(generation: int, *, broken: str | None = None) -> dict[str, Any]:
    """Generation `generation` of the flag file; `broken` names a defect to plant."""
    flags: dict[str, Any] = {}
    for index, key in enumerate(FLAGS):
        variants = {
            name: {
                "backend": f"{key}-{name}",
                "url": f"http://127.0.0.1:{9100 + 10 * index + offset}/gen-{generation}/{name}",
            }
            for offset, name in enumerate(("v1", "v2", "v3"))
        }
        flags[key] = {
            "state": "ENABLED",
            "metadata": {"generation": generation},
            "variants": variants,
            "defaultVariant": "v1",
            "targeting": {"fractional": [["v1", 34], ["v2", 33], ["v3", 33]]},
        }
    if broken == "weight":
        flags["router-a"]["targeting"]["fractional"][0][1] = -5
    elif broken == "variant":
        flags["router-b"]["defaultVariant"] = "v4"
    elif broken == "url":
        flags["router-a"]["variants"]["v2"]["url"] = "127.0.0.1:9101"
    return {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": flags}


def write_atomically(path: Path, content: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(content)
    temp.replace(path)


def write_in_place_slowly(path: Path, content: str, pause: float) -> None:
    """Truncate and write in two halves, as an editor without atomic saves would."""
    with path.open("w") as handle:
        handle.write(content[: len(content) // 2])
        handle.flush()
        time.sleep(pause)
        handle.write(content[len(content) // 2 :])


@dataclass
class Observations:
    """Published flag sets (version -> generation per flag) and what decisions saw."""

    published: dict[int, dict[str, int]] = field(default_factory=dict)
    decisions: list[tuple[str, int, str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, flag_set: FlagSet) -> None:
        generations = {key: flag_set.flags[key]["metadata"]["generation"] for key in FLAGS}
        urls = [
            variant["url"] for key in FLAGS for variant in flag_set.flags[key]["variants"].values()
        ]
        with self.lock:
            self.published[flag_set.version] = generations
            for url in urls:  # a published set is whole: one generation throughout
                if _generation(url) != generations[FLAGS[0]]:
                    self.failures.append(f"version {flag_set.version} mixes {url}")

    def seen_generations(self) -> set[int]:
        with self.lock:
            return {_generation(url) for _, _, url, _ in self.decisions}

    def check(self) -> None:
        assert self.failures == []
        assert self.decisions
        for flag, version, url, metadata_generation in self.decisions:
            expected = self.published[version][flag]
            assert _generation(url) == expected, (flag, version, url)
            assert metadata_generation == expected, (flag, version, metadata_generation)


def _generation(url: str) -> int:
    match = _GENERATION.search(url)
    assert match, url
    return int(match.group(1))


def run_edits(
    path: Path, store: FlagStore, observations: Observations, rounds: int, interval: float
) -> tuple[int, int]:
    """Edit the file `rounds` times; returns (valid edits, invalid edits). Waits for each."""
    valid = invalid = 0
    defects = ("weight", "variant", "url")
    for generation in range(2, rounds + 2):
        if generation % 4 == 0:
            failed = store.stats.reloads_failed
            write_atomically(
                path, json.dumps(document(generation, broken=defects[generation % 3]), indent=2)
            )
            invalid += 1
            wait_until(lambda failed=failed: store.stats.reloads_failed > failed)
        text = json.dumps(document(generation), indent=2)
        if generation % 3 == 0:
            write_in_place_slowly(path, text, pause=interval * 3)
        else:
            write_atomically(path, text)
        valid += 1
        wait_until(lambda generation=generation: generation in observations.seen_generations())
    return valid, invalid


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for the effect of an edit; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the edit never took effect")
        time.sleep(0.005)


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    directory = tmp_path / "flags"
    directory.mkdir()
    path = directory / "routers.flagd.json"
    path.write_text(json.dumps(document(1), indent=2))
    return path


def test_reloads_under_concurrent_decisions_never_fail_or_mix(flag_file: Path) -> None:
    """In strict mode, threads deciding through the flagd provider see only whole, valid flag
    sets."""
    interval = 0.02
    store = FlagStore(flag_file.parent, reload_interval=interval, strict=True)  # atomic sets
    observations = Observations()
    store.subscribe(observations.publish)
    store.reload()
    domain = f"reload-{uuid.uuid4().hex[:8]}"
    openfeature_api.set_provider_and_wait(source_fed_provider(store), domain=domain)
    decider = Decider(openfeature_api.get_client(domain), store)
    stop = threading.Event()

    def decide_forever(worker: int) -> None:
        count = 0
        while not stop.is_set():
            flag = FLAGS[count % 2]
            try:
                decision = decider.decide(flag, f"user-{worker}-{count}", {})
                if decision.error_code or decision.reason == "ERROR":
                    raise AssertionError(f"evaluation error {decision.error_code}")
                with observations.lock:
                    observations.decisions.append(
                        (
                            flag,
                            decision.flag_set_version,
                            decision.url,
                            decision.metadata.get("generation"),
                        )
                    )
            except Exception as exc:  # any failure is a finding, reported below
                with observations.lock:
                    observations.failures.append(f"{flag}: {exc!r}")
            count += 1

    workers = [threading.Thread(target=decide_forever, args=(index,)) for index in range(4)]
    for worker in workers:
        worker.start()
    store.start()
    try:
        wait_until(lambda: 1 in observations.seen_generations())
        valid, invalid = run_edits(flag_file, store, observations, rounds=24, interval=interval)
    finally:
        stop.set()
        store.stop()
        for worker in workers:
            worker.join(timeout=10)
    observations.check()
    assert observations.seen_generations() == set(range(1, valid + 2))
    assert len(observations.published) == valid + 1
    assert store.stats.reloads_failed >= invalid
    assert store.status()["state"] == "ok"


@pytest.fixture
def app_settings(tmp_path: Path, flag_file: Path) -> Settings:
    return Settings(
        flags_dir=flag_file.parent,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.02,
        flags_strict=True,
    )


def test_reloads_under_concurrent_http_requests_never_fail_or_mix(
    flag_file: Path, app_settings: Settings
) -> None:
    """The same through the HTTP routing API on a real server: every answer is 200 and whole."""
    app = create_app(app_settings)
    observations = Observations()
    stop = threading.Event()
    with ServerThread(app) as server:
        store: FlagStore = app.state.components.store
        store.subscribe(observations.publish)

        def request_forever(worker: int) -> None:
            count = 0
            with httpx.Client(base_url=server.url, timeout=10) as client:
                while not stop.is_set():
                    flag = FLAGS[count % 2]
                    try:
                        response = client.post(
                            f"/v1/route/{flag}", headers={"x-user-id": f"u-{worker}-{count}"}
                        )
                        body = response.json()
                        if response.status_code != 200 or body.get("errorCode"):
                            raise AssertionError(f"{response.status_code} {body}")
                        with observations.lock:
                            # The HTTP answer carries no metadata; the URL and version must agree.
                            generation = _generation(body["url"] + "/")
                            observations.decisions.append(
                                (flag, body["flagSetVersion"], body["url"] + "/", generation)
                            )
                    except Exception as exc:  # any failure is a finding, reported below
                        with observations.lock:
                            observations.failures.append(f"{flag}: {exc!r}")
                    count += 1

        workers = [threading.Thread(target=request_forever, args=(index,)) for index in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_until(lambda: 1 in observations.seen_generations())
            valid, _ = run_edits(flag_file, store, observations, rounds=8, interval=0.02)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=10)
    observations.check()
    assert observations.seen_generations() == set(range(1, valid + 2))
