"""Shipping: BuildKit builds of the Dockerfiles pushed to a loopback registry, cold vs warm.

Builds the operator and server images (`kubeforge_cluster.ship`) twice into one registry on
127.0.0.1 (storage in a fresh temporary directory, so the first push uploads everything) and
prints, per image: build+push seconds, compressed size in the registry, layers, and the blobs
each push uploaded (read from the registry's access log). The BuildKit cache
(~/.cache/kubeforge/buildkit) is kept: "cold" here means a cold registry, not a cold builder;
`--prune` empties the builder's cache first (a first build on a new machine).

Needs root (buildkitd is rootful) and `make ship-bins`; elsewhere it says why and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from kubeforge_cluster import buildkit, ship, shipbins
from kubeforge_cluster.registry import LocalRegistry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="operator,server")
    ap.add_argument("--prune", action="store_true", help="empty BuildKit's cache first")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ship: skipped (buildkitd runs rootful: run as root)")
        return 0
    try:
        shipbins.require("registry", "crane", "buildkitd", "buildctl")
    except shipbins.MissingShipBinaries as e:
        print(f"bench_ship: skipped ({e})")
        return 0
    names = [n for n in a.only.split(",") if n]
    if a.prune:
        shutil.rmtree(buildkit.default_root(), ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ship-"))
    rows = []
    try:
        with LocalRegistry(tmp / "run", storage=tmp / "store") as reg:
            for label in ("cold registry", "warm (unchanged)"):
                before = {n: reg.blob_uploads(f"kubeforge/{n}") for n in names}
                t = time.monotonic()
                pushed = ship.build_and_push(reg.host, names, run_dir=tmp / label[:4])
                total = time.monotonic() - t
                for p in pushed:
                    up = reg.blob_uploads(f"kubeforge/{p.name}") - before[p.name]
                    rows.append((label, p.name, p.build_seconds, p.compressed_bytes, p.layers, up))
                rows.append((label, "(all, with base push)", total, 0, 0, -1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{'run':18} {'image':22} {'build+push s':>12} {'MB (gzip)':>10} {'layers':>6} {'uploads':>8}"
    )
    for label, name, secs, size, layers, up in rows:
        print(
            f"{label:18} {name:22} {secs:12.1f} {size / 1e6 if size else 0:10.1f} "
            f"{layers or '':>6} {up if up >= 0 else '':>8}"
        )
    subprocess.run(["uptime"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
