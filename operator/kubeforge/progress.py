"""The progress channel's permissions: a pod may patch only its own `kubeforge.io/progress`.

Two halves:
- per namespace (made here, by the operator): the ServiceAccount `kubeforge-trainer` (the default
  identity of training pods), a Role `kubeforge-progress` allowing `get`/`patch` on pods, and one
  RoleBinding `kubeforge-progress-<sa>` per ServiceAccount that training pods run under (the
  default one, or a user's `spec.pod.serviceAccountName`);
- cluster-wide (shipped in `manifests/progress-policy.yaml`, installed by the chart): a
  ValidatingAdmissionPolicy that lets such a request change only that annotation, only on the
  Pod its token is bound to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubeforge.apply import ApiError, AsyncKube
from kubeforge.pod import safe_name
from kubeforge.settings import Settings

JSON = dict[str, Any]

log = logging.getLogger("kubeforge.progress")

ROLE = "kubeforge-progress"


def desired_objects(settings: Settings, namespace: str, service_account: str) -> list[JSON]:
    """What one (namespace, ServiceAccount) needs (pure)."""
    labels = {
        "app.kubernetes.io/managed-by": settings.field_manager,
        settings.label("component"): "progress",
    }
    out: list[JSON] = []
    if service_account == settings.trainer_service_account:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": service_account, "namespace": namespace, "labels": labels},
            }
        )
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": ROLE, "namespace": namespace, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
        }
    )
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": safe_name(f"{ROLE}-", service_account),
                "namespace": namespace,
                "labels": labels,
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE},
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        }
    )
    return out


class ProgressAccess:
    """Makes sure each (namespace, ServiceAccount) has its progress permission, once.

    Reads before it writes (an operator restart costs GETs, no writes); `recheck()` (each resync)
    reads them again, so a namespace recreated meanwhile is repaired.
    """

    def __init__(self, kube: AsyncKube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self._done: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def recheck(self) -> None:
        """Check again every pair made so far (each resync: a namespace may have been recreated
        meanwhile), while reconciles go on as if they were there."""
        for namespace, service_account in list(self._done):
            try:
                await self._make(namespace, service_account)
            except (ApiError, OSError, TimeoutError) as exc:
                log.warning("progress permission in %s not checked: %s", namespace, exc)

    def ready(self, namespace: str, service_account: str) -> bool:
        """Whether `ensure(namespace, service_account)` has nothing to do."""
        return (namespace, service_account) in self._done

    async def ensure(self, namespace: str, service_account: str) -> None:
        key = (namespace, service_account)
        if key in self._done:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # many reconciles of one namespace at once: one makes the objects
            if key in self._done:
                return
            await self._make(namespace, service_account)
            self._done.add(key)
        self._locks.pop(key, None)

    async def _make(self, namespace: str, service_account: str) -> None:
        """Read each object; create the missing ones."""
        for obj in desired_objects(self.settings, namespace, service_account):
            meta = obj["metadata"]
            got = await self.kube.get(obj["apiVersion"], obj["kind"], namespace, meta["name"])
            if got is None:
                try:
                    await self.kube.create(obj)
                except ApiError as exc:
                    if not exc.conflict:
                        raise
