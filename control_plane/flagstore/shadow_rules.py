"""Shadow declarations in routing variants (`shadows`, `compare`): checked like any flag member.

The rules themselves live with the shadow feature (`control_plane.shadow.spec`); this module
turns their findings into validation issues at the right JSON path, so a bad shadow is refused
with file and line like any other flag error (and a valid one is live on the next reload).
"""

from __future__ import annotations

from typing import Any

from control_plane.flagstore.issues import Location, ValidationIssue
from control_plane.shadow.spec import shadow_problems

__all__ = ["check_shadow_rules"]


def check_shadow_rules(flag: Any, location: Location, issues: list[ValidationIssue]) -> None:
    """Add an issue for every problem in the shadows of the flag's object variants."""
    variants = flag.get("variants") if isinstance(flag, dict) else None
    if not isinstance(variants, dict):
        return
    for name, value in variants.items():
        if not isinstance(value, dict):
            continue
        for where, message in shadow_problems(value):
            issues.append(ValidationIssue.at((*location, "variants", name, *where), message))
