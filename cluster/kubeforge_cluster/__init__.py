"""Local Kubernetes control plane for tests and the demo (etcd, kube-*, kwok on 127.0.0.1).

    from kubeforge_cluster import LocalCluster
    with LocalCluster() as c:
        c.kubectl("get", "nodes")

Binaries come from `make cluster-bins` (cluster/build.py); see cluster/README.md.
"""

from .binaries import K8S_VERSION, MissingBinaries, default_bin_dir, find_binary
from .client import ApiError, KubeClient
from .cluster import LocalCluster, StartupError
from .kubectlops import install_prometheus_crds, kubectl
from .kwoknodes import AUTO_COMPLETE_LABEL, GPU_LABEL, GPU_RESOURCE

__all__ = [
    "AUTO_COMPLETE_LABEL",
    "GPU_LABEL",
    "GPU_RESOURCE",
    "K8S_VERSION",
    "ApiError",
    "KubeClient",
    "LocalCluster",
    "MissingBinaries",
    "StartupError",
    "default_bin_dir",
    "find_binary",
    "install_prometheus_crds",
    "kubectl",
]
