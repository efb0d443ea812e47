"""While a reload runs, threads hand the interpreter over every 0.5 ms (decisions on the event
loop wait behind a reload that long at most per step), and the process's interval comes back."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from control_plane.flagstore import FlagSet
from control_plane.flagstore.handover import RELOAD_SWITCH_INTERVAL, prompt_handover
from control_plane.flagstore.store import FlagStore

FLAG = {
    "state": "ENABLED",
    "variants": {"a": {"backend": "a", "url": "http://a"}},
    "defaultVariant": "a",
}


def test_a_reload_runs_with_the_short_interval_and_restores_the_process_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "routing.flagd.json").write_text(json.dumps({"flags": {"f": FLAG}}))
    store = FlagStore(tmp_path)
    seen: list[float] = []

    def listener(_: FlagSet) -> None:
        seen.append(sys.getswitchinterval())

    store.subscribe(listener)
    before = sys.getswitchinterval()
    store.reload()
    assert seen == [RELOAD_SWITCH_INTERVAL]
    assert sys.getswitchinterval() == before


def test_overlapping_reloads_share_one_lowering_undone_by_the_last() -> None:
    before = sys.getswitchinterval()
    first_in, second_out, first_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[float] = []

    def first() -> None:
        with prompt_handover():
            first_in.set()
            second_out.wait(5)
            inside.append(sys.getswitchinterval())  # the other one left: still lowered
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with prompt_handover():
        inside.append(sys.getswitchinterval())
    second_out.set()
    first_out.wait(5)
    thread.join(5)
    assert inside == [RELOAD_SWITCH_INTERVAL, RELOAD_SWITCH_INTERVAL]
    assert sys.getswitchinterval() == before


def test_an_error_inside_still_restores_the_interval() -> None:
    before = sys.getswitchinterval()
    try:
        with prompt_handover():
            raise RuntimeError("a refused reload")
    except RuntimeError:
        pass
    assert sys.getswitchinterval() == before
