"""A real NATS server with JetStream for the record pipeline tests, and records to send it.

`NatsServer` runs `nats-server -js` on a free loopback port with its own store directory and can
be restarted on the same port and store (a NATS outage the clients must ride out). Without the
binary, tests use the server these machines run at 127.0.0.1:4222 with names of their own, and
the tests that restart it skip. `LossyProxy` is a TCP proxy in front of a server that can lose
what the server sends back (PubAcks lost on the way), cut its connections and refuse new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from experiments_support import wait_for
from servers import free_port
from sqlalchemy import text

from control_plane.db import Database
from control_plane.events.consumer import EventConsumer
from control_plane.events.loop import LoopThread
from control_plane.events.publisher import EventPublisher
from control_plane.events.stream import StreamSettings
from control_plane.experiments.journal import Journal
from control_plane.experiments.records import EXPOSURES, Record
from control_plane.experiments.sink import DatabaseSink

__all__ = [
    "NATS_BINARY",
    "LossyProxy",
    "NatsServer",
    "consumer",
    "exposure",
    "item",
    "publisher",
    "stored",
    "stream",
    "stream_messages",
    "stream_settings",
    "wait_stored",
]

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


def publisher(
    url: str, journal_dir: Path, stream: StreamSettings, **options: Any
) -> EventPublisher:
    """A publisher of records offered as `item(record)`, retrying fast."""
    return EventPublisher(
        url,
        Journal(journal_dir),
        prepare=lambda offered: offered[1],
        stream=stream,
        **{"retry_interval": 0.2, "ack_timeout": 2.0, **options},
    )


def item(record: Record) -> tuple[str, Record]:
    """What the recorder offers: (table, payload); `publisher`'s prepare passes it through."""
    return (record.table, record)


def stored(database: Database) -> tuple[int, int]:
    """(exposure rows, distinct decision ids) in the database."""
    with database.session() as session:
        rows, distinct = session.execute(
            text("SELECT count(*), count(DISTINCT decision_id) FROM exposures")
        ).one()
    return int(rows), int(distinct)


def wait_stored(database: Database, count: int) -> None:
    wait_for(lambda: stored(database)[0] >= count, what=f"{count} stored records", timeout=30)
    time.sleep(0.3)  # anything extra (a duplicate) would arrive by now


def stream_messages(url: str, stream: StreamSettings) -> int:
    """Messages the stream holds now (stored and not yet acknowledged by the consumer)."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream.stream)
        finally:
            await nc.close()
        return int(info.state.messages)

    return asyncio.run(count())


class LossyProxy:
    """A TCP proxy to the NATS server at `port`: clients connect to `url`; `drop_replies()`
    makes it discard what the server sends them (their requests still reach it); `cut()`
    closes every connection and passes replies again (clients reconnect through it), and with
    `refuse=True` stops listening until `accept()`."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.dropping = False
        self._loop = LoopThread("nats-proxy")
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._loop.start()
        self.accept()

    def drop_replies(self) -> None:
        self.dropping = True

    def cut(self, *, refuse: bool = False) -> None:
        async def close() -> None:
            self.dropping = False
            if refuse and self._server is not None:  # not listening: connections refused
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for writer in list(self._writers):
                writer.close()

        self._loop.submit(close()).result(5)

    def accept(self) -> None:
        """Listen (again)."""

        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self._serve, "127.0.0.1", self.port)

        if self._server is None:
            self._server = self._loop.submit(listen()).result(5)

    def stop(self) -> None:
        async def shut() -> None:
            server = self._server
            if server is not None:
                server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            if server is not None:
                await server.wait_closed()

        self._loop.submit(shut()).result(10)
        self._loop.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
            writers.append(upstream_writer)
            self._writers.update(writers)

            async def pipe(
                source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool
            ) -> None:
                with contextlib.suppress(OSError):
                    while data := await source.read(65536):
                        if replies and self.dropping:
                            continue  # lost on the way back
                        sink.write(data)
                        await sink.drain()
                for end in writers:  # one side closed: close both
                    end.close()

            await asyncio.gather(
                pipe(reader, upstream_writer, False), pipe(upstream_reader, writer, True)
            )
        except OSError:
            pass
        finally:
            for end in writers:
                end.close()
                self._writers.discard(end)
                with contextlib.suppress(OSError):
                    await end.wait_closed()
            self._handlers.discard(task)


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
