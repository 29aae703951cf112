"""Run the chart's Argo CD health checks (Lua) the way Argo CD does, in a real Lua VM (lupa).

Argo CD evaluates `resource.customizations.health.<group>_<kind>` with the live object bound to
the global `obj` and expects a table `{status=..., message=...}` back. The scripts live in
`charts/kubeforge/argocd/health/<Kind>.lua`; tests and the demo call :func:`health`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

HEALTH_DIR = Path(__file__).resolve().parents[2] / "charts" / "kubeforge" / "argocd" / "health"
KINDS = ("TrainingJob", "TuningStudy", "ModelDeployment")
#: Every status Argo CD knows.
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def script(kind: str) -> str:
    return (HEALTH_DIR / f"{kind}.lua").read_text()


def argocd_cm_key(kind: str) -> str:
    return f"resource.customizations.health.kubeforge.io_{kind}"


@cache
def _runtime() -> Any:
    import lupa

    return lupa.LuaRuntime(unpack_returned_tuples=True, register_eval=False)


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """The Argo CD health of `obj` (a kubeforge object as JSON): {"status", "message"}."""
    lua = _runtime()
    fn = lua.eval("function(src, o) obj = o; local f = assert(load(src)); return f() end")
    result = fn(script(kind), _to_lua(lua, obj))
    out = {k: result[k] for k in ("status", "message") if result[k] is not None}
    if out.get("status") not in STATUSES:
        raise ValueError(f"health check of {kind} returned an unknown status: {out}")
    return out
