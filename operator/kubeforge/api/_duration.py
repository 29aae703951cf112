"""Durations the Go way (90s, 30m, 1h30m): the admission pattern and their seconds."""

from __future__ import annotations

import re

DURATION = r"^([0-9]{1,9}(h|m|s))+$"
"""A duration the Go way, in whole hours, minutes and seconds: 90s, 30m, 1h30m."""


def duration_seconds(text: str) -> int:
    """Seconds of a DURATION string."""
    unit = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * unit[u] for n, u in re.findall(r"([0-9]+)(h|m|s)", text))
