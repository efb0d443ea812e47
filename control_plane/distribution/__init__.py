"""Distribution of flag sets to replicas: flagd's sync protocol (gRPC) and OFREP evaluation.

Router replicas in any language either sync the whole flag set over `flagd.sync.v1` and
evaluate in-process (the official flagd providers), or evaluate remotely over OFREP.
"""

from control_plane.distribution.ofrep_eval import (
    OfrepEvaluator,
    OfrepRequestError,
    parse_evaluation_request,
)
from control_plane.distribution.selector import Selector, SelectorError, SelectorNotFound
from control_plane.distribution.sync_server import (
    FlagSyncServicer,
    SyncServerError,
    SyncServerHandle,
    start_sync_server,
)

__all__ = [
    "FlagSyncServicer",
    "OfrepEvaluator",
    "OfrepRequestError",
    "Selector",
    "SelectorError",
    "SelectorNotFound",
    "SyncServerError",
    "SyncServerHandle",
    "parse_evaluation_request",
    "start_sync_server",
]
