"""Start-up cleanup: the Roles and RoleBindings that earlier kubeforge versions made for the progress channel.

Those versions granted `get`/`patch` on pods to every ServiceAccount a training pod ran under (Role
`kubeforge-progress`, RoleBindings `kubeforge-progress-<sa>`, labelled
`kubeforge.io/component=progress` and `app.kubernetes.io/managed-by=<field manager>`). The
endpoint needs none of it, so each start removes what is left (found by those labels). The
ServiceAccount `kubeforge-trainer` they made is left alone: pods may still run under it, and it
holds no rights once its RoleBinding is gone. Without the RBAC to list or delete them (the chart's
`rbac.cleanupLegacyProgressRBAC: false`) this logs one line and does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.settings import Settings

log = logging.getLogger("kubeforge.progress")

RBAC = "/apis/rbac.authorization.k8s.io/v1"


def legacy_selector(settings: Settings) -> str:
    return (
        f"app.kubernetes.io/managed-by={settings.field_manager},"
        f"{settings.label('component')}=progress"
    )


async def remove_legacy_rbac(kube: Any, settings: Settings) -> int:
    """Delete the old progress Roles/RoleBindings (bindings first); the number deleted."""
    scopes = [f"/namespaces/{ns}" for ns in settings.namespaces] or [""]
    deleted = 0
    for plural in ("rolebindings", "roles"):
        for scope in scopes:
            try:
                found = await kube.request(
                    "GET",
                    f"{RBAC}{scope}/{plural}",
                    query={"labelSelector": legacy_selector(settings)},
                )
            except ApiError as exc:
                log.warning("old progress %s not looked for: %s", plural, exc)
                continue
            for item in found.get("items") or []:
                meta = item["metadata"]
                path = f"{RBAC}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
                try:
                    await kube.request("DELETE", path, resource=plural, parse=False)
                except ApiError as exc:
                    if not exc.not_found:
                        log.warning("old progress %s not deleted: %s", path, exc)
                    continue
                deleted += 1
                log.info("deleted %s (the old progress channel's grant)", path)
    return deleted
