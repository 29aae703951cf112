"""Operator throughput and cost: N TrainingJobs applied at once (16 client threads).

For each N (100, 1,000) on a fresh local control plane (etcd + apiserver + controller-manager
with --kube-api-qps 500 + scheduler + kwok):
  1. a bare Python client (16 threads) makes the writes no operator can avoid — create the
     TrainingJob, create its Job, patch its status — in namespace bare-N (not watched);
  2. the operator (a real `kubeforge-operator` process watching op-N) gets N TrainingJobs
     created by the same 16 threads.
Reported: time until all Jobs exist (both), the ratio, operator API writes per TrainingJob to
reach Running (operator's own counter, cross-checked with apiserver_request_total), operator
CPU per object until all Jobs exist and until all TrainingJobs are Running (the latter beside
the bare client's own CPU per object for its writes; it includes following every Job and pod
event, and a resync every 5 s), peak RSS, writes and CPU over 12 idle seconds (two resyncs),
measured once the API server has taken no writes but leases and events for 5 s (at N=1000 the
job controller goes on updating Job statuses for tens of seconds after all are Running).
CPU figures depend on the machine's load (the bare client's own CPU per object for the same
writes went from 2.7 to 4.9 ms on this 2-core machine under load): compare rows of one run.

Run: .venv/bin/python benchmarks/bench_operator.py [--sizes 100,1000]
Before/after in one session: git archive OLD operator | tar -x -C /tmp/old, then
  --before-src /tmp/old/operator. KUBEFORGE_BENCH_PYSPY=PREFIX records a py-spy profile
  (GIL-holding samples, all threads) of the operator to PREFIX-N.txt (py-spy is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "trainingjob"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from conftest import OperatorProcess  # noqa: E402
from kubeforge.api.trainingjob import TrainingJobSpec  # noqa: E402
from kubeforge.apply import Kube, make_kube  # noqa: E402
from kubeforge.settings import Settings  # noqa: E402
from kubeforge.trainingjob.build import build  # noqa: E402
from kubeforge.trainingjob.status import compute_status  # noqa: E402

THREADS = 16
TJ_PATH = "/apis/kubeforge.io/v1alpha1/namespaces/{ns}/trainingjobs"
SPEC = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "hyperparameters": {"lr": 0.01},
    "resources": {"cpu": "10m", "memory": "16Mi", "shmSize": ""},
}


def tj(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": f"tj-{i:05d}", "namespace": ns}, "spec": SPEC}


def make_namespace(kube: Kube, ns: str) -> None:
    kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    deadline = time.monotonic() + 30
    while kube.get("v1", "ServiceAccount", ns, "default") is None:
        if time.monotonic() > deadline:
            raise TimeoutError("default ServiceAccount")
        time.sleep(0.1)


def count_jobs(kube: Kube, ns: str) -> int:
    return len(kube.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs", query={"resourceVersion": "0"})["items"])


def wait_jobs(kube: Kube, ns: str, n: int, t0: float, timeout: float = 300) -> float:
    while True:
        if count_jobs(kube, ns) >= n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{ns}: jobs")
        time.sleep(0.05)


def bare_client(kube: Kube, ns: str, n: int, settings: Settings) -> tuple[float, float]:
    """create TrainingJob + create Job + patch status, per object, 16 threads.
    Returns (seconds until all Jobs exist, CPU seconds this process spent making the writes)."""
    spec = TrainingJobSpec.model_validate(SPEC)

    def one(i: int) -> None:
        created = kube.request("POST", TJ_PATH.format(ns=ns), body=tj(ns, i), resource="trainingjobs")
        desired = build(created, spec, settings)
        kube.create(desired.job_for_create())
        status = compute_status(created, spec, desired.job, [], now="2026-01-01T00:00:00Z")
        kube.patch_status("kubeforge.io/v1alpha1", "TrainingJob", ns, created["metadata"]["name"], status)

    t0, c0 = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(n)))
    cpu = time.process_time() - c0
    return wait_jobs(kube, ns, n, t0), cpu


def apiserver_writes(kube: Kube) -> dict[str, float]:
    """apiserver_request_total of writes, by resource[/subresource]."""
    headers = {"User-Agent": "bench"}
    kube.api_client.update_params_for_auth(headers, [], ["BearerToken"], "/metrics", "GET", None)
    r = kube.api_client.rest_client.pool_manager.request("GET", kube.config.host + "/metrics", headers=headers)
    out: dict[str, float] = {}
    for line in r.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(","))
        verb = labels.get("verb", "").strip('"')
        if verb not in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            continue
        res = labels.get("resource", "").strip('"')
        sub = labels.get("subresource", "").strip('"')
        key = f"{verb} {res}{'/' + sub if sub else ''}"
        out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}


def wait_quiet(kube: Kube, still: float = 5.0, timeout: float = 180.0) -> float:
    """Seconds until the API server has taken no writes but leases and events for `still`
    seconds (the controllers are done): only then is the operator's idle measured."""
    def busy() -> dict[str, float]:
        return {k: v for k, v in apiserver_writes(kube).items() if "leases" not in k and "events" not in k}

    t0 = time.monotonic()
    last, since = busy(), time.monotonic()
    while time.monotonic() - since < still and time.monotonic() - t0 < timeout:
        time.sleep(1)
        now = busy()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - t0


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def count_running(kube: Kube, ns: str) -> int:
    items = kube.request("GET", TJ_PATH.format(ns=ns), query={"resourceVersion": "0"})["items"]
    return sum(1 for o in items if (o.get("status") or {}).get("phase") == "Running")


_RUNS = 0


def run_size(n: int, operator_src: str = "") -> dict[str, Any]:
    from kubeforge_cluster.cluster import LocalCluster

    nodes = max(2, math.ceil(2 * n / 100) + 1)
    global _RUNS
    _RUNS += 1  # a fresh name per run: two runs (or two people) never share a cluster directory
    with LocalCluster(name=f"bench-op-{n}-{os.getpid()}-{_RUNS}", cpu_nodes=nodes, gpu_nodes=0, verbose=False) as cluster:
        subprocess.run([str(cluster.bins["kubectl"]), "--kubeconfig", str(cluster.kubeconfig), "apply",
                        "--server-side", "-f", os.environ.get("KUBEFORGE_BENCH_CRDS", str(ROOT / "crds"))], check=True, capture_output=True)
        subprocess.run([str(cluster.bins["kubectl"]), "--kubeconfig", str(cluster.kubeconfig), "wait",
                        "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.kubeforge.io"],
                       check=True, capture_output=True)
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        kube = make_kube("bench", pool_size=THREADS)
        settings = Settings()
        bare_ns, op_ns = f"bare-{n}", f"op-{n}"
        make_namespace(kube, bare_ns)
        make_namespace(kube, op_ns)

        bare_s, bare_cpu_s = bare_client(kube, bare_ns, n, settings)
        bare_cpu_ms = bare_cpu_s * 1000 / n
        time.sleep(2)

        log = Path(cluster.run_dir) / "operator.log"
        op = OperatorProcess(str(cluster.kubeconfig), log, KUBEFORGE_CONCURRENCY=str(THREADS),
                             KUBEFORGE_RESYNC_SECONDS="5", KUBEFORGE_LOG_LEVEL="WARNING")
        op.env["KUBEFORGE_NAMESPACES"] = op_ns
        if operator_src:  # another copy of the operator (e.g. the last commit, for before/after)
            op.env["PYTHONPATH"] = operator_src
        op.start()
        assert op.proc is not None
        pid = op.proc.pid
        spy = None
        if os.environ.get("KUBEFORGE_BENCH_PYSPY"):  # profile the operator (all threads)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "250", "--gil",
                                    "-f", "raw", "-o", f"{os.environ['KUBEFORGE_BENCH_PYSPY']}-{n}.txt", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        api0, opw0, cpu0 = apiserver_writes(kube), op.writes(), proc_cpu(pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda i: kube.request("POST", TJ_PATH.format(ns=op_ns), body=tj(op_ns, i), resource="trainingjobs"), range(n)))
        op_s = wait_jobs(kube, op_ns, n, t0)
        cpu_jobs = proc_cpu(pid)
        deadline = time.monotonic() + 300
        while count_running(kube, op_ns) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("Running")
            time.sleep(0.5)
        running_s = time.monotonic() - t0
        time.sleep(3)  # settle
        api1 = apiserver_writes(kube)
        cpu1 = proc_cpu(pid)
        quiet_s = wait_quiet(kube)  # the job controller may still be catching up on Job statuses
        api_quiet, opw1, cpu_quiet = apiserver_writes(kube), op.writes(), proc_cpu(pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        time.sleep(12)  # idle: two resyncs
        api2, opw2, cpu2 = apiserver_writes(kube), op.writes(), proc_cpu(pid)
        rss = peak_rss_mb(pid)
        op.stop()
        api_delta = diff(api0, api1)
        op_api = sum(v for k, v in api_delta.items() if k in (
            "PATCH trainingjobs/status", "POST jobs", "PATCH jobs", "APPLY jobs", "POST serviceaccounts",
            "POST roles", "POST rolebindings"))
        idle_api = diff(api_quiet, api2)
        return {
            "n": n, "bare_s": bare_s, "op_s": op_s, "ratio": op_s / bare_s, "running_s": running_s,
            "writes_per_tj": (opw1 - opw0) / n, "apiserver_op_writes_per_tj": op_api / n,
            "cpu_ms": (cpu1 - cpu0) * 1000 / n, "cpu_jobs_ms": (cpu_jobs - cpu0) * 1000 / n,
            "bare_cpu_ms": bare_cpu_ms, "rss_mb": rss, "idle_writes": opw2 - opw1,
            "idle_cpu_ms_s": (cpu2 - cpu_quiet) * 1000 / 12, "quiet_s": quiet_s,
            "idle_api_tj": sum(v for k, v in idle_api.items() if "trainingjobs" in k or k.endswith(" jobs")),
            "api_delta": api_delta,
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--json", default="")
    ap.add_argument("--operator-src", default="",
                    help="directory holding the `kubeforge` package to run as the operator (PYTHONPATH)")
    ap.add_argument("--before-src", default="",
                    help="also run this copy of the operator (e.g. `git archive` of an older commit) "
                         "before the current one at each N, same session: a before/after table")
    args = ap.parse_args()
    variants = ([("before", args.before_src)] if args.before_src else []) + [
        ("after" if args.before_src else "", args.operator_src)]
    rows = []
    for s in args.sizes.split(","):
        for label, src in variants:
            rows.append({**run_size(int(s), src), "operator": label})
            r = rows[-1]
            print(f"N={r['n']} {label}: operator CPU {r['cpu_ms']:.2f} ms/object (bare client {r['bare_cpu_ms']:.2f}), "
                  f"ratio {r['ratio']:.2f}x, writes/TJ {r['writes_per_tj']:.2f}, RSS {r['rss_mb']:.0f} MB", flush=True)
    print()
    print("| N | operator | bare client: all Jobs (s) | operator: all Jobs (s) | ratio | all Running (s) | "
          "operator writes/TJ to Running | (apiserver view) | operator CPU ms/object to all Jobs | "
          "operator CPU ms/object to all Running (bare client's) | "
          "peak RSS MB | idle writes (12 s) | idle CPU ms/s (after s of catch-up) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['operator']} | {r['bare_s']:.2f} | {r['op_s']:.2f} | {r['ratio']:.2f}x | {r['running_s']:.1f} | "
              f"{r['writes_per_tj']:.2f} | {r['apiserver_op_writes_per_tj']:.2f} | {r['cpu_jobs_ms']:.2f} | "
              f"{r['cpu_ms']:.2f} ({r['bare_cpu_ms']:.2f}) | "
              f"{r['rss_mb']:.0f} | {r['idle_writes']:.0f} (+{r['idle_api_tj']:.0f} apiserver) | {r['idle_cpu_ms_s']:.1f} ({r['quiet_s']:.0f}) |")
    for r in rows:
        print(f"N={r['n']} {r['operator']} apiserver writes during the operator run: {json.dumps(r['api_delta'], sort_keys=True)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
