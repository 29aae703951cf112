"""Config files and command lines of the node's components: computed only, nothing started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import bins, net, oci
from .images import PAUSE_IMAGE

KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
REAL_NODE_LABEL = "kubeforge.io/real-node"


def containerd_config(
    run_dir: Path,
    containerd_root: Path,
    containerd_sock: Path,
    registry_hosts_dir: Path,
    runc: Path,
) -> str:
    """containerd's config.toml: CRI with runc (cgroupfs), our CNI, the pinned pause image."""
    rd = run_dir
    return f"""version = 3
root = '{containerd_root}'
state = '{rd}/containerd/state'
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt']
[grpc]
  address = '{containerd_sock}'
[ttrpc]
  address = '{containerd_sock}.ttrpc'
[debug]
  address = ''
[metrics]
  address = ''
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  pinned_images = {{sandbox = '{oci.image_ref(PAUSE_IMAGE)}'}}
  [plugins.'io.containerd.cri.v1.images'.registry]
    # per-registry hosts.toml (kubeforge_cluster.registry.trust_on_node: loopback registries)
    config_path = '{registry_hosts_dir}'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{runc}'
        Root = '{rd}/containerd/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{bins.CNI_BIN_DIR}']
    conf_dir = '{rd}/cni/net.d'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
"""


def crictl_config(containerd_sock: Path) -> str:
    return (
        f"runtime-endpoint: unix://{containerd_sock}\n"
        f"image-endpoint: unix://{containerd_sock}\ntimeout: 10\n"
    )


EVICTION_DISK_FLOOR = "500Mi"
"""Free space under which the test node's kubelet evicts pods (node and image filesystems)."""


def kubelet_config(kubelet_dir: Path, containerd_sock: Path, cluster_ca: Path) -> dict[str, Any]:
    """The KubeletConfiguration (serving on the node IP, webhook authn/z, cgroupfs)."""
    kd = kubelet_dir
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_sock}",
        "address": net.NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(kd / "pki" / "kubelet.crt"),
        "tlsPrivateKeyFile": str(kd / "pki" / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(cluster_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [net.NODE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": str(kd / "resolv.conf"),
        "podLogsDir": str(kd / "pod-logs"),
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 50,
        # Absolute floors, not percentages: a test node shares a big host disk, and 2% of a
        # 252 GiB disk (5.4 GB) evicted every pod on a CI machine that had 5.1 GB left.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": EVICTION_DISK_FLOOR,
            "imagefs.available": EVICTION_DISK_FLOOR,
        },
        # 100 turns image GC off: the preloaded images are never pulled again (no registry),
        # so a collected one would leave its next pod in ErrImageNeverPull.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(exe: Path, kubelet_dir: Path, kubeconfig: Path, node_name: str) -> list[str]:
    kd = kubelet_dir
    return [
        str(exe),
        f"--config={kd / 'config.yaml'}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={kd / 'root'}",
        f"--cert-dir={kd / 'pki'}",
        f"--hostname-override={node_name}",
        f"--node-ip={net.NODE_IP}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]


def kube_proxy_args(
    exe: Path, kubeconfig: Path, node_name: str, healthz_port: int, metrics_port: int
) -> list[str]:
    return [
        str(exe),
        "--proxy-mode=iptables",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--cluster-cidr={net.POD_CIDR}",
        "--bind-address=127.0.0.1",
        f"--healthz-bind-address=127.0.0.1:{healthz_port}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        f"--nodeport-addresses={net.NODE_IP}/32",
        "--iptables-localhost-nodeports=false",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--v=2",
    ]


def coredns_corefile(kubeconfig: Path, ready_port: int) -> str:
    """CoreDNS serves cluster.local and the reverse zones on the node IP, nothing upstream."""
    kc = kubeconfig
    return (
        "# cluster.local and the reverse zones only: no root block, no upstream\n"
        "cluster.local:53 96.10.in-addr.arpa:53 88.10.in-addr.arpa:53 {\n"
        f"    bind {net.NODE_IP}\n"
        "    errors\n"
        "    log\n"
        f"    ready 127.0.0.1:{ready_port}\n"
        "    kubernetes cluster.local 96.10.in-addr.arpa 88.10.in-addr.arpa {\n"
        f"        kubeconfig {kc} kubeforge-local\n"
        "        pods insecure\n"
        "        ttl 5\n"
        "    }\n"
        "}\n"
    )
