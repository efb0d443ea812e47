"""While a reload runs, threads hand the interpreter over every 0.5 ms instead of every 5 ms.

A reload at 10,000 flags is ~30 ms of CPU in the thread that runs it (the watcher, an admin
request, the canary controller), while decisions are made on the event loop. Python hands the
interpreter lock from a running thread to a waiting one only after its switch interval (5 ms
by default), so every step of a decision could wait up to 5 ms behind the reload. Lowering it
process-wide for the length of a reload bounds that wait; outside reloads the interval is the
one the process had. Nested or concurrent reloads (several stores in one process) share one
lowering, undone by the last to finish.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

__all__ = ["RELOAD_SWITCH_INTERVAL", "prompt_handover"]

#: Seconds a thread runs before handing the interpreter over while a reload is running.
RELOAD_SWITCH_INTERVAL = 0.0005

_lock = threading.Lock()
_active = 0
_saved = 0.0


@contextlib.contextmanager
def prompt_handover() -> Iterator[None]:
    """Run the block with the switch interval at most RELOAD_SWITCH_INTERVAL."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, RELOAD_SWITCH_INTERVAL))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_saved)
