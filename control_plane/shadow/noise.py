"""Noise calibration as Diffy does it: a field that differs between two primaries is noise.

For a sampled share of mirrored requests the primary is asked twice (the second time on a
second primary instance when `noiseUrl` is configured). Per field we then have two rates over
the requests compared: how often the candidate differed from the primary (`raw`) and how often
the two primaries differed from each other (`noise`). A field is noisy when the primaries did
differ on it at least once and the candidate does not differ clearly more often than the
primaries do: raw - noise <= max(ABSOLUTE, RELATIVE * raw), Diffy's absolute (3%) and relative
(20%) thresholds. A noisy field is reported apart and not counted against the candidate; a
field the candidate changes everywhere while the primaries agree stays a real difference.

Diffy: https://github.com/opendiffy/diffy (README, "How it works").
"""

from __future__ import annotations

__all__ = ["ABSOLUTE_THRESHOLD", "RELATIVE_THRESHOLD", "is_noisy"]

ABSOLUTE_THRESHOLD = 0.03
RELATIVE_THRESHOLD = 0.20


def is_noisy(raw_rate: float, noise_rate: float, noise_count: int) -> bool:
    """Whether a field with these candidate and primary-pair diff rates is noise."""
    if noise_count == 0:
        return False
    return raw_rate - noise_rate <= max(ABSOLUTE_THRESHOLD, RELATIVE_THRESHOLD * raw_rate)
