"""CLI: python -m kubeforge_cluster.realnode build|up|down|status|check [--name NAME].

`build` builds/installs the node binaries (cached); `up` starts a control plane on 10.88.0.1 with
one real node whose processes outlive the CLI and prints `export KUBECONFIG=...`; `down` stops it
and everything it made; `check` runs the read-only guard checklist against a running node.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import bins, net
from .cleanup import teardown
from .host import host_unsupported_reason
from .node import RealNode
from .runstate import OWNER_FILE, default_run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubeforge_cluster.realnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", choices=["build", "up", "down", "status", "check"])
    ap.add_argument("--name", default="dev")
    ap.add_argument("--apt", action="store_true", help="build: apt-get install missing packages")
    ap.add_argument("--force", action="store_true", help="build: rebuild everything")
    ap.add_argument(
        "--if-supported",
        action="store_true",
        help="build: only where this host can run a real node (root, netns, cgroups, bridge); "
        "elsewhere say why and exit 0 (what `make test` uses)",
    )
    ap.add_argument("--kwok-nodes", type=int, default=0, help="up: fake nodes beside the real one")
    ap.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        help="up: OCI archive to import (repeatable)",
    )
    a = ap.parse_args(argv)
    run_dir = default_run_dir(a.name)
    if a.command == "build":
        if a.if_supported:
            reason = host_unsupported_reason()
            if reason:
                print(f"[node-bins] not building the real node's binaries: {reason}")
                return 0
        bins.build(force=a.force, apt=a.apt)
        for k, v in bins.status().items():
            print(f"  {k:24} {v}")
        return 0
    if a.command == "up":
        images = list(a.image)
        img_dir = Path(__file__).resolve().parents[3] / "cluster" / "images" / "out"
        images += sorted(img_dir.glob("*.oci.tar")) if img_dir.is_dir() else []
        node = RealNode(run_dir, name=a.name, daemon=True, images=images, kwok_nodes=a.kwok_nodes)
        node.start()
        print(
            f"# real node Ready in {node.startup_seconds:.1f}s; logs in {node.logs_dir} and "
            f"{node.cp_dir / 'logs'}; stop with `make cluster-down NODES=real`",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={node.kubeconfig}")
        return 0
    if a.command == "down":
        t = teardown(run_dir, None)
        print(f"real node {a.name!r} stopped in {t.get('done', 0):.1f}s")
        problems = net.check_after_teardown(None)
        for p in problems:
            print(f"  LEFT: {p}")
        return 1 if problems else 0
    if a.command == "status":
        try:
            st = json.loads((run_dir / "node-state.json").read_text())
        except OSError:
            print(f"real node {a.name!r}: not running ({run_dir})")
            return 1
        print(json.dumps({k: st[k] for k in ("node", "kubeconfig", "timings", "procs")}, indent=1))
        print(f"owner: {OWNER_FILE.read_text() if OWNER_FILE.exists() else '-'}")
        return 0
    if a.command == "check":
        node = RealNode(run_dir, name=a.name, verbose=False)
        problems = node.pre_forward_problems()
        problems = [p for p in problems if "ip_forward is already 1" not in p]
        problems += net.check_nat() + net.check_listeners()
        for p in problems:
            print(f"PROBLEM: {p}")
        print("guards OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
