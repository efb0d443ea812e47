"""The canary controller: a background thread that judges every running canary each tick.

The thread holds no state of its own: each tick reads the active runs from the database, tells
the recorder which flags to record backend calls for, and asks the service to judge and act on
each running run. A restarted control plane (or another replica) therefore continues where the
last one was. An error in one run is logged and retried next tick; it never stops the loop.
"""

from __future__ import annotations

import logging
import threading

from control_plane.experiments.canary.leadership import AlwaysLeader, Leadership
from control_plane.experiments.canary.service import CanaryService

__all__ = ["CanaryController"]

log = logging.getLogger(__name__)


class CanaryController:
    def __init__(
        self,
        service: CanaryService,
        *,
        tick_interval: float = 1.0,
        leadership: Leadership | None = None,
    ) -> None:
        self.service = service
        self.tick_interval = tick_interval
        #: Only the leader among control planes on one database steps runs (leadership.py).
        self.leadership: Leadership = leadership or AlwaysLeader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self.service.publish_tracked()  # record canary calls from the first request on
        except Exception:
            log.exception("canary controller: cannot read the active canaries yet")
        self._stop.clear()
        self.leadership.start()
        self._thread = threading.Thread(target=self._run, name="canary-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.leadership.stop()

    def tick(self) -> dict[int, str]:
        """One pass over the running canaries: run id -> what was done."""
        done: dict[int, str] = {}
        try:
            self.service.publish_tracked()
            run_ids = self.service.running_ids()
        except Exception:
            log.exception("canary controller: cannot read the canary runs; retrying")
            return done
        for run_id in run_ids:
            if not self.leadership.confirm():  # checked on the lock session before each step
                break
            try:
                done[run_id] = self.service.step(run_id)
            except Exception:
                log.exception("canary controller: run %d failed this tick; retrying", run_id)
                done[run_id] = "error"
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.tick_interval):
            self.tick()
