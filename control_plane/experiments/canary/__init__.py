"""Progressive canaries: a spec, the flag rewrite that sets the canary weight, the analysis of
each step, the operations (start, pause, resume, abort) and the controller loop."""

from control_plane.experiments.canary.spec import CanarySpec

__all__ = ["CanarySpec"]
