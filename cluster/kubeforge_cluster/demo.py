"""`make demo` / `python -m kubeforge_cluster.demo`: train, tune and serve on the local cluster.

1. start (or reuse) the local control plane (etcd, kube-apiserver, controllers, kwok nodes);
2. install the Helm chart with the real helm;
3. run the operator: kwok pods are fake, so `kubeforge-operator` runs as a local process with the
   chart's settings and a token of the chart's ServiceAccount (the chart's RBAC, no more);
4. apply examples/trainingjob.yaml, a smaller copy of examples/tuningstudy-multiobjective.yaml
   (accuracy against serving latency; promote serves the chosen point through its own
   ModelDeployment) and examples/modeldeployment.yaml (serving the trained model);
5. play the pods honestly (see kubeforge_cluster.podplayer): the real kubeforge-trainer for each
   training pod, the real kubeforge-server for each serving pod, as local processes;
6. show a live table until the three reach their final phases, then send real inference requests
   (tritonclient, Open Inference Protocol over HTTP) and print the answers and timings;
7. clean up (processes, and the cluster if the demo started it) unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from . import binaries
from .argo_health import health
from .chartops import (
    NAMESPACE,
    RELEASE,
    OperatorProcess,
    helm_for,
    install,
    kubectl_bin,
    operator_env_from_release,
    service_account_kubeconfig,
)
from .client import ApiError, KubeClient
from .cluster import LocalCluster, run_dir_for
from .podplayer import PodPlayer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GROUP = "/apis/kubeforge.io/v1alpha1"
FINAL = {
    "TrainingJob": {"Succeeded", "Failed"},
    "TuningStudy": {"Succeeded", "Failed"},
    "ModelDeployment": {"Ready", "Failed"},
}
PLURAL = {
    "TrainingJob": "trainingjobs",
    "TuningStudy": "tuningstudies",
    "ModelDeployment": "modeldeployments",
}

BOLD, DIM, RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
COLOURS = {
    "Healthy": "\x1b[32m",
    "Progressing": "\x1b[36m",
    "Degraded": "\x1b[31m",
    "Suspended": "\x1b[33m",
    "Unknown": "\x1b[35m",
}


class Out:
    """Plain ANSI output: a live table redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, colour: bool) -> None:
        self.tty = sys.stdout.isatty()
        self.colour = colour and self.tty
        self.drawn = 0
        self.last = ""
        self.lock = threading.RLock()  # the pod player's thread prints too

    def c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.colour else text

    def say(self, msg: str) -> None:
        with self.lock:
            self.clear()
            print(msg, flush=True)

    def step(self, msg: str) -> None:
        self.say(self.c(BOLD, f"==> {msg}"))

    def clear(self) -> None:
        if self.tty and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0

    def table(self, lines: list[str], key: str) -> None:
        with self.lock:
            self._table(lines, key)

    def _table(self, lines: list[str], key: str) -> None:
        if self.tty:
            self.clear()
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            self.drawn = len(lines)
        elif key != self.last:  # not a terminal: print only what changed
            print("\n".join(lines), flush=True)
        self.last = key


# ------------------------------------------------------------------------------------------
# the resources


PROMOTED = "digits-chosen"
"""The ModelDeployment the demo's study promotes its chosen point to (created by the operator)."""
LATENCY_BOUND_MS = 1.0
"""The demo's promote.select bound on onnx_latency_ms (the example's 0.5 ms, doubled: the trainer
measures on a shared 2-core machine, and a study no trial of which keeps the bound fails)."""


def documents(quick: bool) -> list[dict[str, Any]]:
    """The three objects the demo applies (from examples/, the study made smaller)."""
    tj = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())
    ts = yaml.safe_load((EXAMPLES / "tuningstudy-multiobjective.yaml").read_text())
    md = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    ts = copy.deepcopy(ts)
    # A smaller copy of the accuracy-against-latency study: fewer, shorter trials (NSGA-II breeds
    # from the third on); promote serves the point promote.select chooses through its own
    # ModelDeployment (one replica, created by the operator).
    ts["spec"]["maxTrials"] = 4
    ts["spec"]["parallelism"] = 2
    ts["spec"]["algorithm"]["settings"] = {"population_size": 2}
    tspec = ts["spec"]["trialTemplate"]["spec"]
    tspec["hyperparameters"]["epochs"] = 3
    tspec["resources"] = {"cpu": "500m", "memory": "1Gi"}
    ts["spec"]["promote"]["modelDeployment"] = PROMOTED
    ts["spec"]["promote"]["select"]["subjectTo"]["onnx_latency_ms"]["max"] = LATENCY_BOUND_MS
    if quick:
        tj["spec"]["hyperparameters"]["epochs"] = 2
        ts["spec"]["maxTrials"] = 2
        ts["spec"]["trialTemplate"]["spec"]["hyperparameters"]["epochs"] = 2
        md["spec"]["replicas"] = 1
        md["spec"].pop("autoscaling", None)
    return [tj, ts, md]


def detail(kind: str, obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    if kind == "TrainingJob":
        m = st.get("metrics") or (st.get("progress") or {}).get("metrics") or {}
        epoch = (st.get("progress") or {}).get("epoch")
        parts = [f"epoch {epoch}"] if epoch is not None and not st.get("metrics") else []
        parts += [f"{k}={m[k]:.4f}" for k in ("val_loss", "val_accuracy") if k in m]
        return "  ".join(parts) or st.get("message", "")
    if kind == "TuningStudy":
        t = st.get("trials") or {}
        best = st.get("bestTrial") or {}
        s = f"trials {st.get('progress') or t.get('total', 0)}"
        s += f" (running {t.get('running', 0)}, pruned {t.get('pruned', 0)})" if t else ""
        if best.get("value") is not None:
            s += f"  best {best.get('name')} = {best['value']:.4f}"
        latency = (best.get("values") or {}).get("onnx_latency_ms")
        if latency is not None:
            s += f" @ {latency:.3f} ms"
        return s
    r = st.get("replicas") or {}
    s = f"replicas {r.get('ready', 0)}/{r.get('desired', 0)}" if r else ""
    return (s + "  " + (st.get("message") or "")).strip()


def apply_documents(kubectl: str, kubeconfig: Any, ns: str, docs: list[dict[str, Any]]) -> None:
    """`kubectl apply --server-side` the documents into `ns`, as a user would."""
    subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", "apply", "-n", ns, "--server-side", "-f", "-"],
        input=yaml.safe_dump_all(docs),
        text=True,
        check=True,
        capture_output=True,
    )


def read_all(client: KubeClient, ns: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        try:
            out.append(client.get(f"{GROUP}/namespaces/{ns}/{PLURAL[kind]}/{name}"))
        except ApiError:
            out.append({"kind": kind, "metadata": {"name": name}})
    return out


def render(out: Out, objs: list[dict[str, Any]], t0: float, done_at: dict[str, float]) -> None:
    header = f"{'KIND':16} {'NAME':24} {'PHASE':12} {'ARGO CD':12} {'TIME':>7}  DETAIL"
    lines = [out.c(BOLD, header)]
    key = []
    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        phase = (o.get("status") or {}).get("phase") or "-"
        h = health(kind, o)["status"]
        t = done_at.get(kind, time.monotonic() - t0)
        det = detail(kind, o)[:70]
        lines.append(
            f"{kind:16} {name:24} {phase:12} {out.c(COLOURS.get(h, ''), f'{h:12}')} "
            f"{t:6.0f}s  {det}"
        )
        key.append(f"{phase}|{h}|{det}")
    out.table(lines, "\n".join(key))


# ------------------------------------------------------------------------------------------
# inference


def infer(out: Out, url: str, model: str, n_warm: int = 50) -> dict[str, float]:
    import numpy as np
    import tritonclient.http as httpclient
    from sklearn.datasets import load_digits

    client = httpclient.InferenceServerClient(url=url)
    meta = client.get_model_metadata(model)
    inp, outp = meta["inputs"][0], meta["outputs"][0]
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float32)
    y = np.asarray(digits.target)

    def call(rows: Any) -> Any:
        i = httpclient.InferInput(inp["name"], list(rows.shape), inp["datatype"])
        i.set_data_from_numpy(rows, binary_data=True)
        res = client.infer(model, [i], outputs=[httpclient.InferRequestedOutput(outp["name"])])
        return res.as_numpy(outp["name"])

    t = time.perf_counter()
    first = call(x[:8])
    cold_ms = (time.perf_counter() - t) * 1000
    pred = first.argmax(axis=1)
    out.say(f"    POST /v2/models/{model}/infer (8 images of handwritten digits, binary tensors)")
    out.say(f"    answers: {' '.join(str(int(p)) for p in pred)}")
    out.say(f"    truth:   {' '.join(str(int(v)) for v in y[:8])}")
    lat = []
    correct = 0
    for k in range(n_warm):
        rows = x[8 + 8 * k : 16 + 8 * k]
        t = time.perf_counter()
        r = call(rows)
        lat.append((time.perf_counter() - t) * 1000)
        correct += int((r.argmax(axis=1) == y[8 + 8 * k : 16 + 8 * k]).sum())
    acc = correct / (8 * n_warm)
    out.say(f"    accuracy over {8 * n_warm} more images: {acc:.1%}")
    lat.sort()
    return {
        "cold_ms": cold_ms,
        "warm_p50_ms": statistics.median(lat),
        "warm_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "accuracy": acc,
    }


# ------------------------------------------------------------------------------------------
# main


def promoted_ready(
    out: Out,
    client: KubeClient,
    player: PodPlayer,
    ns: str,
    study: dict[str, Any],
    timeout: float,
    times: dict[str, float],
) -> bool:
    """Show the point the study chose and wait until the ModelDeployment it was promoted to is
    Ready on a real server."""
    best = (study.get("status") or {}).get("bestTrial") or {}
    rule = ((study.get("spec") or {}).get("promote") or {}).get("select") or {}
    out.step(f"promote: the study's chosen point -> ModelDeployment {PROMOTED}")
    values = ", ".join(f"{k}={v:.4g}" for k, v in (best.get("values") or {}).items())
    out.say(f"    rule {rule}: {best.get('name')} ({values})")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            md = client.get(f"{GROUP}/namespaces/{ns}/modeldeployments/{PROMOTED}")
        except ApiError:
            md = {}
        ready = (md.get("status") or {}).get("phase") == "Ready"
        if ready and any(s.name.startswith(PROMOTED + "-") for s in player.servers()):
            uri = md["spec"]["model"].get("uri")
            out.say(f"    ModelDeployment {PROMOTED} Ready, serving {uri}")
            times["promoted ModelDeployment Ready"] = time.monotonic() - t0
            return True
        time.sleep(1)
    out.say(f"    ModelDeployment {PROMOTED} not Ready after {timeout:.0f}s")
    return False


def _exists(client: KubeClient, path: str) -> bool:
    try:
        client.get(path)
    except ApiError as e:
        if e.status == 404:
            return False
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubeforge_cluster.demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    ap.add_argument("--keep", action="store_true", help="leave the cluster and processes up")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and trials (tests, CI)")
    ap.add_argument("--name", default="demo", help="local cluster name (reused if running)")
    ap.add_argument("--namespace", default="kubeforge-demo")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for the phases")
    ap.add_argument("--no-color", action="store_true")
    ap.add_argument(
        "--nodes",
        choices=["kwok", "real"],
        default="kwok",
        help="kwok: fake nodes, pods played by local processes (default); real: a real node "
        "(root), the chart's operator, trainer and server run as real pods (demo_real)",
    )
    a = ap.parse_args(argv)
    if a.nodes == "real":
        from . import demo_real

        if a.name == "demo":
            a.name = "demo-real"
        return demo_real.main(a)
    out = Out(colour=not a.no_color and not os.environ.get("NO_COLOR"))
    times: dict[str, float] = {}
    t_all = time.monotonic()

    out.step("local control plane")
    run_dir = run_dir_for(a.name)
    cluster = LocalCluster.attach(run_dir)
    started_here = False
    if cluster.running():
        times["cluster (reused)"] = 0.0
        out.say(f"    reusing the running cluster {a.name!r} ({run_dir})")
    else:
        try:
            binaries.require_binaries((*binaries.CORE_BINARIES, "helm"))
        except binaries.MissingBinaries as e:
            out.say(f"error: {e}")
            return 2
        cluster.stop(remove=True)
        cluster = LocalCluster(run_dir, name=a.name, daemon=a.keep, verbose=False)
        cluster.start()
        started_here = True
        times["cluster start (cold)"] = cluster.startup_seconds or 0.0
        out.say(
            f"    started in {cluster.startup_seconds:.1f}s: etcd, kube-apiserver, "
            f"controller-manager, scheduler, kwok ({len(cluster.node_names)} fake nodes)"
        )
    client = KubeClient(cluster.kubeconfig)
    work = run_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    artifacts = work / "artifacts"
    artifacts.mkdir(exist_ok=True)

    op: OperatorProcess | None = None
    player: PodPlayer | None = None
    ok = False
    try:
        out.step("helm install kubeforge charts/kubeforge (the real helm)")
        helm = helm_for(cluster, home=work / "helm")
        t = time.monotonic()
        install(helm, {"artifactStore": f"file://{artifacts}/"}, upgrade=True)
        times["helm install"] = time.monotonic() - t
        out.say(
            f"    release {RELEASE} in {NAMESPACE}: CRDs, operator Deployment, "
            f"ServiceAccount, least-privilege ClusterRole, metrics and progress Services, "
            f"admission policy "
            f"({times['helm install']:.1f}s; helm {helm.major})"
        )

        ns = a.namespace
        # A fresh namespace, before the operator starts: a reused cluster may hold an earlier
        # run's objects (the operator remembers per-namespace setup until its next resync).
        if _exists(client, f"/api/v1/namespaces/{ns}"):
            with contextlib.suppress(ApiError):  # 409 while it is already terminating
                client.delete(f"/api/v1/namespaces/{ns}")
            out.say(f"    deleting the earlier run's namespace {ns}")
            client.wait_for(
                f"namespace {ns} gone",
                lambda: not _exists(client, f"/api/v1/namespaces/{ns}"),
                timeout=120,
            )
        try:
            client.post(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
        except ApiError as e:
            if e.status != 409:
                raise
        client.wait_for(
            f"ServiceAccount {ns}/default",
            lambda: client.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
        )
        out.step("the operator (a local process with the chart's ServiceAccount token)")
        out.say(
            "    kwok's pods are fake, so the chart's operator pod runs no code; "
            "kubeforge-operator runs here"
        )
        out.say(
            "    with the env the chart's Deployment sets and `kubectl create token "
            f"{RELEASE} -n {NAMESPACE}` as its identity."
        )
        kc = service_account_kubeconfig(cluster, work / "operator.kubeconfig")
        env = operator_env_from_release(helm)
        t = time.monotonic()
        op = OperatorProcess(kc, env, work / "operator.log").start()
        times["operator healthy"] = time.monotonic() - t
        out.say(f"    healthy in {times['operator healthy']:.1f}s; log: {op.log}")

        out.say(
            f"    artifact store: file://{artifacts}/ (the local processes share this disk, "
            "as pods share a pvc:// or s3:// store)"
        )
        out.step("the pod player (the real trainer and server for kwok's pods)")
        out.say(
            "    each training pod runs the real kubeforge-trainer locally (it reports progress "
            "to the operator's endpoint with a token bound to its pod),"
        )
        out.say(
            "    each serving pod the real kubeforge-server on 127.0.0.1 (Ready when "
            "/v2/health/ready says so)."
        )
        player = PodPlayer(
            client,
            work,
            [ns],
            say=lambda m: out.say("    " + m),
            progress_endpoint=op.progress_endpoint,
        ).start()

        docs = documents(a.quick)
        out.step(
            f"kubectl apply -n {ns}: examples/trainingjob.yaml, a smaller "
            "examples/tuningstudy-multiobjective.yaml, examples/modeldeployment.yaml"
        )
        apply_documents(kubectl_bin(cluster), cluster.kubeconfig, ns, docs)
        t0 = time.monotonic()
        done_at: dict[str, float] = {}
        deadline = t0 + a.timeout
        objs: list[dict[str, Any]] = []
        md_name = docs[2]["metadata"]["name"]
        while time.monotonic() < deadline:
            objs = read_all(client, ns, docs)
            final = 0
            for o in objs:
                kind = o["kind"]
                st = o.get("status") or {}
                ok = st.get("phase") in FINAL[kind]
                if kind == "ModelDeployment" and st.get("phase") == "Ready":
                    # kwok marks pods Ready before any server ran: count only what the real
                    # servers back (the player marks a pod Ready when its server is).
                    backed = [s for s in player.servers() if s.name.startswith(md_name + "-")]
                    ok = len(backed) >= (st.get("replicas") or {}).get("desired", 1)
                if ok:
                    final += 1
                    done_at.setdefault(kind, time.monotonic() - t0)
                else:
                    done_at.pop(kind, None)
            render(out, objs, t0, done_at)
            if final == len(docs):
                break
            time.sleep(1)
        out.drawn = 0  # keep the final table on screen
        for kind, secs in done_at.items():
            times[f"{kind} final"] = secs
        phases = {o["kind"]: (o.get("status") or {}).get("phase") for o in objs}
        if len(done_at) < len(docs):
            out.say(f"timed out after {a.timeout:.0f}s: {phases}")
            return 1

        promoted_ok = promoted_ready(out, client, player, ns, objs[1], 120, times)
        md = md_name
        servers = [s for s in player.servers() if s.name.startswith(md + "-")]
        if phases.get("ModelDeployment") == "Ready" and servers:
            s = servers[0]
            out.step(f"inference: tritonclient HTTP -> {s.url} (pod {s.name})")
            if s.ready_seconds is not None:
                times["server process ready (cold start)"] = s.ready_seconds
            r = infer(out, s.url, md)
            times["first request (cold), ms"] = r["cold_ms"]
            times["warm request p50, ms"] = r["warm_p50_ms"]
            times["warm request p99, ms"] = r["warm_p99_ms"]
        times["demo total"] = time.monotonic() - t_all

        out.step("times")
        for k, v in times.items():
            unit = "" if k.endswith("ms") else "s"
            out.say(f"    {k:38} {v:8.1f}{unit}")
        ok = promoted_ok and phases == {
            "TrainingJob": "Succeeded",
            "TuningStudy": "Succeeded",
            "ModelDeployment": "Ready",
        }
        out.say(out.c(BOLD, "demo " + ("succeeded" if ok else f"ended with {phases}")))
        return 0 if ok else 1
    finally:
        if a.keep:
            out.say(
                f"--keep: cluster and processes left running; export KUBECONFIG="
                f"{cluster.kubeconfig}  (stop: python -m kubeforge_cluster down "
                f"--name {a.name})"
            )
            pids = [op.proc.pid] if op is not None and op.proc is not None else []
            if player is not None:
                player._stop.set()  # the player thread goes with us; its processes stay
                pids += [p.proc.pid for p in player.played.values() if p.proc and not p.done]
            if pids:
                out.say(
                    f"    local processes left running (operator, servers): "
                    f"kill {' '.join(map(str, pids))}"
                )
        else:
            if player is not None:
                player.stop()
            if op is not None:
                op.stop()
            if started_here:
                cluster.stop(remove=ok)
                if not ok:
                    out.say(f"logs kept in {run_dir}")
            else:
                with_ns = a.namespace
                subprocess.run(
                    [
                        kubectl_bin(cluster),
                        f"--kubeconfig={cluster.kubeconfig}",
                        "delete",
                        "namespace",
                        with_ns,
                        "--wait=false",
                    ],
                    capture_output=True,
                    check=False,
                )
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
