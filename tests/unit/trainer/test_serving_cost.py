"""Serving cost of an exported model: kubeforge_trainer.report.cost and `kubeforge-report --onnx`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubeforge_trainer.report import build as zipbuild
from kubeforge_trainer.report.cli import run
from kubeforge_trainer.report.cost import CostUnavailable, cpu_quota, latency_in_turns, measure

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
np = pytest.importorskip("numpy")

from kubeforge_trainer.export import export_onnx  # noqa: E402


def _mlp_onnx(tmp: Path) -> tuple[Path, int]:
    """A 64-32-10 MLP exported to tmp/model.onnx, and its parameter count."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    blob = export_onnx(model, np.zeros((2, 64), np.float32), opset=17, dynamic_batch=True)
    path = tmp / "model.onnx"
    path.write_bytes(blob)
    return path, sum(p.numel() for p in model.parameters())


def test_measure_counts_params_and_bytes(tmp_path: Path) -> None:
    path, params = _mlp_onnx(tmp_path)
    figures = measure(path, threads=1)
    assert figures["onnx_params"] == params == 64 * 32 + 32 + 32 * 10 + 10
    assert figures["onnx_bytes"] == path.stat().st_size
    assert 0 < figures["onnx_latency_ms"] < 50
    # the same from bytes, with a real sample and another prefix
    again = measure(path.read_bytes(), np.ones((5, 64)), prefix="int8_onnx_", threads=1)
    assert set(again) == {"int8_onnx_latency_ms", "int8_onnx_bytes", "int8_onnx_params"}
    assert again["int8_onnx_params"] == params


def test_latency_in_turns_orders_models_by_their_cost(tmp_path: Path) -> None:
    """Models measured taking turns keep their order: a 64-1024-1024-10 MLP is slower than a
    64-32-10 one (about 40x the multiply-adds), whatever the machine does meanwhile."""
    small, _ = _mlp_onnx(tmp_path)
    torch.manual_seed(0)
    wide = torch.nn.Sequential(
        torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    big = export_onnx(wide, np.zeros((2, 64), np.float32), opset=17, dynamic_batch=True)
    small_ms, big_ms = latency_in_turns([small.read_bytes(), big], np.ones((1, 64)), threads=1)
    assert 0 < small_ms < big_ms
    with pytest.raises(CostUnavailable, match="cannot load"):
        latency_in_turns([small.read_bytes(), b"not a model"])


def test_missing_onnxruntime_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _mlp_onnx(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(CostUnavailable, match=r"'onnxruntime'.*pip install onnxruntime"):
        measure(path)


def test_unreadable_model_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CostUnavailable, match="cannot read"):
        measure(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CostUnavailable, match="cannot load"):
        measure(bad)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("50000 100000\n", 1), ("250000 100000\n", 2), ("max 100000\n", None), (None, None)],
    ids=["half-cpu", "2.5-cpus", "unlimited", "no-cgroup"],
)
def test_cpu_quota_follows_cgroup(
    tmp_path: Path, cpu_max: str | None, expected: int | None
) -> None:
    import os

    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    pinned = len(os.sched_getaffinity(0))
    assert cpu_quota(str(tmp_path)) == (pinned if expected is None else min(expected, pinned))


def _env(tmp: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST",)}
    env.update(
        KUBEFORGE_TERMINATION_LOG=str(tmp / "term.json"),
        KUBEFORGE_PROGRESS_FILE=str(tmp / "progress.jsonl"),
        KUBEFORGE_STOP_FILE=str(tmp / "stop"),
    )
    return env


def test_report_adds_serving_cost_after_success(tmp_path: Path) -> None:
    path, params = _mlp_onnx(tmp_path)
    script = tmp_path / "s.py"
    script.write_text("print('epoch=1 accuracy=0.9')\n")
    rc = run(["--onnx", str(path), "--", sys.executable, str(script)], env=_env(tmp_path))
    assert rc == 0
    metrics = json.loads((tmp_path / "term.json").read_text())["metrics"]
    assert metrics["accuracy"] == 0.9 and metrics["onnx_params"] == params
    assert metrics["onnx_latency_ms"] > 0


def test_report_skips_cost_when_command_fails_or_model_absent(tmp_path: Path, capfd) -> None:
    script = tmp_path / "s.py"
    script.write_text("print('accuracy=0.5')\n")
    absent = tmp_path / "none.onnx"
    assert run(["--onnx", str(absent), "--", sys.executable, str(script)], env=_env(tmp_path)) == 0
    assert "no such file; no serving cost reported" in capfd.readouterr().err
    assert json.loads((tmp_path / "term.json").read_text())["metrics"] == {"accuracy": 0.5}
    path, _ = _mlp_onnx(tmp_path)
    fail = [sys.executable, "-c", "print('accuracy=0.4'); raise SystemExit(1)"]
    assert run(["--onnx", str(path), "--", *fail], env=_env(tmp_path)) == 1
    assert json.loads((tmp_path / "term.json").read_text())["metrics"] == {"accuracy": 0.4}


def test_zipapp_measure_only(tmp_path: Path) -> None:
    """`python3 kubeforge-report.pyz --onnx MODEL` prints the figures; where onnxruntime is
    missing it says so and exits 1."""
    path, params = _mlp_onnx(tmp_path)
    pyz = zipbuild.build(tmp_path / "kubeforge-report.pyz")
    with_ort = subprocess.run(
        [sys.executable, str(pyz), "--onnx", str(path)], capture_output=True, text=True, timeout=60
    )
    assert with_ort.returncode == 0, with_ort.stderr
    assert json.loads(with_ort.stdout)["onnx_params"] == params
    # -S -I: no site-packages, so no onnxruntime (what a bare user image looks like)
    bare = subprocess.run(
        [sys.executable, "-S", "-I", str(pyz), "--onnx", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 1
    assert "needs the Python package 'onnxruntime'" in bare.stderr


def test_report_measures_the_model_the_command_wrote(tmp_path: Path) -> None:
    """No --onnx: the model.onnx written into a local KUBEFORGE_OUTPUT_URI is measured."""
    src, params = _mlp_onnx(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "s.py"
    script.write_text(
        f"import shutil; shutil.copy({str(src)!r}, {str(out / 'model.onnx')!r})\n"
        "print('accuracy=0.7')\n"
    )
    env = {**_env(tmp_path), "KUBEFORGE_OUTPUT_URI": f"file://{out}"}
    assert run(["--", sys.executable, str(script)], env=env) == 0
    term = json.loads((tmp_path / "term.json").read_text())
    assert term["artifacts"]["model"] == f"file://{out}/model.onnx"
    assert term["metrics"]["onnx_params"] == params
    assert term["metrics"]["onnx_bytes"] == term["artifacts"]["bytes"]
