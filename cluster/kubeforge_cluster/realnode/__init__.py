"""A real node for the local cluster: containerd 2 + runc + kubelet + kube-proxy + CoreDNS.

See :class:`RealNode` and /work/shared/REALPODS.md (the recipe and THE NETWORK RULE)."""

from .bins import MissingNodeBinaries
from .node import (
    BUSYBOX_IMAGE,
    NODE_NAME,
    REAL_NODE_LABEL,
    NodeStartError,
    NodeUnsupported,
    RealNode,
    cleanup_leftovers,
    default_run_dir,
    host_unsupported_reason,
    teardown,
    unsupported_reason,
)

__all__ = [
    "BUSYBOX_IMAGE",
    "NODE_NAME",
    "REAL_NODE_LABEL",
    "MissingNodeBinaries",
    "NodeStartError",
    "NodeUnsupported",
    "RealNode",
    "cleanup_leftovers",
    "default_run_dir",
    "host_unsupported_reason",
    "teardown",
    "unsupported_reason",
]
