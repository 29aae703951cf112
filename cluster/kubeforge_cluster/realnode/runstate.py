"""Where a real node keeps its state (run dir, cache, owner and state files) and reading it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import binaries as cp_binaries
from ..procs import Proc, procs_from_records

OWNER_FILE = Path("/run/kubeforge/realnode.json")
STATE_FILE = "node-state.json"


class NodeStartError(RuntimeError):
    pass


def default_run_dir(name: str = "dev") -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"kubeforge-realnode-{name}"


def cache_root() -> Path:
    return cp_binaries.default_bin_dir().parent.parent


def procs_from_state(run_dir: Path) -> list[Proc]:
    try:
        st = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return procs_from_records(st.get("procs", []))
