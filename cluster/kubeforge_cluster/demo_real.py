"""`make demo NODES=real` / `python -m kubeforge_cluster.demo --nodes real`: the demo on real pods.

1. the operator, trainer and server images (`make images`): built when missing or older than the
   sources, otherwise the cached archives are used;
2. a real node (containerd + runc + kubelet + kube-proxy + CoreDNS, REALPODS.md's guards) beside
   the local control plane; the images go into its store once (kept in ~/.cache/kubeforge/node);
3. the artifact store: a hostPath PersistentVolume bound to the claim `kubeforge-artifacts` in the
   demo's namespace (`pvc://kubeforge-artifacts/`);
4. the Helm chart installs the operator as a real pod (operator image, its own ServiceAccount and
   RBAC, the API server through kubernetes.default.svc);
5. examples/trainingjob.yaml trains digits in a trainer container, a small TuningStudy runs its
   trials as trainer pods, examples/modeldeployment.yaml (one replica) serves the model from the
   artifact store in a server pod;
6. a live table until all three are final, then real inference requests (tritonclient) from the
   host to the ModelDeployment's Service through `kubectl port-forward` on loopback (never its
   ClusterIP: those are for pods);
7. times, then the node is stopped (nothing left behind) unless --keep.

Needs root and a machine where real pods can run (`python -m kubeforge_cluster.realnode build`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .chartops import NAMESPACE, RELEASE, helm_for, install, kubectl_bin
from .client import KubeClient
from .demo import BOLD, FINAL, Out, apply_documents, documents, infer, read_all, render

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "cluster" / "images"
IMAGES_OUT = IMAGES_DIR / "out"
IMAGES = ("operator", "trainer", "server")
SOURCES = {
    "operator": ("operator/kubeforge", "pyproject.toml", "constraints.txt"),
    "server": ("server-image", "operator/kubeforge/api", "pyproject.toml", "constraints.txt"),
    "trainer": ("trainer-image", "operator/kubeforge/api", "pyproject.toml", "constraints.txt"),
}
"""What each image's code comes from: an archive older than any of these files (or than
cluster/images/build.py) is rebuilt. All three carry the project's whole wheel, but the trainer
(6.4 GB, ~80 s to rewrite) and the server only run their own package and the shared API models,
so an operator-only change rebuilds only the operator image."""
OPERATOR_IMAGE = ("local/kubeforge-operator", "dev")
TRAINER_IMAGE = "local/kubeforge-trainer:dev"
SERVER_IMAGE = "local/kubeforge-server:dev"


def newest_source(paths: tuple[str, ...]) -> float:
    newest = (REPO / "cluster" / "images" / "build.py").stat().st_mtime
    for rel in paths:
        p = REPO / rel
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        for f in files:
            if "__pycache__" not in f.parts:
                newest = max(newest, f.stat().st_mtime)
    return newest


def stale_images() -> list[str]:
    """Images whose archive is missing or older than the newest of its sources."""
    out = []
    for n in IMAGES:
        archive = IMAGES_OUT / f"kubeforge-{n}.oci.tar"
        if not archive.is_file() or archive.stat().st_mtime < newest_source(SOURCES[n]):
            out.append(n)
    return out


def archives() -> list[Path]:
    return [IMAGES_OUT / f"kubeforge-{n}.oci.tar" for n in IMAGES]


def real_documents(quick: bool) -> list[dict[str, Any]]:
    """The kwok demo's three objects, sized for one real 2-core node: the study runs 2 trials of
    3 epochs side by side in smaller pods, the ModelDeployment one replica without autoscaling
    (no metrics server here)."""
    tj, ts, md = documents(quick)
    tj["spec"]["hyperparameters"]["epochs"] = max(tj["spec"]["hyperparameters"]["epochs"], 8)
    ts["spec"]["maxTrials"] = 2
    ts["spec"]["parallelism"] = 2
    ts["spec"].pop("earlyStopping", None)
    # the chosen point is shown, not served: a second server does not fit the node; latency is
    # measured on the trial's 400m CPU quota, so the bound is wider
    ts["spec"]["promote"].pop("modelDeployment", None)
    ts["spec"]["promote"]["select"]["subjectTo"]["onnx_latency_ms"]["max"] = 5.0
    tspec = ts["spec"]["trialTemplate"]["spec"]
    tspec["hyperparameters"]["epochs"] = 3
    tspec["resources"] = {"cpu": "400m", "memory": "1Gi"}
    md["spec"]["replicas"] = 1
    md["spec"].pop("autoscaling", None)
    return [tj, ts, md]


def main(a: argparse.Namespace) -> int:
    from .realnode import RealNode, default_run_dir, unsupported_reason
    from .realnode.cleanup import live_owner

    out = Out(colour=not a.no_color and not os.environ.get("NO_COLOR"))
    times: dict[str, float] = {}
    t_all = time.monotonic()
    reason = unsupported_reason()
    if reason:
        out.say(f"error: real pods cannot run here: {reason}")
        return 2

    out.step("images (operator, trainer, server; built without Docker)")
    todo = stale_images()
    t = time.monotonic()
    if todo:
        out.say(
            f"    building {', '.join(todo)} (missing or older than the sources; cached layers)"
        )
        sys.path.insert(0, str(IMAGES_DIR))
        try:
            images: Any = importlib.import_module("build")  # cluster/images/build.py
        finally:
            sys.path.pop(0)
        images.build(todo, IMAGES_OUT, do_import=False)
        times["images built"] = time.monotonic() - t
    else:
        out.say(f"    cached: {', '.join(str(p.relative_to(REPO)) for p in archives())}")

    out.step("real node (containerd, runc, kubelet, kube-proxy, CoreDNS) + control plane")
    run_dir = default_run_dir(a.name)
    live = live_owner()
    if live is not None:
        out.say(
            f"error: a real node is running ({live}); stop it first (make cluster-down NODES=real)"
        )
        return 2
    node = RealNode(run_dir, name=a.name, daemon=a.keep, verbose=False)
    t = time.monotonic()
    node.start()
    times["real node Ready"] = time.monotonic() - t
    out.say(f"    Ready in {times['real node Ready']:.1f}s; KUBECONFIG={node.kubeconfig}")
    ok = False
    try:
        t = time.monotonic()
        imported = node.import_images(archives())
        times["images into the node"] = time.monotonic() - t
        out.say(
            f"    images {'imported: ' + ', '.join(imported) if imported else 'already there'} "
            f"({times['images into the node']:.1f}s; the store is kept in ~/.cache/kubeforge/node)"
        )
        assert node.cluster is not None
        client = KubeClient(node.kubeconfig)
        ns = a.namespace
        node.kubectl("create", "namespace", ns)
        node.kubectl("-n", ns, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
        store = node.artifact_store(ns)
        out.say(
            f"    artifact store {store}: hostPath PersistentVolume "
            f"{node.artifacts_dir / ns} (ReadWriteMany) bound to claim {ns}/kubeforge-artifacts"
        )

        out.step("helm install kubeforge charts/kubeforge: the operator as a real pod")
        work = run_dir / "demo"
        helm = helm_for(node.cluster, home=work / "helm")
        t = time.monotonic()
        try:
            install(
                helm,
                {
                    "image": {"repository": OPERATOR_IMAGE[0], "tag": OPERATOR_IMAGE[1]},
                    "images": {"trainer": TRAINER_IMAGE, "server": SERVER_IMAGE},
                    "artifactStore": store,
                },
                # under helm's own 180 s process limit, so a failure says why
                extra=("--wait", "--timeout", "150s"),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError) as e:
            out.say(f"helm install failed: {e}")
            for args in (("get", "pods", "-o", "wide"), ("logs", "deploy/kubeforge", "--tail=40")):
                r = node.kubectl("-n", NAMESPACE, *args, check=False)
                out.say(r.stdout + r.stderr)
            return 1
        times["helm install (operator pod Available)"] = time.monotonic() - t
        out.say(
            f"    release {RELEASE} in {NAMESPACE}: operator pod Available in "
            f"{times['helm install (operator pod Available)']:.1f}s"
        )

        docs = real_documents(a.quick)
        out.step(
            f"kubectl apply -n {ns}: examples/trainingjob.yaml, a 2-trial TuningStudy, "
            "examples/modeldeployment.yaml (1 replica)"
        )
        apply_documents(kubectl_bin(node.cluster), node.kubeconfig, ns, docs)
        t0 = time.monotonic()
        done_at: dict[str, float] = {}
        deadline = t0 + a.timeout
        objs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            objs = read_all(client, ns, docs)
            for o in objs:
                if (o.get("status") or {}).get("phase") in FINAL[o["kind"]]:
                    done_at.setdefault(o["kind"], time.monotonic() - t0)
                else:
                    done_at.pop(o["kind"], None)
            render(out, objs, t0, done_at)
            if len(done_at) == len(docs):
                break
            time.sleep(1)
        out.drawn = 0  # keep the final table on screen
        for kind, secs in done_at.items():
            times[f"{kind} final"] = secs
        phases = {o["kind"]: (o.get("status") or {}).get("phase") for o in objs}
        want = {"TrainingJob": "Succeeded", "TuningStudy": "Succeeded", "ModelDeployment": "Ready"}
        if phases != want:
            out.say(f"ended with {phases} after {time.monotonic() - t0:.0f}s")
            out.say(node.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout)
            return 1
        tj = objs[0]["status"]
        acc = float(tj["metrics"]["val_accuracy"])
        out.say(f"    TrainingJob val_accuracy {acc:.4f}; model {tj['artifacts']['model']}")
        best = objs[1]["status"].get("bestTrial") or {}
        values = ", ".join(f"{k}={v:.4g}" for k, v in (best.get("values") or {}).items())
        out.say(f"    TuningStudy chosen point {best.get('name')} ({values})")

        md = docs[2]["metadata"]["name"]
        from .portforward import port_forward
        from .realnode import net

        # From the host only through loopback: kubectl port-forward to the Service.
        with port_forward(node.cluster, ns, f"service/{md}", 8080) as local:
            out.step(
                f"inference: tritonclient HTTP -> 127.0.0.1:{local} "
                f"(kubectl port-forward to Service {ns}/{md}:8080)"
            )
            r = infer(out, f"127.0.0.1:{local}", md)
        times["first request (cold), ms"] = r["cold_ms"]
        times["warm request p50, ms"] = r["warm_p50_ms"]
        times["warm request p99, ms"] = r["warm_p99_ms"]
        problems = net.check_guard_counters()
        out.say(f"    guards: {problems or 'no packet dropped'}")
        times["demo total"] = time.monotonic() - t_all
        out.step("times")
        for k, v in times.items():
            unit = "" if k.endswith("ms") else "s"
            out.say(f"    {k:38} {v:8.1f}{unit}")
        ok = acc > 0.9 and r["accuracy"] > 0.9 and not problems
        summary = {
            "accuracy": acc,
            "served_accuracy": r["accuracy"],
            "total_s": times["demo total"],
        }
        out.say(out.c(BOLD, f"demo {'succeeded' if ok else 'failed'} {json.dumps(summary)}"))
        return 0 if ok else 1
    finally:
        if a.keep:
            out.say(
                f"--keep: the real node is left running; export KUBECONFIG={node.kubeconfig}  "
                f"(stop: python -m kubeforge_cluster.realnode down --name {a.name})"
            )
        else:
            t = time.monotonic()
            node.stop()
            out.say(f"    real node stopped in {time.monotonic() - t:.1f}s (nothing left behind)")
