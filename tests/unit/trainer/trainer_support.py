"""Helpers for the trainer tests: tiny jobs, in-process and subprocess runs, one CPU thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - the trainer extra is not installed
    torch = None  # type: ignore[assignment]

SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def job(
    tmp: Path,
    *,
    recipe: str | None = "mlp-classifier",
    dataset: str = "builtin://digits",
    hp: dict[str, Any] | None = None,
    name: str = "t",
    script: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    model: dict[str, Any] = {"script": {"path": script}} if script else {"recipe": recipe}
    doc = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "dataset": {"uri": dataset},
            "hyperparameters": {
                "lr": 0.01,
                "epochs": 2,
                "batch_size": 64,
                "hidden": [32],
                "seed": 0,
                **(hp or {}),
            },
            "output": {"uri": f"file://{tmp / 'out'}"},
            **spec,
        },
    }
    return doc


def write_job(tmp: Path, doc: dict[str, Any], name: str = "job.json") -> Path:
    path = tmp / name
    path.write_text(json.dumps(doc))
    return path


class Run:
    def __init__(self, tmp: Path, rc: int) -> None:
        self.tmp = tmp
        self.rc = rc
        term = tmp / "term.json"
        self.termination = json.loads(term.read_text()) if term.exists() else None
        prog = tmp / "progress.jsonl"
        self.progress = (
            [json.loads(line) for line in prog.read_text().splitlines()] if prog.exists() else []
        )

    @property
    def metrics(self) -> dict[str, float]:
        assert self.termination is not None, "no termination message"
        return self.termination["metrics"]


def channel_env(tmp: Path) -> dict[str, str]:
    return {
        "KUBEFORGE_TERMINATION_LOG": str(tmp / "term.json"),
        "KUBEFORGE_PROGRESS_FILE": str(tmp / "progress.jsonl"),
        "KUBEFORGE_STOP_FILE": str(tmp / "stop"),
    }


@pytest.fixture
def run_inprocess(monkeypatch: pytest.MonkeyPatch):
    """Run kubeforge-trainer in this process (torch already imported: fast)."""
    from kubeforge_trainer import _api, cli

    def _run(tmp: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> Run:
        tmp.mkdir(parents=True, exist_ok=True)
        for key in (
            "KUBERNETES_SERVICE_HOST",
            "KUBEFORGE_POD_NAME",
            "KUBEFORGE_OUTPUT_URI",
            "KUBEFORGE_JOB",
            "RANK",
            "WORLD_SIZE",
        ):
            monkeypatch.delenv(key, raising=False)
        for key, value in {**channel_env(tmp), **(env or {})}.items():
            monkeypatch.setenv(key, value)
        _api._state.terminated.clear()
        rc = cli.run(["--job", str(write_job(tmp, doc))])
        _api._state.terminated.clear()
        return Run(tmp, rc)

    return _run


def popen_trainer(
    tmp: Path, doc: dict[str, Any], env: dict[str, str] | None = None, torchrun_procs: int = 0
) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_job(tmp, doc)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBERNETES_SERVICE_HOST", "KUBEFORGE_POD_NAME", "KUBEFORGE_JOB")
    }
    full_env.update(SUBPROCESS_ENV)
    full_env.update(channel_env(tmp))
    full_env.update(env or {})
    if torchrun_procs:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(torchrun_procs),
            "-m",
            "kubeforge_trainer.cli",
            "--job",
            str(path),
        ]
    else:
        cmd = [sys.executable, "-m", "kubeforge_trainer.cli", "--job", str(path)]
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
