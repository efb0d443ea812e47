"""The control plane service: routing decisions, flag lifecycle, experiments, HTTP edge."""

__all__: list[str] = []
