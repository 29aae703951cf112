"""The control plane for a real node: LocalCluster with its API server on the bridge address.

Differences from a plain LocalCluster (REALPODS.md §3, §9): the API server binds and advertises
10.88.0.1 (so the ``kubernetes`` Service's endpoint is that address and pods reach it through
kube-proxy), its serving cert has that IP as a SAN, it has a client cert for the kubelets (logs,
exec, port-forward) and dials them by InternalIP only (a hostname lookup would leave the
machine), and the endpoint reconciler is on (it is off on loopback clusters).

Its controller-manager also runs the PersistentVolume binder and the PV/PVC protection
controllers: a real kubelet mounts a claim only once the binder has bound it (a hand-set
``Bound`` status is not enough), and the API server's StorageObjectInUseProtection admission
puts finalizers on claims and volumes that only the protection controllers remove (without
them, deleting a namespace with a claim would hang). The kwok-only cluster does not need them.
"""

from __future__ import annotations

from typing import Any

from ..cluster import KCM_CONTROLLERS, LocalCluster
from . import net

STORAGE_CONTROLLERS = (
    "persistentvolume-binder-controller,persistentvolume-protection-controller,"
    "persistentvolumeclaim-protection-controller"
)


class NodeControlPlane(LocalCluster):
    kcm_controllers = f"{KCM_CONTROLLERS},{STORAGE_CONTROLLERS}"

    def __init__(self, *args: Any, bind_address: str = net.NODE_IP, **kw: Any) -> None:
        self.bind_address = bind_address
        extra = list(kw.pop("extra_apiserver_args", ()))
        super().__init__(*args, **kw)
        d = self.pki_dir
        self.extra_apiserver_args = [
            f"--bind-address={bind_address}",
            f"--advertise-address={bind_address}",
            "--endpoint-reconciler-type=lease",
            f"--kubelet-client-certificate={d / 'kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            *extra,
        ]

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.ports['apiserver']}"

    def _apiserver_ips(self) -> tuple[str, ...]:
        return (*super()._apiserver_ips(), self.bind_address)

    def _make_pki(self) -> None:
        super()._make_pki()  # the serving cert has bind_address (above), the kubeconfig server
        self._ca.issue(
            self.pki_dir / "kubelet-client",
            "kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
