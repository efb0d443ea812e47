"""A per-client token bucket for OFREP (setting `ofrep_rate_limit`; off by default).

OFREP answers 429 with `Retry-After` when a client goes over its rate. Clients are told apart
by the credential they present when it is a valid one (a digest of it, never the token), else
by their address. The table of buckets is bounded: the least recently seen client is dropped
first, so a flood of addresses cannot grow it without limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

__all__ = ["TokenBucketLimiter"]

#: Most clients tracked at once.
_MAX_CLIENTS = 10_000


class TokenBucketLimiter:
    """`rate` requests per second per client, bursts up to `burst`; rate 0 lets all pass."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str, now: float | None = None) -> float:
        """0.0 if `client` may go ahead now, else the seconds until it may (nothing taken)."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > _MAX_CLIENTS:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """A `Retry-After` value (whole seconds, at least 1) for a wait of `wait` seconds."""
        return str(max(1, math.ceil(wait)))
