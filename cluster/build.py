#!/usr/bin/env python3
"""Build (once) the local control plane's binaries into a cache outside the repo.

    python3 cluster/build.py            # build what is missing; a warm run does no work
    python3 cluster/build.py --status   # show what is there
    python3 cluster/build.py --print-dir
    python3 cluster/build.py --node     # + the real node's binaries (kubelet, kube-proxy, ...)

Env: KUBEFORGE_BIN_DIR (cache dir to build into), KUBEFORGE_USE_BINARIES / KUBEBUILDER_ASSETS
(directories of binaries to use instead of building). Stdlib only; needs Go >= 1.26 to build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubeforge_cluster import binaries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--bin-dir",
        type=Path,
        help="cache dir (default: %(default)s)",
        default=binaries.default_bin_dir(),
    )
    ap.add_argument(
        "--helm3", action="store_true", help=f"also build helm {binaries.HELM3_VERSION} as helm3"
    )
    ap.add_argument("--no-kueue", action="store_true", help="skip kueue (~4 min cold)")
    ap.add_argument(
        "--node",
        action="store_true",
        help="also build the real node's binaries (containerd, crictl, CoreDNS, kubelet, "
        "kube-proxy, pause; ~6-10 min cold) into their own cache dir",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if present")
    ap.add_argument("--status", action="store_true", help="print what is present and exit")
    ap.add_argument("--print-dir", action="store_true", help="print the cache dir and exit")
    a = ap.parse_args()
    if a.print_dir:
        print(a.bin_dir)
        return 0
    if a.status:
        print(f"bin dir: {a.bin_dir}")
        for name, st in binaries.status(a.bin_dir).items():
            print(f"  {name:24} {st}")
        return 0
    binaries.build(a.bin_dir, helm3=a.helm3, kueue=not a.no_kueue, force=a.force)
    if a.node:
        from kubeforge_cluster.realnode import bins as node_bins

        node_bins.build(force=a.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
