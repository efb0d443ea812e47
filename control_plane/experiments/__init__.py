"""Experiments and progressive canaries.

Exposures (decisions on flags marked `"experiment": true`), outcome events and the dispatch
proxy's backend calls are recorded asynchronously in batches (`writer`, `recorder`); results
are computed per variant with intervals, tests and a sample-ratio check (`results`, `stats`,
`distributions`); canaries raise a variant's weight step by step and roll back or promote by
themselves (`canary`). `wiring.install_experiments` puts it all into an app. This package
module imports nothing heavy, so the CLI stays fast to start.
"""

__all__: list[str] = []
