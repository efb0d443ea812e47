"""One Prometheus exposition for every process of `serve --workers N`.

Each process keeps its own registry (per-app registries, so tests run many apps; prometheus
_client's multiprocess mode needs one global registry and PROMETHEUS_MULTIPROC_DIR before
import). The primary renders its registry, fetches each worker's exposition over loopback and
merges them family by family, adding a `worker` label ("0" is the primary): every family is
written once, with all processes' samples, so Prometheus (and promtool) see one valid page;
`sum without (worker) (...)` gives the totals. A sample that already has a `worker` label (the
pool's own metrics about its workers) keeps it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["PRIMARY", "merge_expositions"]

#: The `worker` label of the primary's own samples.
PRIMARY = "0"


class _Families:
    """A collector over already-merged families (what generate_latest needs)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(pages: Sequence[tuple[str, str]]) -> bytes:
    """Merge (worker label, text exposition) pages into one exposition (the first's order).

    A family whose type differs between processes (never from the same code) keeps the first
    type seen; the others' samples of it are left out rather than producing an invalid page.
    """
    families: dict[str, Metric] = {}
    for worker, text in pages:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif merged.type != family.type:
                continue
            for sample in family.samples:
                merged.samples.append(
                    Sample(
                        sample.name,
                        {"worker": worker, **sample.labels},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
                )
    return generate_latest(_Families(list(families.values())))
