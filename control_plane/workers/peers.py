"""The primary's side of the workers' internal endpoints: their metrics and traffic windows.

A worker serves `/-/worker/metrics` and `/-/worker/traffic` on an internal loopback socket the
supervisor made for it, to callers holding the pool's token. A worker that does not answer in
`timeout` (restarting, stopped) is left out of that scrape or view and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from control_plane.console.traffic import TrafficWindow
from control_plane.workers.traffic_merge import window_from_json

__all__ = ["METRICS_PATH", "TRAFFIC_PATH", "Peer", "PeerClient"]

log = logging.getLogger(__name__)

METRICS_PATH = "/-/worker/metrics"
TRAFFIC_PATH = "/-/worker/traffic"


@dataclass(frozen=True, slots=True)
class Peer:
    """A running worker: its index (the `worker` label), pid and internal port."""

    index: int
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class PeerClient:
    """Reads the workers' internal endpoints (async for /metrics, sync for the console)."""

    def __init__(self, token: str, *, timeout: float = 2.0) -> None:
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout = timeout
        self.errors = 0  # failed reads, for control_plane_worker_scrape_errors
        self._answered: set[int] = set()  # pids that answered once (a starting one is quiet)

    async def expositions(self, peers: Sequence[Peer]) -> list[tuple[str, str]]:
        """(worker label, text exposition) of every worker that answered."""
        async with httpx.AsyncClient(timeout=self._timeout, headers=self._headers) as client:
            answers = await asyncio.gather(*(self._metrics(client, peer) for peer in peers))
        return [
            (str(peer.index), text)
            for peer, text in zip(peers, answers, strict=True)
            if text is not None
        ]

    async def _metrics(self, client: httpx.AsyncClient, peer: Peer) -> str | None:
        try:
            response = await client.get(peer.url + METRICS_PATH)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self._failed(peer, "metrics", exc)
            return None
        self._answered.add(peer.pid)
        return response.text

    def windows(
        self, peers: Sequence[Peer], seconds: int, buckets: int
    ) -> list[dict[str, TrafficWindow]]:
        """flag -> window, of every worker that answered (called on the thread pool)."""
        found: list[dict[str, TrafficWindow]] = []
        with httpx.Client(timeout=self._timeout, headers=self._headers) as client:
            for peer in peers:
                try:
                    response = client.get(
                        peer.url + TRAFFIC_PATH, params={"seconds": seconds, "buckets": buckets}
                    )
                    response.raise_for_status()
                    body: dict[str, Any] = response.json()
                    found.append(
                        {flag: window_from_json(flag, data) for flag, data in body["flags"].items()}
                    )
                    self._answered.add(peer.pid)
                except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    self._failed(peer, "traffic", exc)
        return found

    def _failed(self, peer: Peer, what: str, exc: Exception) -> None:
        self.errors += 1
        # A worker still starting does not answer yet: said at debug level until it has.
        level = logging.WARNING if peer.pid in self._answered else logging.DEBUG
        log.log(
            level, "worker %d (pid %d) did not answer its %s: %s", peer.index, peer.pid, what, exc
        )
