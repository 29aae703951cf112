"""Pure helpers of the API client: resource paths, plurals, manifest hashes, merge patches."""

from __future__ import annotations

import hashlib
import json
from typing import Any

JSON = dict[str, Any]

_CORE = {"Pod", "Service", "ServiceAccount", "Event", "ConfigMap", "Secret", "Namespace"}
_PLURAL_EXCEPTIONS = {
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


def plural(kind: str) -> str:
    """Lower-case plural resource name of a kind (enough for the kinds kubeforge writes)."""
    if kind in _PLURAL_EXCEPTIONS:
        return _PLURAL_EXCEPTIONS[kind]
    low = kind.lower()
    if low.endswith("s"):
        return low + "es"
    if low.endswith("y"):
        return low[:-1] + "ies"
    return low + "s"


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = ""
) -> str:
    """`/api/v1/namespaces/NS/pods/NAME[/sub]` or `/apis/GROUP/VERSION/...`."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base
    if namespace:
        path += f"/namespaces/{namespace}"
    path += "/" + plural(kind)
    if name:
        path += "/" + name
    if sub:
        path += "/" + sub
    return path


def manifest_hash(obj: Any) -> str:
    """A short, stable hash of a desired manifest (stored as an annotation on the child)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def merge_patch(old: JSON, new: JSON) -> JSON | None:
    """The RFC 7396 merge patch turning `old` into `new` (None: nothing to change).

    Keys gone from `new` become null; lists and scalars are replaced whole.
    """
    patch: JSON = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before == value:
            continue
        if isinstance(before, dict) and isinstance(value, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


_MISSING = object()
