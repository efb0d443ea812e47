"""A real NATS server with JetStream for the record pipeline tests, and records to send it.

`NatsServer` runs `nats-server -js` on a free loopback port with its own store directory and can
be restarted on the same port and store (a NATS outage the clients must ride out). Without the
binary, tests use the server these machines run at 127.0.0.1:4222 with names of their own, and
the tests that restart it skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port

from control_plane.db import Database
from control_plane.events.consumer import EventConsumer
from control_plane.events.stream import StreamSettings
from control_plane.experiments.records import EXPOSURES, Record
from control_plane.experiments.sink import DatabaseSink

__all__ = ["NATS_BINARY", "NatsServer", "consumer", "exposure", "stream", "stream_settings"]

NATS_BINARY = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)
SHARED_URL = "nats://127.0.0.1:4222"


def stream_settings(**overrides: object) -> StreamSettings:
    """Stream, subject and consumer names unique to one test (a shared server stays clean)."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "stream": f"T_{tag}",
        "subject_prefix": f"t{tag}.records",
        "consumer": f"w-{tag}",
        "ack_wait": 2.0,
    }
    values.update(overrides)
    return StreamSettings(**values)  # type: ignore[arg-type]


def exposure(index: int, run: str = "r") -> Record:
    """One exposure record with a unique decision id."""
    return Record(
        EXPOSURES,
        {
            "decision_id": f"{run}-{index:08d}",
            "flag": "chat-router",
            "variant": "canary" if index % 2 else "stable",
            "unit": f"{index:064x}",
            "flag_set_version": 1,
            "reason": "SPLIT",
            "at": 1_700_000_000.0 + index,
        },
    )


class NatsServer:
    """`nats-server -js` on loopback; `restart()` keeps the port and the stored streams."""

    def __init__(self, store: Path, *, config: str = "") -> None:
        if NATS_BINARY is None:
            raise RuntimeError("no nats-server binary")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = store
        self.log = store.parent / f"nats-{self.port}.log"
        #: Extra nats-server configuration (its config file syntax), e.g. "max_payload: 512".
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        assert NATS_BINARY is not None
        options: list[str] = []
        if self.config:
            config_file = self.store.parent / f"nats-{self.port}.conf"
            config_file.write_text(self.config + "\n")
            options = ["-c", str(config_file)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    NATS_BINARY,
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store),
                    *options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not listen: {self.log.read_text()[-2000:]}")

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        process.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


@pytest.fixture
def nats_url(tmp_path: Path) -> object:
    """URL of a NATS server with JetStream: our own when the binary exists, else the shared."""
    if NATS_BINARY is None:
        yield SHARED_URL
        return
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> object:
    """A NATS server of this test's own, which it may restart."""
    if NATS_BINARY is None:
        pytest.skip("no nats-server binary: restarting the shared server is not ours to do")
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream() -> StreamSettings:
    return stream_settings()


@pytest.fixture
def consumer(nats_url: str, database: Database, stream: StreamSettings) -> Iterator[EventConsumer]:
    """A consumer storing `stream` into the test's `database` fixture."""
    consumer = EventConsumer(
        nats_url, DatabaseSink(database), stream=stream, retry_interval=0.2, fetch_timeout=0.2
    )
    consumer.start()
    yield consumer
    consumer.stop()
