"""Shared fixtures: a temp copy of the flag directory, real servers, and global-state resets."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from openfeature import api as openfeature_api

from flags import FLAGS_DIR

# Property tests draw the same examples on every run (a red CI must mean a change broke
# something, not that a run drew a new example); HYPOTHESIS_PROFILE=explore draws new ones
# each run, for looking for bugs on purpose.
hypothesis_settings.register_profile("default", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
#: The workplace's shared folder (flagd schemas, testbed corpus), beside the repository.
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _reset_openfeature() -> Iterator[None]:
    """Every test starts and ends with no OpenFeature providers, hooks or context."""
    yield
    openfeature_api.clear_providers()
    openfeature_api.clear_hooks()


def copy_shipped_flags(target: Path) -> Path:
    """Copy the shipped flag files into `target` (created) and return it."""
    target.mkdir(parents=True)
    for path in FLAGS_DIR.iterdir():
        if path.name.endswith((".flagd.json", ".flagd.yaml", ".flagd.yml")):
            shutil.copy(path, target / path.name)
    return target


@pytest.fixture
def flags_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped flag directory."""
    return copy_shipped_flags(tmp_path / "flags")


def write_flags(directory: Path, name: str, flags: dict[str, Any]) -> Path:
    """Write one flagd file atomically (temp file + rename), as an editor or the API would."""
    path = directory / name
    temp = directory / f".{name}.tmp"
    temp.write_text(json.dumps({"flags": flags}, indent=2))
    temp.replace(path)
    return path
