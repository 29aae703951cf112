"""A real node for the local cluster: containerd 2 + runc + kubelet + kube-proxy + CoreDNS.

See :class:`RealNode` and /work/shared/REALPODS.md (the recipe and THE NETWORK RULE)."""

from .bins import MissingNodeBinaries
from .cleanup import cleanup_leftovers, teardown
from .components import REAL_NODE_LABEL
from .host import NodeUnsupported, host_unsupported_reason, unsupported_reason
from .images import BUSYBOX_IMAGE
from .node import NODE_NAME, RealNode
from .runstate import NodeStartError, default_run_dir

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
