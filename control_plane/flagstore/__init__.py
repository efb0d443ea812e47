"""Flag lifecycle: load, validate, version and serve the flag directory."""

from control_plane.flagstore.flagset import BUCKETING_GENERATION, FlagSet
from control_plane.flagstore.store import FlagStore

__all__ = ["BUCKETING_GENERATION", "FlagSet", "FlagStore"]
