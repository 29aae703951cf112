"""Kubernetes Events, only for what a user must see (failure, success, suspend, queueing).

Never one per reconcile: an Event is an API write. Posting is best effort (a failed Event is
logged, never retried) so it can never block or fail a reconcile.

An Event's name is derived from what it says (the object's uid, type, reason and message): a
reconcile that runs again after a failure, or a replica that takes over and repeats the last
step, meets a 409 on the same name instead of posting the Event twice.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from kubeforge.apply import ApiError, AsyncKube
from kubeforge.conditions import now_rfc3339

log = logging.getLogger("kubeforge.events")

NORMAL = "Normal"
WARNING = "Warning"


def object_reference(obj: dict[str, Any]) -> dict[str, Any]:
    """The involvedObject of an Event for `obj`."""
    meta = obj.get("metadata", {})
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
    }


def build_event(
    obj: dict[str, Any], type_: str, reason: str, message: str, component: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about `obj` (pure)."""
    ref = object_reference(obj)
    message = message[:1024]
    digest = hashlib.sha256(
        "\x00".join((str(ref["uid"]), type_, reason, message)).encode()
    ).hexdigest()[:16]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{ref['name']}.{digest}",
            "namespace": ref["namespace"],
        },
        "involvedObject": ref,
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post(
    kube: AsyncKube, obj: dict[str, Any], type_: str, reason: str, message: str
) -> None:
    """Post one Event about `obj`; errors are logged and swallowed."""
    event = build_event(
        obj, type_, reason, message, f"{kube.field_manager}-operator", now_rfc3339()
    )
    try:
        await kube.create(event)
    except ApiError as exc:
        if not exc.conflict:  # 409: this very Event was posted already
            log.warning("event not posted: %s", exc)
    except (OSError, TimeoutError) as exc:
        log.warning("event not posted: %s", exc)
