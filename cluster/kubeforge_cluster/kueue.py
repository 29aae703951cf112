"""Run the real Kueue controller (v0.17.0) on the host against a LocalCluster.

Usage: ``k = cluster.start_kueue()`` (idempotent per cluster); ``k.stop()`` or stopping the
cluster ends it. CRDs and the ``kueue.x-k8s.io`` + ``batch`` webhooks are installed; the
webhooks point at ``https://127.0.0.1:<port>`` with the cluster CA as caBundle.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import binaries, pki

if TYPE_CHECKING:
    from .cluster import LocalCluster
    from .procs import Proc

#: Trap: with internal cert management off, kueue insists on a metrics cert at this fixed path.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}


class Kueue:
    def __init__(
        self,
        cluster: LocalCluster,
        *,
        frameworks: tuple[str, ...] = ("batch/job",),
        manage_jobs_without_queue_name: bool = False,
    ) -> None:
        self.cluster = cluster
        self.frameworks = frameworks
        self.manage_jobs_without_queue_name = manage_jobs_without_queue_name
        self.dir = cluster.run_dir / "kueue"
        self.ports: dict[str, int] = {}
        self.proc: Proc | None = None

    def start(self, timeout: float = 60) -> Kueue:
        from .cluster import StartupError, free_port
        from .kubectlops import crd_name

        t0 = time.monotonic()
        c = self.cluster
        exe = binaries.find_binary("kueue", c.bin_dir)
        if exe is None:
            raise binaries.MissingBinaries(["kueue"], c.bin_dir or binaries.default_bin_dir())
        data = binaries.data_dir(c.bin_dir) / "kueue-manifests"
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in ("webhook", "metrics", "health"):
            self.ports[p] = free_port()

        # certs: webhook serving cert from the cluster CA (SAN 127.0.0.1); metrics cert (trap)
        ca = pki.CA(key=c._ca.key, cert=c._ca.cert, cert_path=c.pki_dir / "ca.crt")
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        crt, key = ca.issue(
            certs / "tls", "kueue-webhook", dns=("localhost",), ips=("127.0.0.1",), server=True
        )
        self._ensure_metrics_cert(ca)

        # CRDs + namespace
        crd_files = sorted((data / "crd").glob("*.yaml"))
        c.apply_files(crd_files)
        c.wait_crds_established([crd_name(f) for f in crd_files], timeout=60)
        if not c._exists("/api/v1/namespaces/kueue-system"):
            c.client.post(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}},
            )

        cfg = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "manageJobsWithoutQueueName": self.manage_jobs_without_queue_name,
            "leaderElection": {"leaderElect": False},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}"},
            "webhook": {"host": "127.0.0.1", "port": self.ports["webhook"], "certDir": str(certs)},
            "internalCertManagement": {"enable": False},
            "clientConnection": {"qps": 200, "burst": 400},
            "integrations": {"frameworks": list(self.frameworks)},
            "featureGates": {"VisibilityOnDemand": False},
        }
        cfg_path = self.dir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc = c._spawn(
            "kueue", [str(exe), f"--config={cfg_path}", f"--kubeconfig={c.kubeconfig}"]
        )
        c._wait(
            "kueue /readyz",
            lambda: _get(f"http://127.0.0.1:{self.ports['health']}/readyz") == b"ok",
            "kueue",
            timeout=timeout,
        )
        self._register_webhooks(data / "webhook" / "manifests.yaml", ca.pem)
        # the webhook server answers once it has its cert; wait so the first create works
        insecure = ssl._create_unverified_context()
        c._wait(
            "kueue webhook server",
            lambda: _get(f"https://127.0.0.1:{self.ports['webhook']}/", insecure) is not None,
            "kueue",
        )
        if not (crt.exists() and key.exists()):
            raise StartupError("kueue certs vanished")
        c._say(f"kueue ready in {time.monotonic() - t0:.1f}s")
        return self

    def _ensure_metrics_cert(self, ca: pki.CA) -> None:
        crt, key = METRICS_CERT_DIR / "tls.crt", METRICS_CERT_DIR / "tls.key"
        if crt.is_file() and key.is_file():
            return
        try:
            METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
            ca.issue(METRICS_CERT_DIR / "tls", "kueue-metrics", ips=("127.0.0.1",), server=True)
        except OSError as e:
            raise PermissionError(
                f"kueue needs a metrics cert at the fixed path {METRICS_CERT_DIR}/tls.{{crt,key}} "
                f"(no flag moves it) and it cannot be written: {e}. Create it once with "
                f"`sudo mkdir -p {METRICS_CERT_DIR}` and make it writable."
            ) from e

    def _register_webhooks(self, manifests: Path, ca_pem: bytes) -> None:
        port = self.ports["webhook"]
        ca_b64 = base64.b64encode(ca_pem).decode()
        client = self.cluster.client
        for doc in yaml.safe_load_all(manifests.read_text()):
            if not doc:
                continue
            kept: list[dict[str, Any]] = []
            for wh in doc.get("webhooks", []):
                groups = {g for r in wh.get("rules", []) for g in r.get("apiGroups", [])}
                if groups & WEBHOOK_GROUPS:
                    path = wh["clientConfig"]["service"]["path"]
                    wh["clientConfig"] = {
                        "url": f"https://127.0.0.1:{port}{path}",
                        "caBundle": ca_b64,
                    }
                    kept.append(wh)
            kind = doc["kind"]
            name = "kueue-" + doc["metadata"]["name"]
            obj = {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": name},
                "webhooks": kept,
            }
            plural = kind.lower() + "s"
            base = f"/apis/admissionregistration.k8s.io/v1/{plural}"
            try:
                existing = client.get(f"{base}/{name}")
                obj["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                client.put(f"{base}/{name}", obj)
            except Exception:
                client.post(base, obj)

    def stop(self) -> None:
        from .procs import terminate

        if self.proc is not None:
            terminate(self.proc)
            if self.proc in self.cluster.procs:
                self.cluster.procs.remove(self.proc)
            self.proc = None
        client = self.cluster.client
        for plural, name in (
            ("mutatingwebhookconfigurations", "kueue-mutating-webhook-configuration"),
            ("validatingwebhookconfigurations", "kueue-validating-webhook-configuration"),
        ):
            with contextlib.suppress(Exception):
                client.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")


def _get(url: str, ctx: ssl.SSLContext | None = None) -> bytes | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())
    except OSError:
        return None
