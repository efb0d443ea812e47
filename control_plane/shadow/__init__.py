"""Shadow traffic: mirror a sampled share of a routing variant's requests to a candidate
backend, compare its answers with the primary's, and report the differences.

Kept import-light (the flag validator imports `control_plane.shadow.spec`):

- `spec`: what a routing variant declares (`"shadows"`, `"compare"`), parsed from a valid flag.
- `fields`: field paths and the ignore/redact patterns that match them.
- `diff`: status, latency and body comparison (JSON field by field, or text).
- `results`: counts per flag and shadow backend, noise calibration, the report.
- `mirror`: the bounded queue and workers that send the copies (the dispatch hook).
- `sender`: the HTTP client of the copies (the only module here that imports httpx).
- `promote`: a shadow becomes a canary in one step.
- `command`: `control-plane shadow report|promote`.
"""
