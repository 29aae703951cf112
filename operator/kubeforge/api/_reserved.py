"""Names kubeforge reserves (environment variables, label keys, mount paths) and the
hyperparameter name → HP_<NAME> variable mapping."""

from __future__ import annotations

import re
from typing import Any

from kubeforge.api._base import rule

RESERVED_ENV_PREFIXES = ("KUBEFORGE_", "HP_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "JOB_COMPLETION_INDEX",
)
RESERVED_LABEL_PREFIX = "kubeforge.io/"
RESERVED_MOUNT_PATHS = ("/kubeforge", "/dev/shm", "/mnt/pvc")
ANNOTATION_VALUE_MAX = 3072
"""Characters of one pod annotation value from spec.pod: 64 of them stay well inside the API
server's 256 KiB for all annotations, with room for kubeforge's own."""

HYPERPARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"
"""Hyperparameter names: anything that still makes a valid `HP_<NAME>` variable."""


def hp_env_name(name: str) -> str:
    """`HP_<NAME>`: upper case, every non-alphanumeric character becomes `_` (DESIGN.md)."""
    return "HP_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def hp_env_value(value: Any) -> str:
    """Scalars as text (booleans as `true`/`false`), anything else as JSON."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# The CEL twin of hp_env_name over the allowed characters ([A-Za-z0-9_.-]).
_CEL_HP = "{v}.upperAscii().replace('-', '_').replace('.', '_')"


def hp_collision_rule(field: str = "") -> dict[str, str]:
    """CEL: no two keys of a map may map to the same HP_ variable."""
    a, b = _CEL_HP.format(v="a"), _CEL_HP.format(v="b")
    return rule(
        f"self.all(a, self.all(b, a == b || {a} != {b}))",
        "two hyperparameter names map to the same HP_ environment variable "
        "(upper case, '-' and '.' become '_')",
    )


def _env_reserved(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES


_CEL_ENV_RESERVED = (
    "!("
    + " || ".join(f"self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    + " || self.name in ["
    + ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    + "])"
)
