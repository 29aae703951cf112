"""Which API client for the operator: the official `kubernetes` client in a thread pool (what
`kubeforge.apply.AsyncKube` does) or `kubernetes_asyncio`, measured on one local control plane.

Each client POSTs N ConfigMaps (dict bodies, answers read) at concurrency 16 from an asyncio
event loop, in a namespace of its own; reported: wall time and the client process's CPU per
request (both run in this process, one after the other, so compare within one run).

kubernetes_asyncio is not a dependency: give its directory (`pip install --no-deps --target DIR
kubernetes_asyncio==36.1.0`) as --asyncio-path.

Run: .venv/bin/python benchmarks/bench_client.py [--n 1000] --asyncio-path DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

CONCURRENCY = 16


def configmap(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i:05d}", "namespace": ns}, "data": {"k": "v" * 64}}


async def _bounded(n: int, one: Any) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def run(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(n)))


def official(ns: str, n: int) -> tuple[float, float]:
    from kubeforge.apply import AsyncKube, make_kube

    kube = make_kube("bench", pool_size=CONCURRENCY)
    kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    akube = AsyncKube(kube, threads=CONCURRENCY)

    async def go() -> None:
        await _bounded(n, lambda i: akube.create(configmap(ns, i)))

    c0, t0 = time.process_time(), time.monotonic()
    asyncio.run(go())
    akube.close()
    return time.monotonic() - t0, time.process_time() - c0


def k8s_asyncio(ns: str, n: int) -> tuple[float, float]:
    from kubernetes_asyncio import client, config

    async def go() -> tuple[float, float]:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=cfg)
        cfg.connection_pool_maxsize = CONCURRENCY  # the same pool size as the threads' client
        async with client.ApiClient(configuration=cfg) as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

            async def one(i: int) -> None:
                resp = await core.create_namespaced_config_map(ns, configmap(ns, i), _preload_content=False)
                await resp.read()

            c0, t0 = time.process_time(), time.monotonic()
            await _bounded(n, one)
            return time.monotonic() - t0, time.process_time() - c0

    return asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--asyncio-path", default="")
    ap.add_argument("--kubeconfig", default="", help="an existing cluster (else a local one is started)")
    args = ap.parse_args()
    if args.asyncio_path:
        sys.path.insert(0, args.asyncio_path)
    rows: list[tuple[str, float, float]] = []

    def measure() -> None:
        suffix = str(os.getpid())
        for name, fn in (("kubernetes (threads)", official), ("kubernetes_asyncio", k8s_asyncio),
                         ("kubernetes (threads) again", official)):
            wall, cpu = fn(f"bench-{name.split()[0].replace('_', '-')}-{len(rows)}-{suffix}", args.n)
            rows.append((name, wall, cpu))
            print(f"{name}: {args.n} POSTs in {wall:.2f} s, client CPU {cpu * 1000 / args.n:.3f} ms/request", flush=True)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        measure()
        return 0
    from kubeforge_cluster.cluster import LocalCluster

    with LocalCluster(name=f"bench-client-{os.getpid()}", cpu_nodes=1, gpu_nodes=0, verbose=False) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        measure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
