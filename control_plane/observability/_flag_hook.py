"""The official OpenFeature OpenTelemetry hook, skipped when the current span records nothing.

`TracingHook` serializes the flag value and builds its event on every evaluation, even when
the span is sampled out (a non-recording span drops the event anyway); on the decision hot path
that cost is paid for nothing. Sampled spans get exactly the official hook's event.
"""

from __future__ import annotations

from typing import Any

from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.flag_evaluation import FlagEvaluationDetails
from openfeature.hook import HookContext, HookHints
from opentelemetry import trace

__all__ = ["SampledTracingHook"]


class SampledTracingHook(TracingHook):
    def finally_after(
        self, hook_context: HookContext, details: FlagEvaluationDetails[Any], hints: HookHints
    ) -> None:
        if trace.get_current_span().is_recording():
            super().finally_after(hook_context, details, hints)

    def error(self, hook_context: HookContext, exception: Exception, hints: HookHints) -> None:
        if trace.get_current_span().is_recording():
            super().error(hook_context, exception, hints)
