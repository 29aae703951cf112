"""Shadow mirroring overhead: what mirroring every answered request to a candidate costs the
stable kubeforge-server.

wrk drives batch-1 JSON requests (the MLP of bench_server.py) at 16 connections against one
stable server, alternating (A B A B ...) between
  (A) no shadow, and
  (B) `--shadow-url` to a second kubeforge-server (the candidate, same model), 100% mirrored,
and prints req/s, p50/p99 and the stable server's CPU time per request for each, the mirror's
outcome counts, and the ratios measured in this run:
  - req/s with shadow / without                       (target >= 0.90: at most 10% lost)
  - stable CPU per request with shadow / without

On a small machine the candidate and wrk share the cores with the stable server, so the req/s
ratio also carries the candidate's own CPU; the CPU-per-request ratio is the stable server's cost
alone. Usage: python benchmarks/bench_shadow.py [--duration 5] [--rounds 2] [--connections 16]
Needs `wrk` (Debian package wrk). Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench_server import WRK_LUA, bodies, build_mlp, free_port, run_wrk, stop, wait_ready


def start(model: Path, tmp: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "kubeforge_server", "--model", str(model), "--name", "mlp",
           "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0", *extra]
    log = (tmp / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={"KUBEFORGE_INTRA_OP_THREADS": "1", "PATH": "/usr/bin:/bin",
                                 **_pythonpath()})
    wait_ready(port, proc)
    return proc


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "VIRTUAL_ENV")}


def shadow_counts(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'kubeforge_server_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', text)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk); skipping the shadow benchmark")
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = build_mlp(tmp / "mlp.onnx")
        body = bodies(tmp)["json"]
        lua = tmp / "post.lua"
        lua.write_text(WRK_LUA)
        cand_port = free_port()
        candidate = start(model, tmp, cand_port, [])
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        counts: dict[str, float] = {}
        try:
            for _ in range(args.rounds):
                for mode in ("off", "on"):
                    port = free_port()
                    extra = [] if mode == "off" else [
                        "--shadow-url", f"http://127.0.0.1:{cand_port}", "--shadow-percent", "100"]
                    stable = start(model, tmp, port, extra)
                    try:
                        results[mode].append(run_wrk(port, body, args.connections, args.duration,
                                                     lua, stable.pid))
                        if mode == "on":
                            for k, v in shadow_counts(port).items():
                                counts[k] = counts.get(k, 0.0) + v
                    finally:
                        stop(stable)
        finally:
            stop(candidate)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"batch-1 JSON, {args.connections} connections, {args.rounds} rounds of "
          f"{args.duration:g}s each (medians)")
    print(f"{'shadow':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11} {'non-2xx':>8}")
    for mode in ("off", "on"):
        print(f"{mode:8} {med(mode, 'rps'):10.0f} {med(mode, 'p50') * 1e3:8.2f} "
              f"{med(mode, 'p99') * 1e3:8.2f} {med(mode, 'cpu_us'):11.1f} "
              f"{sum(r['non2xx'] for r in results[mode]):8.0f}")
    total = sum(counts.values()) or 1.0
    print("mirror outcomes (all 'on' rounds): " + ", ".join(
        f"{k} {v:.0f} ({v / total:.0%})" for k, v in sorted(counts.items())))
    rps_ratio = med("on", "rps") / med("off", "rps")
    cpu_ratio = med("on", "cpu_us") / med("off", "cpu_us")
    print(f"req/s with shadow / without: {rps_ratio:.3f}  (target >= 0.90)")
    print(f"stable CPU per request with shadow / without: {cpu_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
