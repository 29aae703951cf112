"""The user-script path: reporting API, final metrics, should_stop, model.onnx from the script."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from trainer_support import job

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "scripts" / "train_custom.py"


def test_script_reports_and_final_metrics(tmp_path: Path, run_inprocess) -> None:
    doc = job(tmp_path, script=str(EXAMPLE), hp={"epochs": 3, "lr": 0.5, "write_model": True})
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0
    assert [p["step"] for p in r.progress] == [1, 2, 3]
    assert r.metrics == pytest.approx({"loss": 0.125, "accuracy": 1 - 0.125 / 2})
    arts = r.termination["artifacts"]
    assert arts["model"].endswith("/out/model.onnx") and arts["bytes"] > 0
    assert (tmp_path / "out" / "model.onnx").exists()


def test_script_honours_should_stop(tmp_path: Path, run_inprocess) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "stop").write_text("pruned")
    r = run_inprocess(tmp_path, job(tmp_path, script=str(EXAMPLE), hp={"epochs": 10}))
    assert r.rc == 3
    assert len(r.progress) == 1 and "loss" in r.metrics


def test_script_exit_code_and_missing_path(tmp_path: Path, run_inprocess) -> None:
    script = tmp_path / "fail.py"
    tmp_path.mkdir(exist_ok=True)
    script.write_text(
        "from kubeforge_trainer import report\nreport(1, loss=2.0)\nraise SystemExit(4)\n"
    )
    r = run_inprocess(tmp_path, job(tmp_path, script=str(script)))
    assert r.rc == 4 and r.metrics == {"loss": 2.0}
    r = run_inprocess(tmp_path, job(tmp_path, script=str(tmp_path / "nope.py")))
    assert r.rc == 2


def test_script_exception_exits_1(tmp_path: Path, run_inprocess) -> None:
    script = tmp_path / "boom.py"
    tmp_path.mkdir(exist_ok=True)
    script.write_text("raise RuntimeError('boom')\n")
    assert run_inprocess(tmp_path, job(tmp_path, script=str(script))).rc == 1
