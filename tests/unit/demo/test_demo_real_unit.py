"""The real-pod demo's objects and image staleness rule, without a node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubeforge_cluster import demo_real
from kubeforge_cluster.demo import documents


def test_real_documents_fit_one_two_core_node() -> None:
    tj, ts, md = demo_real.real_documents(quick=False)
    assert tj["spec"]["hyperparameters"]["epochs"] >= 8  # enough for accuracy > 0.9
    assert ts["spec"]["maxTrials"] == 2 and ts["spec"]["parallelism"] == 2
    assert "earlyStopping" not in ts["spec"]
    trial = ts["spec"]["trialTemplate"]["spec"]
    assert trial["resources"] == {"cpu": "400m", "memory": "1Gi"}
    assert md["spec"]["replicas"] == 1 and "autoscaling" not in md["spec"]
    assert md["spec"]["model"] == {"fromTrainingJob": tj["metadata"]["name"]}
    # the chosen point is shown, not served (no second server on the node)
    assert "modelDeployment" not in ts["spec"]["promote"]
    assert ts["spec"]["promote"]["select"]["subjectTo"]["onnx_latency_ms"] == {"max": 5.0}
    # the kwok demo's documents are not changed by the real demo's copy
    _, k_ts, k_md = documents(quick=False)
    assert k_ts["spec"]["maxTrials"] == 4 and k_md["spec"]["replicas"] == 2
    assert k_ts["spec"]["promote"]["modelDeployment"]
    assert k_ts["spec"]["promote"]["select"]["subjectTo"]["onnx_latency_ms"] == {"max": 1.0}


def test_stale_images_follow_each_image_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path
    for rel in (
        "operator/kubeforge/api/x.py",
        "operator/kubeforge/main.py",
        "trainer-image/t.py",
        "server-image/s.py",
        "pyproject.toml",
        "constraints.txt",
        "cluster/images/build.py",
    ):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
        os.utime(repo / rel, (1000, 1000))
    out = repo / "out"
    out.mkdir()
    monkeypatch.setattr(demo_real, "REPO", repo)
    monkeypatch.setattr(demo_real, "IMAGES_OUT", out)
    assert demo_real.stale_images() == ["operator", "trainer", "server"]  # missing
    for n in demo_real.IMAGES:
        (out / f"kubeforge-{n}.oci.tar").write_text("")
        os.utime(out / f"kubeforge-{n}.oci.tar", (2000, 2000))
    assert demo_real.stale_images() == []
    os.utime(repo / "operator/kubeforge/main.py", (3000, 3000))  # operator-only change
    assert demo_real.stale_images() == ["operator"]
    os.utime(repo / "operator/kubeforge/api/x.py", (3000, 3000))  # the shared API models
    assert demo_real.stale_images() == ["operator", "trainer", "server"]
