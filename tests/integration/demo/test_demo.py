"""`make demo` end to end, reduced (`--quick`: fewer epochs and trials, one server replica).

Starts its own local cluster (the demo's own code path), installs the chart with the real helm,
runs the real operator, trainer and server, and checks the answers came back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from kubeforge_cluster import binaries

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_quick_end_to_end() -> None:
    try:
        binaries.require_binaries((*binaries.CORE_BINARIES, "helm"))
    except binaries.MissingBinaries as e:
        if os.environ.get("KUBEFORGE_REQUIRE_CLUSTER"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    t = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubeforge_cluster.demo",
            "--quick",
            "--no-color",
            "--name",
            f"demo-test-{os.getpid()}",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    took = time.monotonic() - t
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "demo succeeded" in out
    assert re.search(r"TrainingJob\s+digits-mlp\s+Succeeded\s+Healthy", out), out[-4000:]
    assert re.search(r"TuningStudy\s+digits-accuracy-latency\s+Succeeded\s+Healthy", out), out[
        -4000:
    ]
    # the study's chosen point is served by the ModelDeployment promote names
    assert re.search(r"ModelDeployment digits-chosen Ready, serving file://\S+/model\.onnx", out), (
        out[-4000:]
    )
    assert re.search(r"ModelDeployment\s+digits-mlp\s+Ready\s+Healthy", out), out[-4000:]
    answers = re.search(r"answers: ([0-9 ]+)\n", out)
    truth = re.search(r"truth:\s+([0-9 ]+)\n", out)
    assert answers and truth, out[-4000:]
    right = sum(
        a == b for a, b in zip(answers.group(1).split(), truth.group(1).split(), strict=True)
    )
    assert right >= 6, (answers.group(1), truth.group(1))
    print(f"demo --quick took {took:.0f}s")
