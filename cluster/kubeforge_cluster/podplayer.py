"""The pod player: plays the kubelet for kubeforge's pods on kwok nodes, honestly.

kwok nodes run nothing, so the player runs the REAL programs the pods name, as local processes:

- a training pod (container command `kubeforge-trainer`, possibly under torchrun with one node):
  `kubeforge-trainer` with the pod's own environment (`KUBEFORGE_JOB`, `KUBEFORGE_OUTPUT_URI`,
  `HP_*`, ...). Its progress takes the real path: the player mints the token the kubelet would
  project into the pod (TokenRequest: the pod's ServiceAccount, the volume's audience and
  lifetime, bound to the Pod), renews it as the kubelet does, and points the trainer at the
  operator's progress endpoint on loopback (`progress_endpoint`: no ClusterIP is reachable from
  the host) with the CA from the pod's env; the operator's answers carry stop requests. Without
  an endpoint (or for a pod without the channel) reports go to `KUBEFORGE_PROGRESS_FILE` and
  reach nobody. When the trainer exits,
  the player ends the pod (Succeeded on 0, else Failed) with the trainer's exit code and its
  termination message, through the pod's status subresource, as a kubelet does.
- a serving pod (command `kubeforge-server`): `kubeforge-server` with the pod's arguments on a
  free 127.0.0.1 port; the pod is not Ready until the server's `/v2/health/ready` says so. With
  `pod_addresses=True` each serving pod gets its own loopback address instead (127.x.y.z), serves
  on its container's own ports there, and that address is its `status.podIP`, so whatever
  reaches pods by IP (the operator reading a rollout's figures from `/metrics`) works unchanged.

Services, as kube-proxy and cluster DNS would carry them (ClusterIPs are never used from the
host): `service_url(namespace, name)` is a loopback TCP proxy that hands each connection to a
ready, not terminating, played server the Service selects; a server argument naming
`http://SERVICE.NAMESPACE.svc.cluster.local:PORT` (a stable server's `--shadow-url`) is pointed
at such a proxy.

Other containers (your own images) cannot run here: such a pod is failed with a message saying so.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import ApiError, KubeClient
from .cluster import free_port
from .podstatus import readiness_status, terminated_status, timestamp_now
from .progress import loopback_url, mint_pod_token, projected_token_source
from .serviceproxy import SVC_URL, ServiceProxy

JSON = dict[str, Any]


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


REPORT_PYZ = "/kubeforge/bin/kubeforge-report.pyz"


def program_of(container: JSON) -> str | None:
    """'trainer', 'server' or None (a container the player cannot run). A command under
    `kubeforge-report` (the zipapp the operator copies into the pod) counts as a trainer: the
    player runs the installed `kubeforge-report` with the same arguments, and the user's own
    command after `--` as it is (it must run on this machine: e.g. `python3 -c ...`)."""
    cmd = [*(container.get("command") or []), *(container.get("args") or [])]
    if "kubeforge-server" in cmd[:1]:
        return "server"
    if cmd[:2] == ["python3", REPORT_PYZ] and "--" in cmd:
        return "trainer"
    if "kubeforge-trainer" in cmd:
        i = cmd.index("kubeforge-trainer")
        if i == 0 or cmd[0] == "torchrun":
            return "trainer"
    return None


def pod_env(pod: JSON, container: JSON) -> dict[str, str]:
    """The container's environment as the kubelet would make it (plain values + downward API)."""
    meta = pod["metadata"]
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath", "")
        value = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
            "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", ""),
            "status.podIP": pod.get("status", {}).get("podIP", ""),
        }.get(ref)
        if value is None and ref.startswith("metadata.annotations['"):
            value = meta.get("annotations", {}).get(ref.split("'")[1], "")
        if value is None and ref.startswith("metadata.labels['"):
            value = meta.get("labels", {}).get(ref.split("'")[1], "")
        if value is not None:
            env[e["name"]] = value
    return env


@dataclass
class Played:
    """One pod the player runs a process for."""

    namespace: str
    name: str
    program: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    ready: bool = False
    pod: JSON = field(default_factory=dict)
    token_renew_at: float = 0.0
    done: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    exit_code: int | None = None
    asserted: float = 0.0
    host: str = "127.0.0.1"
    grpc_port: int = 0
    terminating: bool = False
    """Deleted: Services stop handing it connections before its server drains."""

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


class PodPlayer:
    """Watches pods (polling) in `namespaces` and plays them; `start()` / `stop()`."""

    def __init__(
        self,
        client: KubeClient,
        workdir: Path,
        namespaces: list[str],
        *,
        interval: float = 0.5,
        say: Callable[[str], None] | None = None,
        threads_per_process: int = 1,
        progress_endpoint: str | None = None,
        pod_addresses: bool = False,
    ) -> None:
        self.pod_addresses = pod_addresses
        """Each serving pod on its own loopback address (its podIP) and its own ports."""
        self.proxies: dict[tuple[str, str, int], ServiceProxy] = {}
        self.progress_endpoint = progress_endpoint
        """`https://127.0.0.1:PORT` of the operator's progress endpoint (None: no channel)."""
        self.client = client
        self.workdir = workdir
        self.namespaces = namespaces
        self.interval = interval
        self.say = say or (lambda msg: None)
        self.threads = threads_per_process
        self.played: dict[tuple[str, str], Played] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> PodPlayer:
        self._thread = threading.Thread(target=self._loop, name="pod-player", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for proxy in list(self.proxies.values()):
            proxy.close()
        for p in list(self.played.values()):
            self._kill(p)

    def service_url(self, namespace: str, name: str, port: int = 8080) -> str:
        """`127.0.0.1:PORT` carrying Service `name`'s `port` to the pods it selects."""
        key = (namespace, name, port)
        with self._lock:
            proxy = self.proxies.get(key)
            if proxy is None:
                proxy = self.proxies[key] = ServiceProxy(self, namespace, name, port)
        return proxy.address

    def _service_arg(self, arg: str) -> str:
        m = SVC_URL.match(arg)
        if m is None:
            return arg
        name, namespace, port, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4) or ""
        return f"http://{self.service_url(namespace, name, port)}{rest}"

    def _free_loopback(self, ports: tuple[int, ...]) -> str:
        """A loopback address (127.64-127.127.x.y) whose `ports` are free."""
        for _ in range(100):
            host = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            try:
                for port in ports:
                    with socket.socket() as sock:
                        sock.bind((host, port))
            except OSError:
                continue
            return host
        raise RuntimeError("no free loopback address")

    def servers(self, labels: dict[str, str] | None = None) -> list[Played]:
        """Ready server processes (optionally only pods with these labels)."""
        with self._lock:
            return [
                p
                for p in self.played.values()
                if p.program == "server"
                and p.ready
                and not p.done
                and all(p.labels.get(k) == v for k, v in (labels or {}).items())
            ]

    # ---------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # keep playing; report once per distinct error
                msg = f"{type(exc).__name__}: {exc}"
                if msg not in self.errors:
                    self.errors.append(msg)
                    self.say(f"pod player: {msg}")
            self._stop.wait(self.interval)

    def tick(self) -> None:
        seen: set[tuple[str, str]] = set()
        for ns in self.namespaces:
            pods = self.client.get(f"/api/v1/namespaces/{ns}/pods")["items"]
            for pod in pods:
                key = (ns, pod["metadata"]["name"])
                seen.add(key)
                self._play(key, pod)
        for key, p in list(self.played.items()):
            if key not in seen and not p.done:
                self._kill(p)  # the pod is gone (deleted, pruned trial, scaled down)
                p.done = True

    def _play(self, key: tuple[str, str], pod: JSON) -> None:
        status = pod.get("status") or {}
        phase = status.get("phase")
        containers = pod["spec"]["containers"]
        p = self.played.get(key)
        if pod["metadata"].get("deletionTimestamp"):
            if p is not None and not p.done:
                with self._lock:
                    p.terminating = True  # out of its Services before it drains
                if self.pod_addresses and p.program == "server":
                    # as a kubelet: the preStop sleep first (endpoints stop routing to the pod),
                    # then SIGTERM (the server drains)
                    p.done = True
                    delay = _prestop_sleep(containers[0])
                    threading.Thread(
                        target=lambda: (time.sleep(delay), self._kill(p)), daemon=True
                    ).start()
                    return
                self._kill(p)
                p.done = True
            return
        if p is None:
            if phase != "Running" or not pod["spec"].get("nodeName"):
                return  # kwok has not started it yet (or it already ended)
            if any(
                "terminated" in (cs.get("state") or {})
                for cs in status.get("containerStatuses") or []
            ):
                return
            program = program_of(containers[0])
            p = Played(
                key[0],
                key[1],
                program or "none",
                self.workdir / "pods" / f"{key[0]}.{key[1]}",
                labels=dict(pod["metadata"].get("labels") or {}),
            )
            p.dir.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self.played[key] = p
            if program == "trainer":
                self._start_trainer(p, pod, containers[0])
            elif program == "server":
                self._start_server(p, pod, containers[0])
            else:
                self._terminate(
                    pod,
                    "Failed",
                    126,
                    "NotPlayable",
                    "the local pod player runs only kubeforge's own trainer and server "
                    "(this container needs a real kubelet)",
                )
                p.done = True
            return
        if p.done:
            return
        if p.program == "trainer":
            self._follow_trainer(p, pod)
        elif p.program == "server":
            self._follow_server(p, pod)

    # ---------------------------------------------------------------------------- trainer
    def _start_trainer(self, p: Played, pod: JSON, container: JSON) -> None:
        own = pod_env(pod, container)
        channel: dict[str, str] = {"KUBEFORGE_PROGRESS_FILE": str(p.dir / "progress.jsonl")}
        url = own.pop("KUBEFORGE_PROGRESS_URL", "")
        own.pop("KUBEFORGE_PROGRESS_TOKEN_FILE", None)
        if url and self.progress_endpoint and projected_token_source(pod) is not None:
            p.pod = pod
            self._renew_token(p)
            channel = {
                "KUBEFORGE_PROGRESS_URL": loopback_url(url, self.progress_endpoint),
                "KUBEFORGE_PROGRESS_TOKEN_FILE": str(p.dir / "token"),
            }
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBEFORGE_", "HP_"))},
            **own,
            **channel,
            "KUBEFORGE_TERMINATION_LOG": str(p.dir / "termination-log"),
            "OMP_NUM_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
        }
        for var in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
            env.pop(var, None)
        cmd = [*(container.get("command") or []), *(container.get("args") or [])]
        if cmd[:2] == ["python3", REPORT_PYZ]:
            argv = [_bin("kubeforge-report"), *cmd[2:]]
            self.say(f"pod {p.namespace}/{p.name}: running kubeforge-report -- {cmd[cmd.index('--') + 1:]}")
        else:
            argv = [_bin("kubeforge-trainer")]
            self.say(f"pod {p.namespace}/{p.name}: running the real kubeforge-trainer locally")
        with open(p.dir / "log", "ab") as log:
            p.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=p.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _renew_token(self, p: Played) -> None:
        """Mint the pod's projected token again (as the kubelet does at 80% of its life)."""
        seconds = int((projected_token_source(p.pod) or {}).get("expirationSeconds") or 600)
        token = mint_pod_token(self.client, p.pod)
        tmp = p.dir / "token.new"
        tmp.write_text(token)
        tmp.replace(p.dir / "token")
        p.token_renew_at = time.monotonic() + 0.8 * seconds

    def _follow_trainer(self, p: Played, pod: JSON) -> None:
        assert p.proc is not None
        if p.token_renew_at and time.monotonic() >= p.token_renew_at:
            with contextlib.suppress(ApiError):
                self._renew_token(p)
        code = p.proc.poll()
        if code is None:
            return
        p.exit_code = code
        term = p.dir / "termination-log"
        message = term.read_text(errors="replace")[:4096] if term.exists() else ""
        if not message:
            message = _tail(p.dir / "log", 20)[-4096:]
        if code == 0:
            self._terminate(pod, "Succeeded", 0, "Completed", message)
        else:
            self._terminate(pod, "Failed", code, "Error", message)
        p.done = True
        self.say(f"pod {p.namespace}/{p.name}: trainer exited {code}")

    # ---------------------------------------------------------------------------- server
    def _start_server(self, p: Played, pod: JSON, container: JSON) -> None:
        # Not Ready until the real server says so (kwok marks pods Ready at once).
        self._set_ready(pod, False)
        args = [self._service_arg(a) for a in container.get("args") or []]
        if self.pod_addresses:
            def flag_value(flag: str, default: int) -> int:
                return int(args[args.index(flag) + 1]) if flag in args else default

            p.port, grpc = flag_value("--http-port", 8080), flag_value("--grpc-port", 8081)
            p.host = self._free_loopback((p.port, grpc))
            self._status_patch(pod, {"podIP": p.host, "podIPs": [{"ip": p.host}]})
        else:
            p.port = free_port()
            grpc = free_port()
        p.grpc_port = grpc
        for flag, value in (
            ("--http-port", p.port),
            ("--grpc-port", grpc),
            ("--host", p.host),
        ):
            if flag in args:
                args[args.index(flag) + 1] = str(value)
            else:
                args += [flag, str(value)]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBEFORGE_")},
            **pod_env(pod, container),
            "KUBEFORGE_TERMINATION_LOG": str(p.dir / "termination-log"),
            "KUBEFORGE_HOST": p.host,
            "OMP_NUM_THREADS": str(self.threads),
        }
        self.say(f"pod {p.namespace}/{p.name}: running the real kubeforge-server on {p.url}")
        with open(p.dir / "log", "ab") as log:
            p.proc = subprocess.Popen(
                [_bin("kubeforge-server"), *args],
                env=env,
                cwd=p.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _follow_server(self, p: Played, pod: JSON) -> None:
        assert p.proc is not None
        code = p.proc.poll()
        if code is not None:
            p.exit_code = code
            msg = _tail(p.dir / "log", 10)[-1024:]
            self._crashloop(pod, code, msg)
            p.done = True
            self.say(f"pod {p.namespace}/{p.name}: server exited {code}")
            return
        if p.ready:
            # A kubelet keeps reporting its pods' readiness: the node-lifecycle-controller marks
            # pods not Ready while a (kwok) node misses heartbeats, and nothing else undoes it.
            if not _pod_ready(pod) and time.monotonic() - p.asserted > 2:
                self._set_ready(pod, True)
                p.asserted = time.monotonic()
            return
        try:
            with urllib.request.urlopen(f"http://{p.url}/v2/health/ready", timeout=1) as r:
                ok = r.status == 200
        except OSError:
            ok = False
        if ok:
            self._set_ready(pod, True)
            p.ready = True
            p.ready_seconds = time.monotonic() - p.started
            self.say(f"pod {p.namespace}/{p.name}: server ready ({p.ready_seconds:.1f}s)")

    # ---------------------------------------------------------------------------- kubelet
    def _status_patch(self, pod: JSON, status: JSON) -> None:
        meta = pod["metadata"]
        self.client.patch(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": status},
        )

    def _set_ready(self, pod: JSON, ready: bool) -> None:
        self._status_patch(pod, readiness_status(pod, ready))

    def _terminate(self, pod: JSON, phase: str, code: int, reason: str, message: str) -> None:
        self._status_patch(pod, terminated_status(pod, phase, code, reason, message))

    def _crashloop(self, pod: JSON, code: int, message: str) -> None:
        now = timestamp_now()
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 1,
                "started": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                "lastState": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Error",
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for c in pod["spec"]["containers"]
        ]
        self._status_patch(pod, {"containerStatuses": statuses})
        self._set_ready(
            self.client.get(
                f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
            ),
            False,
        )

    def _kill(self, p: Played) -> None:
        proc = p.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _prestop_sleep(container: JSON, most: float = 5.0) -> float:
    seconds = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {})
    return min(most, float((seconds or {}).get("seconds") or 0))


def _pod_ready(pod: JSON) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
