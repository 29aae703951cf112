"""Metric lines as existing training code prints them (standard library only).

Formats:
- ``text`` (Katib's convention): ``name=value`` pairs separated by spaces or commas, e.g.
  ``epoch=1 accuracy=0.8, loss=0.31``; a line that is a JSON object is read as ``json`` too.
- ``json``: one JSON object per line; its numeric members are metrics.
- ``pattern``: a regular expression with named groups ``name`` and ``value`` (or, Katib style,
  the first two groups), applied to every match on the line.

Each line that carries a metric (the objective when one is named) is one report; its step is the
line's ``step`` (else ``epoch``) value, else the report's sequence number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)"
KV_RE = re.compile(
    r"(?:^|(?<=[\s,;{(\[|]))"  # start of a field
    r"(?P<name>[A-Za-z_][\w./-]*)\s*=\s*(?P<value>" + NUMBER + r")(?=$|[\s,;})\]|])",
    re.IGNORECASE,
)
STEP_KEYS = ("step", "epoch")


@dataclass
class Report:
    step: int | float
    epoch: int | float | None
    metrics: dict[str, float]


@dataclass
class MetricParser:
    """Turns lines into reports; keeps the last value of every metric."""

    format: str = "text"
    pattern: str = ""
    metrics: list[str] = field(default_factory=list)  # first = objective; empty = all
    seq: int = 0
    last: dict[str, float] = field(default_factory=dict)
    last_step: int | float | None = None
    last_epoch: int | float | None = None

    def __post_init__(self) -> None:
        if self.format not in ("text", "json"):
            raise ValueError(f"--format must be text or json, not {self.format!r}")
        self._regex = re.compile(self.pattern) if self.pattern else None
        if self._regex is not None:
            names = self._regex.groupindex
            if not ({"name", "value"} <= set(names) or self._regex.groups >= 2):
                raise ValueError("--pattern needs groups named 'name' and 'value' (or two groups)")

    def pairs(self, line: str) -> list[tuple[str, float]]:
        """All (name, value) pairs on one line, in order."""
        line = line.strip()
        if not line:
            return []
        if self._regex is not None:
            out = []
            for m in self._regex.finditer(line):
                if "name" in m.re.groupindex and "value" in m.re.groupindex:
                    name, value = m.group("name"), m.group("value")
                else:
                    name, value = m.group(1), m.group(2)
                num = _to_float(value)
                if name and num is not None:
                    out.append((name, num))
            return out
        if line.startswith("{"):
            pairs = _json_pairs(line)
            if pairs is not None or self.format == "json":
                return pairs or []
        if self.format == "json":
            return []
        return [
            (m.group("name"), v)
            for m in KV_RE.finditer(line)
            if (v := _to_float(m.group("value"))) is not None
        ]

    def feed(self, line: str) -> Report | None:
        """Parse one line; returns a report when the line carries a metric."""
        pairs = self.pairs(line)
        if not pairs:
            return None
        wanted = set(self.metrics)
        values: dict[str, float] = {}
        step = epoch = None
        for name, value in pairs:
            key = name.lower()
            if key == "step":
                step = _int_if_whole(value)
            elif key == "epoch":
                epoch = _int_if_whole(value)
            elif not wanted or name in wanted:
                values[name] = value
        if not values:
            return None
        self.last.update(values)
        if self.metrics and self.metrics[0] not in values:
            return None  # metrics beside, not a report: only the objective makes one
        self.seq += 1
        if epoch is not None:
            self.last_epoch = epoch
        rstep = step if step is not None else (epoch if epoch is not None else self.seq)
        self.last_step = rstep
        return Report(step=rstep, epoch=epoch, metrics=values)

    def feed_lines(self, lines: Iterable[str]) -> list[Report]:
        return [r for line in lines if (r := self.feed(line)) is not None]

    def final_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.last.items() if math.isfinite(v)}


class LineBuffer:
    """Reassembles lines from arbitrary chunks (a metric line may arrive in several writes)."""

    def __init__(self) -> None:
        self._buf = b""

    def push(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        if b"\n" not in chunk and b"\r" not in chunk:
            return []
        parts = re.split(rb"\r\n|\n|\r", self._buf)
        self._buf = parts.pop()
        return [p.decode("utf-8", "replace") for p in parts]

    def close(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest.strip() else []


def _to_float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _int_if_whole(value: float) -> int | float:
    return int(value) if math.isfinite(value) and float(value).is_integer() else value


def _json_pairs(line: str) -> list[tuple[str, float]] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    out: list[tuple[str, float]] = []
    for key, value in obj.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out.append((str(key), float(value)))
        elif isinstance(value, str) and (num := _to_float(value)) is not None:
            out.append((str(key), num))
        elif isinstance(value, dict) and key == "metrics":  # {"step": 3, "metrics": {...}}
            out.extend(
                (str(k), float(v))
                for k, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
    return out
