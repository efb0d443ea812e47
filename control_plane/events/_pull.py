"""Batches of a durable pull consumer at a fraction of nats-py's per-message cost.

nats-py's `PullSubscription.fetch(n)` takes every message with `next_msg`, which makes a
uuid and two asyncio tasks (`create_task` around `wait_for`) per message: in the consumer that
was about half of its CPU per record (cProfile; bench/events.py). Here one pull request
(`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, the documented JetStream API nats-py's
fetch sends too) asks for up to `batch` messages, and a callback subscription on our own inbox
appends what arrives to a list; the fetch ends when the batch is full or the server ends the
request with a status message (408 once `expires` passed, 404/409).

Messages that arrive after a fetch gave up waiting (a reconnect lost the request, the server's
status came late) stay in the buffer for the next fetch: held and never acknowledged, at worst
they are delivered again after `ack_wait`, as with nats-py's own pending queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DEFAULT_PREFIX, Header, StatusCode

__all__ = ["PullBatches", "delivery_count"]

#: Seconds a fetch waits past its request's `expires` for the server's 408 before giving up.
_GRACE = 1.0


class PullBatches:
    """Fetch batches of messages of the durable consumer `consumer` on `stream`."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._buffer: list[Msg] = []
        self._wanted = 0
        self._ended = asyncio.Event()

    async def subscribe(self) -> None:
        await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages, waiting up to `timeout` for them; NatsTimeoutError when
        none came (after `timeout`, even when the server ended the request sooner)."""
        if not self._buffer:
            started = time.monotonic()
            self._ended.clear()
            self._wanted = batch
            # The server answers a request of batch `batch` with that many messages, or with
            # fewer and a 408 once `expires` (nanoseconds) passed.
            request = {"batch": batch, "expires": int(timeout * 1e9)}
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout + _GRACE)
            if not self._buffer:
                # A 409 (max_ack_pending reached while a dead consumer's messages wait out
                # their ack_wait, ...) comes at once: asking again at once would spin.
                await asyncio.sleep(max(0.0, started + timeout - time.monotonic()))
        messages, self._buffer = self._buffer, []
        if not messages:
            raise NatsTimeoutError
        return messages

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and not msg.data and Header.STATUS in headers:
            if headers[Header.STATUS] != StatusCode.CONTROL_MESSAGE:
                self._ended.set()  # 408 expired, 404 nothing, 409 a limit: the request is over
            return
        self._buffer.append(msg)
        if len(self._buffer) >= self._wanted:
            self._ended.set()


def delivery_count(msg: Msg) -> int:
    """How many times JetStream delivered `msg`, from its reply subject (`msg.metadata`
    parses it whole and makes a datetime per message).

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<...>  (servers >= 2.9)
    """
    tokens = (msg.reply or "").split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6])
    except (IndexError, ValueError):
        return 1
