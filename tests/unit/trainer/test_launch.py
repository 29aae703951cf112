"""kubeforge-launch: torchrun that keeps the exit codes 2 (bad config) and 3 (stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kubeforge_trainer.launch import combined_exit_code


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([1, 2], 2), ([3, 1], 3), ([143, 1], 143), ([1, 1], 1), ([-15], 143), ([3, 3], 3), ([], 0)],
)
def test_combined_exit_code(codes: list[int], expected: int) -> None:
    assert combined_exit_code(codes) == expected


def test_bad_job_exits_2_before_any_worker_starts(tmp_path: object) -> None:
    job = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": "bad"},
           "spec": {"model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"},
                    "resources": {"nodes": 0}}}
    env = {**os.environ, "KUBEFORGE_JOB": json.dumps(job)}
    r = subprocess.run(
        [sys.executable, "-m", "kubeforge_trainer.launch", "--standalone", "--nproc-per-node", "2",
         "--no-python", "kubeforge-trainer"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "spec.resources.nodes" in r.stderr
