"""The mirror: sample requests, queue their copies, send them from worker tasks, compare.

Two ways in, one queue:

- `on_dispatch` is the dispatch proxy's hook (`Dispatcher.mirror`), called once the primary
  request body is buffered. It only samples and puts a job on the queue (never waits, never
  raises into the request); the returned `PrimaryWatch` tees the primary's response body as
  the client reads it, so the comparison sees exactly what the client got.
- `on_mirror` serves the gateway's copy (nginx `mirror` to `/v1/shadow/{flag}/{path}`): the
  control plane never saw the primary's answer there, so the job asks the primary itself (a
  replay, marked `X-Route-Shadow: replay`) alongside the shadow.

The queue is bounded (`shadow_queue_size`): a full queue drops the copy and counts it; at
most `shadow_workers` jobs run at once. Sampling is deterministic per decision id: a copy goes
to shadow B when sha256(decision id, B) falls below B's `sample` percent, so the gateway path
and the proxy path agree, and a decision id can be traced in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from control_plane.flagstore.store import FlagStore
from control_plane.routing.forwarding import backend_url
from control_plane.shadow.diff import Answer, diff_answers
from control_plane.shadow.fields import Patterns
from control_plane.shadow.metrics import ShadowMetrics
from control_plane.shadow.results import Comparison, ShadowResults
from control_plane.shadow.sender import ShadowSender, decoded
from control_plane.shadow.spec import ShadowTarget, VariantShadows, flag_shadows

__all__ = ["SHADOW_HEADER", "PrimaryWatch", "ShadowMirror", "sampled"]

log = logging.getLogger(__name__)

#: Set on every copy: "shadow" (the candidate), "replay" or "noise" (the primary again).
SHADOW_HEADER = "x-route-shadow"


def sampled(decision_id: str, salt: str, percent: float) -> bool:
    """Whether this decision falls in the `percent` share for `salt` (deterministic)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{decision_id}\0{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent


@dataclass(slots=True)
class _Job:
    plan: VariantShadows
    targets: tuple[ShadowTarget, ...]
    decision_id: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    noise: bool
    #: The primary's answer as the client got it (dispatch), or None: replay it (gateway).
    primary: asyncio.Future[Answer] | None


class PrimaryWatch:
    """Receives the primary's outcome from the dispatch proxy for one mirrored request."""

    def __init__(self, future: asyncio.Future[Answer], max_body: int) -> None:
        self._future = future
        self._max_body = max_body
        self._started = time.perf_counter()

    def failed(self) -> None:
        """No backend answered the primary request."""
        self._set(Answer(None, time.perf_counter() - self._started, error="no answer"))

    def watch(self, result: Any) -> None:
        """Tee `result.body` (a DispatchResult) as it streams to the client."""
        seconds = time.perf_counter() - self._started
        status: int = result.status
        encoding = next((v for k, v in result.headers if k.lower() == "content-encoding"), None)
        result.body = self._tee(result.body, status, seconds, encoding)

    async def _tee(
        self, body: AsyncIterator[bytes], status: int, seconds: float, encoding: str | None
    ) -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        size = 0
        complete = False
        try:
            async for chunk in body:
                if size <= self._max_body:
                    size += len(chunk)
                    chunks.append(chunk)
                yield chunk
            complete = True
        finally:
            # The client went away, or the answer is too large: not known in full.
            if not complete or size > self._max_body:
                self._set(Answer(status, seconds, truncated=True))
            else:
                raw, ok = decoded(b"".join(chunks), encoding, self._max_body)
                self._set(Answer(status, seconds, raw, truncated=not ok))

    def _set(self, answer: Answer) -> None:
        if not self._future.done():
            self._future.set_result(answer)


class ShadowMirror:
    """Shadow copies for one app: plans from the serving flag set, a queue, worker tasks."""

    def __init__(
        self,
        store: FlagStore,
        results: ShadowResults,
        metrics: ShadowMetrics,
        sender_factory: Callable[[], ShadowSender],
        *,
        queue_size: int,
        workers: int,
        max_body: int,
        primary_wait: float,
    ) -> None:
        self.store = store
        self.results = results
        self.metrics = metrics
        self._sender_factory = sender_factory
        self._queue_size = queue_size
        self._workers = workers
        self.max_body = max_body
        self.primary_wait = primary_wait
        self._plans: tuple[str, dict[str, dict[str, VariantShadows]]] = ("", {})
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sender: ShadowSender | None = None

    # -- plans -----------------------------------------------------------------------------

    def plans(self, flag_key: str) -> dict[str, VariantShadows]:
        """variant -> shadows of `flag_key` in the serving flag set (parsed once per version)."""
        if not self.store.loaded:
            return {}
        current = self.store.current
        if self._plans[0] != current.content_hash:
            self._plans = (
                current.content_hash,
                {
                    key: found
                    for key, flag in current.flags.items()
                    if (found := flag_shadows(key, flag))
                },
            )
        return self._plans[1].get(flag_key, {})

    def declared(self, flag_key: str) -> dict[str, dict[str, Any]]:
        """backend -> {variant, primary, sample, url} of every shadow the flag declares."""
        return {
            target.backend: {
                "variant": plan.variant,
                "primary": plan.primary.name,
                "sample": target.sample,
                "url": target.url,
            }
            for plan in self.plans(flag_key).values()
            for target in plan.targets
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        self._sender = self._sender_factory()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"shadow-worker-{index}")
            for index in range(self._workers)
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- ways in ---------------------------------------------------------------------------

    def on_dispatch(
        self,
        decision: Any,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> PrimaryWatch | None:
        """Dispatcher hook: queue copies of a sampled request; a watch for its primary."""
        try:
            plan = self.plans(decision.flag_key).get(decision.variant)
            if plan is None or self._queue is None:
                return None
            if len(body) > self.max_body:
                for target in plan.targets:
                    if sampled(decision.decision_id, target.backend, target.sample):
                        self._drop(plan, target, "body-too-large")
                return None
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            if not self._submit(
                plan, decision.decision_id, method, path, query, headers, body, future
            ):
                return None
            return PrimaryWatch(future, self.max_body)
        except Exception:  # the primary request must never fail because of a shadow
            log.exception("shadow mirroring failed; the primary request is unaffected")
            return None

    def on_mirror(
        self,
        flag_key: str,
        variant: str,
        decision_id: str,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> str:
        """The gateway's copy: "queued", "not-sampled", "dropped" or "no-shadow"."""
        plan = self.plans(flag_key).get(variant)
        if plan is None or self._queue is None:
            return "no-shadow"
        if len(body) > self.max_body:
            for target in plan.targets:
                self._drop(plan, target, "body-too-large")
            return "dropped"
        if not any(sampled(decision_id, t.backend, t.sample) for t in plan.targets):
            return "not-sampled"
        queued = self._submit(plan, decision_id, method, path, query, headers, body, None)
        return "queued" if queued else "dropped"

    def _submit(
        self,
        plan: VariantShadows,
        decision_id: str,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        primary: asyncio.Future[Answer] | None,
    ) -> bool:
        targets = tuple(t for t in plan.targets if sampled(decision_id, t.backend, t.sample))
        if not targets or self._queue is None:
            return False
        job = _Job(
            plan,
            targets,
            decision_id,
            method,
            path,
            query,
            list(headers),
            body,
            sampled(decision_id, "noise", plan.compare.noise_sample),
            primary,
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            for target in targets:
                self._drop(plan, target, "queue-full")
            return False
        for target in targets:
            self.results.mirrored(plan.flag, plan.variant, plan.primary.name, target.backend)
            self.metrics.mirrored.labels(plan.flag, plan.variant, target.backend).inc()
        return True

    def _drop(self, plan: VariantShadows, target: ShadowTarget, reason: str) -> None:
        self.results.dropped(plan.flag, plan.variant, plan.primary.name, target.backend, reason)
        self.metrics.dropped.labels(plan.flag, target.backend, reason).inc()

    # -- workers ---------------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self._queue
        if queue is None:
            return
        while True:
            job = await queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a shadow comparison failed")
            finally:
                queue.task_done()

    async def _call(self, job: _Job, url: str, role: str) -> Answer:
        if self._sender is None:
            return Answer(None, 0.0, error="stopped")
        headers = [*job.headers, (SHADOW_HEADER, role)]
        return await self._sender.send(
            job.method, backend_url(url, job.path, job.query), headers, job.body
        )

    async def _run(self, job: _Job) -> None:
        plan = job.plan
        calls = [self._call(job, target.url, "shadow") for target in job.targets]
        if job.primary is None:
            calls.append(self._call(job, plan.primary.url, "replay"))
        if job.noise:
            calls.append(self._call(job, plan.compare.noise_url or plan.primary.url, "noise"))
        answers = list(await asyncio.gather(*calls))
        second = answers.pop() if job.noise else None
        if job.primary is None:
            primary = answers.pop()
        else:
            try:
                primary = await asyncio.wait_for(asyncio.shield(job.primary), self.primary_wait)
            except TimeoutError:
                for target in job.targets:
                    self._drop(plan, target, "no-primary-answer")
                return
        ignore = Patterns(plan.compare.ignore_fields)
        redact = Patterns(plan.compare.redact_fields)
        tolerance = plan.compare.number_tolerance
        noise = (
            diff_answers(primary, second, tolerance=tolerance, ignore=ignore, redact=redact)
            if second is not None
            else None
        )
        for target, answer in zip(job.targets, answers, strict=True):
            body = diff_answers(primary, answer, tolerance=tolerance, ignore=ignore, redact=redact)
            comparison = Comparison(
                plan.flag,
                plan.variant,
                plan.primary.name,
                target.backend,
                job.decision_id,
                primary,
                answer,
                body,
                second,
                noise,
            )
            real = self.results.record(comparison)
            self._count(plan.flag, target.backend, comparison, bool(real))

    def _count(self, flag: str, backend: str, c: Comparison, differs: bool) -> None:
        m = self.metrics
        m.compared.labels(flag, backend).inc()
        if differs:
            m.differing.labels(flag, backend).inc()
        if c.primary.status != c.shadow.status:
            m.status_mismatches.labels(flag, backend).inc()
        if c.primary.status is not None:
            m.latency.labels(flag, backend, "primary").observe(c.primary.seconds)
        if c.shadow.status is not None:
            m.latency.labels(flag, backend, "shadow").observe(c.shadow.seconds)
