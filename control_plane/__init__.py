"""The control plane service: routing decisions, flag lifecycle, experiments, and their HTTP edge."""

__all__: list[str] = []
