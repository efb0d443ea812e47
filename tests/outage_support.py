"""Honest database outages for tests: a loopback TCP proxy (asyncio, in its own thread) that
passes, refuses or blackholes traffic, and a SQLite file made read-only.

    proxy = OutageProxy("127.0.0.1", 5432)
    proxy.refuse()     # the listener closes, open connections are cut: connect refused
    proxy.blackhole()  # connections are accepted and kept open, but no byte is forwarded
                       # (a stuck proxy or a dead peer behind one: nothing ever fails)
    proxy.passthrough()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

__all__ = ["OutageProxy", "set_read_only"]


class OutageProxy:
    """A TCP proxy on 127.0.0.1 in front of `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="outage-proxy", daemon=True
        )
        self._thread.start()
        self._call(self._listen())

    # -- control (any thread) --------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward again; connections left from a blackhole are cut (they lost bytes)."""
        self._call(self._set("pass"))

    def refuse(self) -> None:
        self._call(self._set("refuse"))

    def blackhole(self) -> None:
        self._call(self._set("blackhole"))

    def close(self) -> None:
        self._call(self._set("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    # -- the loop --------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: str) -> None:
        previous, self.mode = self.mode, mode
        if mode == "refuse" or (mode == "pass" and previous == "blackhole"):
            self._cut_all()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        if mode != "refuse" and self._server is None:
            await self._listen()

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode == "blackhole":
            await self._swallow(reader)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue  # accepted (the kernel acknowledges it), never forwarded
                writer.write(data)
                await writer.drain()
        finally:
            if self.mode != "blackhole":
                with contextlib.suppress(Exception):
                    writer.close()


def set_read_only(paths: list[Path], read_only: bool) -> None:
    """Make a SQLite file and its directory unwritable (or writable again), even for root."""
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(
                (0o555 if path.is_dir() else 0o444)
                if read_only
                else (0o755 if path.is_dir() else 0o644)
            )
        return
    # root ignores permission bits; the immutable attribute stops it too (ext4, xfs, btrfs).
    result = subprocess.run(
        ["chattr", "+i" if read_only else "-i", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot make a directory read-only as root here: {result.stderr.strip()}")
