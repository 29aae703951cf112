"""Standard conditions (metav1.Condition) kept the Kubernetes way."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

Conditions = list[dict[str, Any]]

_now: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """The current UTC time, second precision, as Kubernetes writes it (formatted once a
    second: every reconcile asks)."""
    global _now
    sec = int(time.time())
    cached = _now
    if cached[0] != sec:
        cached = _now = (sec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec)))
    return cached[1]


def set_condition(
    conditions: Conditions,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    now: str,
    observed_generation: int | None = None,
) -> Conditions:
    """Set one condition in place (wire shape, camelCase) and return the list.

    `lastTransitionTime` changes only when `status` changes, as the API conventions require; a new
    reason or message alone keeps it.
    """
    text = status if isinstance(status, str) else ("True" if status else "False")
    for cond in conditions:
        if cond.get("type") == type_:
            if cond.get("status") != text:
                cond["lastTransitionTime"] = now
            cond["status"] = text
            cond["reason"] = reason
            cond["message"] = message
            if observed_generation is not None:
                cond["observedGeneration"] = observed_generation
            return conditions
    new: dict[str, Any] = {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    conditions.append(new)
    return conditions


def get_condition(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Iterable[dict[str, Any]] | None, type_: str) -> bool:
    """Whether the condition of that type has status True."""
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def copy_conditions(conditions: Iterable[dict[str, Any]] | None) -> Conditions:
    """A deep-enough copy (each condition dict copied) to edit without touching the input."""
    return [dict(c) for c in conditions or ()]


def invalid_spec_status(
    obj: dict[str, Any], errors: Iterable[Any], now: str, *, condition: str
) -> dict[str, Any]:
    """The status of an object whose spec the models refuse (`errors`: pydantic's
    `ValidationError.errors()`; what CEL cannot check at admission): phase Failed, `condition` set with reason InvalidSpec, the fields named as
    `spec.<path>: <problem>`. Nothing else is made for such an object."""
    base: dict[str, Any] = obj.get("status") or {}
    message = "invalid spec: " + "; ".join(
        "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        + f": {e['msg']}"
        for e in list(errors)[:5]
    )
    message = message[:1024]
    gen = obj["metadata"].get("generation")
    conds = [dict(c) for c in base.get("conditions") or []]
    # Failed means the condition is True; for Ready it is False.
    set_condition(
        conds, condition, condition != "Ready", "InvalidSpec", message, now=now,
        observed_generation=gen,
    )
    status = {**base, "phase": "Failed", "message": message, "conditions": conds}
    if gen is not None:
        status["observedGeneration"] = gen
    return status


def condition_reason(
    status: dict[str, Any], types: Iterable[str], default: str, *, only_status: str | None = None
) -> str:
    """The reason of the first condition of one of `types` (with `only_status`, if given), or
    `default`: what an Event about a phase change is titled with."""
    wanted = set(types)
    for c in status.get("conditions") or []:
        if c.get("type") in wanted and (only_status is None or c.get("status") == only_status):
            return str(c.get("reason") or default)
    return default
