"""Promote a shadow to a canary in one step: variant added, shadow removed, canary started.

1. The shadow's backend becomes a new variant of the flag (`{"backend", "url"}`; its name is
   the backend's unless given), and the shadow is removed from the variant that declared it
   (with that variant's `compare` when no shadow is left), in one flag edit through the
   editor: validated, versioned (source "shadow") and audited like any edit. The new variant
   gets no traffic by this edit: the flag's targeting is unchanged.
2. A canary run starts through the canary service, stable = the variant that was mirrored,
   canary = the new variant, with the caller's spec otherwise; its first step sets the weight.

The canary's preconditions are checked on the edited definition before anything is written;
if the canary still fails to start, the flag edit is undone (written back as it was).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from control_plane.errors import FlagNotFound, InvalidCanary
from control_plane.experiments.canary.spec import CanarySpec
from control_plane.experiments.canary.weights import check_flag
from control_plane.flagstore.editor import FlagEditor
from control_plane.shadow.spec import COMPARE_KEY, SHADOWS_KEY

__all__ = ["FLAG_SOURCE", "CanaryStarter", "promote_shadow", "promoted_definition"]

#: The `source` of the flag set version a promotion writes.
FLAG_SOURCE = "shadow"
_VARIANT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class CanaryStarter(Protocol):
    def start(self, flag_key: str, spec: CanarySpec, actor: str) -> dict[str, Any]: ...


def _plain(flag: Mapping[str, Any]) -> dict[str, Any]:
    def default(value: Any) -> Any:
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, tuple):
            return list(value)
        raise TypeError(type(value).__name__)

    plain: dict[str, Any] = json.loads(json.dumps(flag, default=default))
    return copy.deepcopy(plain)


def promoted_definition(
    flag_key: str, flag: Mapping[str, Any], backend: str, variant_name: str | None = None
) -> tuple[dict[str, Any], str, str]:
    """(new definition, stable variant, canary variant) for promoting shadow `backend`."""
    definition = _plain(flag)
    variants: dict[str, Any] = definition.get("variants") or {}
    found: tuple[str, int, dict[str, Any]] | None = None
    names: list[str] = []
    for name, value in variants.items():
        for index, shadow in enumerate(
            (value or {}).get(SHADOWS_KEY) or [] if isinstance(value, dict) else []
        ):
            names.append(str(shadow.get("backend")))
            if shadow.get("backend") == backend:
                found = (name, index, shadow)
    if found is None:
        raise InvalidCanary(
            f"flag {flag_key!r} has no shadow backend {backend!r}; its "
            f"shadows are {', '.join(sorted(names)) or 'none'}"
        )
    stable, index, shadow = found
    canary = variant_name or backend
    if not _VARIANT.fullmatch(canary):
        raise InvalidCanary(
            f"variant name {canary!r} must be 1-128 letters, digits, '.', '_' or '-'"
        )
    if canary in variants:
        raise InvalidCanary(
            f"flag {flag_key!r} already has a variant {canary!r}; name the new "
            "variant with 'variant'"
        )
    declaring = variants[stable]
    del declaring[SHADOWS_KEY][index]
    if not declaring[SHADOWS_KEY]:
        del declaring[SHADOWS_KEY]
        declaring.pop(COMPARE_KEY, None)
    variants[canary] = {"backend": shadow["backend"], "url": shadow["url"]}
    return definition, stable, canary


def promote_shadow(
    flag_key: str,
    backend: str,
    *,
    flags: Mapping[str, Mapping[str, Any]],
    editor: FlagEditor,
    canaries: CanaryStarter,
    actor: str,
    spec: CanarySpec | None = None,
    variant_name: str | None = None,
) -> dict[str, Any]:
    """Edit the flag and start the canary; the canary status (with the new version)."""
    flag = flags.get(flag_key)
    if flag is None:
        raise FlagNotFound(f"no flag named {flag_key!r} is serving")
    definition, stable, canary = promoted_definition(flag_key, flag, backend, variant_name)
    base = spec or CanarySpec()
    spec = base.model_copy(update={"stable_variant": stable, "canary_variant": canary})
    check_flag(flag_key, definition, stable, canary)  # before anything is written
    before = _plain(flag)
    written = editor.put_flag(
        flag_key,
        definition,
        actor=actor,
        source=FLAG_SOURCE,
        message=f"shadow {backend} of variant {stable} promoted to "
        f"canary variant {canary} by {actor}",
    )
    try:
        status = canaries.start(flag_key, spec, actor)
    except Exception:
        editor.put_flag(
            flag_key,
            before,
            actor=actor,
            source=FLAG_SOURCE,
            message=f"undo the promotion of shadow {backend}: the canary did not start",
        )
        raise
    return {
        "flag": flag_key,
        "backend": backend,
        "stableVariant": stable,
        "canaryVariant": canary,
        "flagSetVersion": written.flag_set.version,
        "canary": status,
    }
