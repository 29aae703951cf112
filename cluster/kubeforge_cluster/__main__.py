"""CLI: python -m kubeforge_cluster up|down|status|env|build [--name NAME].

`up` starts a cluster whose processes outlive the CLI (their PIDs go to the run dir's
state.json) and prints `export KUBECONFIG=...`; `down` stops them by PID, newest first.
"""

from __future__ import annotations

import argparse
import sys

from . import binaries
from .cluster import LocalCluster, run_dir_for


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubeforge_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", choices=["up", "down", "status", "env", "build"])
    ap.add_argument(
        "--name",
        default="dev",
        help=f"cluster name (run dir {run_dir_for('NAME')}); default %(default)s",
    )
    ap.add_argument(
        "--auto-complete-jobs",
        action="store_true",
        help="kwok completes every Job pod with exit 0 (default: only pods labelled "
        "kubeforge.io/kwok-auto-complete=true)",
    )
    ap.add_argument("--gpu-nodes", type=int, default=1)
    ap.add_argument("--cpu-nodes", type=int, default=2)
    a = ap.parse_args(argv)
    run_dir = run_dir_for(a.name)

    if a.command == "build":
        binaries.build()
        return 0
    existing = LocalCluster.attach(run_dir)
    if a.command == "up":
        if existing.running():
            print(f"# cluster {a.name!r} already running ({run_dir})", file=sys.stderr)
        else:
            existing.stop(remove=True)  # leftovers of a half-dead one
            c = LocalCluster(
                run_dir,
                name=a.name,
                daemon=True,
                auto_complete_jobs=a.auto_complete_jobs,
                gpu_nodes=a.gpu_nodes,
                cpu_nodes=a.cpu_nodes,
            )
            c.start()
            print(
                f"# started in {c.startup_seconds:.1f}s; logs in {c.logs_dir}; "
                "stop with `make cluster-down`",
                file=sys.stderr,
            )
        print(f"export KUBECONFIG={run_dir / 'kubeconfig'}")
        return 0
    if a.command == "env":
        if not existing.running():
            print(f"cluster {a.name!r} is not running", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={run_dir / 'kubeconfig'}")
        return 0
    if a.command == "status":
        procs = existing.procs
        if not procs:
            print(f"cluster {a.name!r}: not running ({run_dir})")
            return 1
        for p in procs:
            print(f"  {p.name:26} pid {p.pid:<8} {'running' if p.alive() else 'DEAD'}   {p.log}")
        print(f"KUBECONFIG={run_dir / 'kubeconfig'}")
        return 0 if existing.running() else 1
    if a.command == "down":
        if not existing.procs and not run_dir.exists():
            print(f"cluster {a.name!r}: not running")
            return 0
        existing.stop(remove=True)
        print(f"cluster {a.name!r} stopped")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
