"""The real helm (v4, and helm3 when built with `cluster/build.py --helm3`) for the chart.

Used by the chart tests and the demo. Binaries come from the same cache as the control plane's
(:mod:`kubeforge_cluster.binaries`), else from PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeforge"


def find_helm(name: str = "helm") -> Path | None:
    """`helm` (v4) or `helm3`: the cache first, then PATH."""
    found = binaries.find_binary(name)
    if found is not None:
        return found
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


class HelmError(RuntimeError):
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr or proc.stdout}"
        )
        self.stderr = proc.stderr
        self.stdout = proc.stdout
        self.returncode = proc.returncode


class Helm:
    """`Helm(kubeconfig=...)("install", ...)` runs helm with its own isolated config dirs."""

    def __init__(
        self,
        binary: Path | str,
        kubeconfig: str | Path | None = None,
        home: Path | None = None,
    ) -> None:
        self.binary = str(binary)
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.home = home

    @property
    def major(self) -> int:
        out = self.run("version", "--short").stdout.strip()
        return int(out.lstrip("v").split(".")[0])

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        if self.home is not None:  # keep helm's cache/config/data out of the user's home
            for var, sub in (
                ("HELM_CACHE_HOME", "cache"),
                ("HELM_CONFIG_HOME", "config"),
                ("HELM_DATA_HOME", "data"),
            ):
                env[var] = str(self.home / sub)
        return env

    def run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            input=input,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise HelmError(args, proc)
        return proc

    __call__ = run

    def template(
        self,
        *extra: str,
        release: str = "kubeforge",
        namespace: str = "kubeforge-system",
        values: dict[str, Any] | None = None,
        chart: Path = CHART,
    ) -> list[dict[str, Any]]:
        """`helm template` → the rendered objects."""
        # A target version, not helm's built-in default (a helm built with plain `go install`
        # reports Kubernetes v1.20, below the chart's kubeVersion).
        args = [
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--kube-version",
            binaries.K8S_VERSION,
            *extra,
        ]
        if values is not None:
            args += ["--values", "-"]
        out = self.run(*args, input=json.dumps(values) if values is not None else None).stdout
        return [d for d in yaml.safe_load_all(out) if d]


def rendered_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's plain `env` values from rendered chart objects."""
    for obj in objects:
        if obj.get("kind") == "Deployment":
            containers = obj["spec"]["template"]["spec"]["containers"]
            op = next(c for c in containers if c["name"] == "operator")
            return {e["name"]: str(e["value"]) for e in op.get("env", []) if "value" in e}
    raise LookupError("no Deployment among the rendered objects")


def cluster_role(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == "ClusterRole" and obj["metadata"]["name"] == name:
            return obj
    raise LookupError(f"no ClusterRole {name}")
