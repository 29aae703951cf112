"""The built-in trainer: recipes, output contract, bad config, resume, SIGTERM, DDP, stop."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from kubeforge_trainer import storage  # noqa: E402
from kubeforge_trainer.config import ConfigError, resolve  # noqa: E402
from trainer_support import Run, job, popen_trainer  # noqa: E402


@pytest.mark.parametrize(
    ("recipe", "dataset", "hp", "check"),
    [
        ("mlp-classifier", "builtin://digits", {"epochs": 3}, lambda m: m["val_accuracy"] > 0.9),
        (
            "cnn-classifier",
            "builtin://digits",
            {"epochs": 4, "channels": [8, 16], "hidden": [32], "lr": 0.005},
            lambda m: m["val_accuracy"] > 0.9,
        ),
        (
            "mlp-classifier",
            "builtin://iris",
            {"epochs": 30, "batch_size": 16},
            lambda m: m["val_accuracy"] > 0.8,
        ),  # majority class: ~0.33
        (
            "mlp-regressor",
            "builtin://diabetes",
            {"epochs": 20, "batch_size": 32},
            lambda m: m["val_r2"] > 0.2,
        ),  # predicting the mean: r2 = 0
    ],
    ids=["mlp-digits", "cnn-digits", "mlp-iris", "mlp-regressor-diabetes"],
)
def test_recipe_beats_baseline(tmp_path: Path, run_inprocess, recipe, dataset, hp, check) -> None:
    r = run_inprocess(tmp_path, job(tmp_path, recipe=recipe, dataset=dataset, hp=hp))
    assert r.rc == 0
    m = r.metrics
    assert check(m), m
    for key in ("train_loss", "val_loss", "onnx_max_abs_diff"):
        assert key in m
    assert ("val_mse" in m) == (recipe == "mlp-regressor")
    assert ("val_accuracy" in m) == (recipe != "mlp-regressor")
    # output contract
    out = tmp_path / "out"
    assert (out / "model.onnx").is_file() and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "metrics.json").read_text()) == r.termination
    arts = r.termination["artifacts"]
    assert arts["model"] == f"file://{out}/model.onnx"
    assert arts["checkpoint"] == f"file://{out}/checkpoint.pt"
    blob = (out / "model.onnx").read_bytes()
    assert arts["sha256"] == storage.sha256(blob) and arts["bytes"] == len(blob)
    assert len(json.dumps(r.termination)) < 4096
    # one progress report per epoch
    assert [p["epoch"] for p in r.progress] == list(range(1, hp["epochs"] + 1))
    assert all({"seq", "step", "epoch", "metrics", "time"} <= set(p) for p in r.progress)


def test_onnx_parity_and_dynamic_batch(tmp_path: Path, run_inprocess) -> None:
    doc = job(tmp_path, hp={"epochs": 1})
    doc["spec"]["output"]["onnx"] = {"opset": 17, "dynamicBatch": True}
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0 and r.metrics["onnx_max_abs_diff"] < 1e-4
    import onnx

    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert model.opset_import[0].version == 17
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    for n in (1, 7):
        assert sess.run(None, {"input": x[:n]})[0].shape == (n, 10)
    # the torch model in the checkpoint agrees with ONNX on raw features
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1


def test_parity_failure_fails_the_job(
    tmp_path: Path, run_inprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX Runtime can match torch bit for bit on some CPUs (diff 0.0 passes any tolerance):
    # a parity check that measures a difference past the tolerance must fail the job.
    from kubeforge_trainer import train

    monkeypatch.setattr(train, "parity", lambda *_args, **_kw: 0.5)
    r = run_inprocess(tmp_path, job(tmp_path, hp={"epochs": 1, "onnx_tolerance": 1e-3}))
    assert r.rc == 1
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hyperparameters": {"lr": -1}}, "spec.hyperparameters.lr"),
        ({"hyperparameters": {"epochs": "many"}}, "spec.hyperparameters.epochs"),
        ({"hyperparameters": {"optimizer": "lbfgs"}}, "spec.hyperparameters.optimizer"),
        ({"hyperparameters": {"hidden": [0]}}, "spec.hyperparameters.hidden"),
        ({"model": {"recipe": "transformer"}}, "spec.model.recipe"),
        ({"dataset": {"uri": "builtin://imagenet"}}, "spec.dataset.uri"),
        ({"dataset": {"uri": "file:///nonexistent/data.csv"}}, "spec.dataset.uri"),
        ({"checkpoint": {"everyEpochs": -1}}, "spec.checkpoint.everyEpochs"),
    ],
)
def test_bad_config_exits_2(tmp_path: Path, run_inprocess, capsys, change, field) -> None:
    doc = job(tmp_path)
    for key, value in change.items():
        if key == "hyperparameters":
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 2
    err = capsys.readouterr().err
    assert "bad job document" in err and field in err


def test_bad_documents_exit_2(tmp_path: Path, capsys) -> None:
    from kubeforge_trainer import cli

    (tmp_path / "bad.yaml").write_text("kind: TrainingJob\nspec: [1, 2\n")
    assert cli.run(["--job", str(tmp_path / "bad.yaml")]) == 2
    assert cli.run(["--job", str(tmp_path / "missing.yaml")]) == 2
    doc = job(tmp_path)
    del doc["spec"]["model"]
    with pytest.raises(ConfigError, match=r"spec\.model"):
        resolve(doc)


def test_csv_parquet_and_pvc(tmp_path: Path, run_inprocess, monkeypatch) -> None:
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].map({0: "a", 1: "b", 2: "c"})
    frame = frame[["label", *[c for c in frame.columns if c != "label"]]]  # label not last
    pvc = tmp_path / "pvc" / "data"
    pvc.mkdir(parents=True)
    frame.to_csv(pvc / "wine.csv", index=False)
    frame.to_parquet(pvc / "wine.parquet")
    monkeypatch.setenv("KUBEFORGE_PVC_ROOT", str(tmp_path / "pvc"))
    assert storage.pvc_path("pvc://data/wine.csv") == str(pvc / "wine.csv")
    assert storage.pvc_path("pvc://claim/a/b", root="/mnt/pvc") == "/mnt/pvc/claim/a/b"
    for uri in ("pvc://data/wine.csv", f"file://{pvc}/wine.parquet"):
        r = run_inprocess(
            tmp_path / uri[-7:],
            job(
                tmp_path / uri[-7:],
                dataset=uri,
                hp={"epochs": 15, "batch_size": 16, "target": "label"},
            ),
        )
        assert r.rc == 0 and r.metrics["val_accuracy"] > 0.85, r.metrics


def test_output_uri_env_and_default(tmp_path: Path, run_inprocess, monkeypatch) -> None:
    doc = job(tmp_path, hp={"epochs": 1}, name="named")
    r = run_inprocess(tmp_path, doc, env={"KUBEFORGE_OUTPUT_URI": f"file://{tmp_path}/env-out"})
    assert r.rc == 0 and (tmp_path / "env-out" / "model.onnx").exists()
    del doc["spec"]["output"]
    monkeypatch.chdir(tmp_path)
    cfg = resolve(doc, env={})
    assert cfg.output_uri == "file://./kubeforge-output/named"


def test_stop_request_exits_3(tmp_path: Path, run_inprocess) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "stop").write_text("pruned")
    r = run_inprocess(tmp_path, job(tmp_path, hp={"epochs": 5}))
    assert r.rc == 3
    assert len(r.progress) == 1 and r.metrics["epoch"] == 1  # stopped after the first report


# ------------------------------------------------------------------- resume, SIGTERM, DDP
RESUME_HP = {"epochs": 8, "batch_size": 128, "hidden": [32], "dropout": 0.1}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, float]:
    """The uninterrupted run the resumed ones must match."""
    from kubeforge_trainer import _api, cli
    from trainer_support import channel_env

    tmp = tmp_path_factory.mktemp("ref")
    mp = pytest.MonkeyPatch()
    try:
        for k, v in channel_env(tmp).items():
            mp.setenv(k, v)
        path = tmp / "job.json"
        path.write_text(json.dumps(job(tmp, hp=RESUME_HP)))
        _api._state.terminated.clear()
        assert cli.run(["--job", str(path)]) == 0
    finally:
        mp.undo()
    return Run(tmp, 0).metrics


def _wait_for_progress(tmp: Path, proc, epoch: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    prog = tmp / "progress.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        if prog.exists() and len(prog.read_text().splitlines()) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError("no progress")


def _same(
    a: dict[str, float],
    b: dict[str, float],
    keys=("train_loss", "val_loss", "val_accuracy"),
    tol: float = 1e-5,
) -> None:
    for key in keys:
        assert abs(a[key] - b[key]) <= tol, (key, a[key], b[key])


@pytest.mark.slow  # subprocesses: torch import dominates
def test_killed_then_rerun_resumes(tmp_path: Path, run_inprocess, reference) -> None:
    doc = job(tmp_path, hp=RESUME_HP)
    proc = popen_trainer(tmp_path, doc, env={"KUBEFORGE_TEST_STEP_DELAY": "0.05"})
    _wait_for_progress(tmp_path, proc, 2)
    proc.kill()
    proc.wait()
    state = torch.load(
        io.BytesIO((tmp_path / "out" / "checkpoint.pt").read_bytes()), weights_only=False
    )
    # Killed mid-run: the last checkpoint may trail the last progress report by an epoch.
    assert 1 <= state["epoch"] < RESUME_HP["epochs"]
    (tmp_path / "progress.jsonl").unlink()
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0
    assert r.progress[0]["epoch"] == state["epoch"] + 1  # did not start over
    _same(r.metrics, reference)


@pytest.mark.slow  # subprocesses: torch import dominates
def test_sigterm_leaves_usable_checkpoint(tmp_path: Path, run_inprocess, reference) -> None:
    doc = job(tmp_path, hp=RESUME_HP)
    doc["spec"]["checkpoint"] = {"everyEpochs": 0, "resume": True}  # only SIGTERM checkpoints
    proc = popen_trainer(tmp_path, doc, env={"KUBEFORGE_TEST_STEP_DELAY": "0.1"})
    _wait_for_progress(tmp_path, proc, 1)
    time.sleep(0.25)  # mid-epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert b"checkpoint saved" in err
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] >= 1 and state["global_step"] > 0
    (tmp_path / "progress.jsonl").unlink()
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0
    _same(r.metrics, reference, tol=1e-4)


@pytest.mark.slow  # subprocesses: torch import dominates
def test_torchrun_two_processes_match_one(tmp_path: Path, run_inprocess) -> None:
    hp = {"epochs": 3, "batch_size": 64, "hidden": [32], "lr": 0.01}
    one = run_inprocess(tmp_path / "one", job(tmp_path / "one", hp=hp))
    proc = popen_trainer(tmp_path / "two", job(tmp_path / "two", hp=hp), torchrun_procs=2)
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    two = Run(tmp_path / "two", 0)
    assert one.rc == 0
    _same(one.metrics, two.metrics, tol=2e-3)
    assert len(two.progress) == 3  # only rank 0 reports


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_recipe(tmp_path: Path, run_inprocess) -> None:
    r = run_inprocess(tmp_path, job(tmp_path, hp={"epochs": 3, "device": "cuda"}))
    assert r.rc == 0 and r.metrics["val_accuracy"] > 0.9
    assert r.metrics["onnx_max_abs_diff"] < 1e-3


def test_serving_cost_in_final_metrics(tmp_path: Path, run_inprocess) -> None:
    r = run_inprocess(tmp_path, job(tmp_path, hp={"epochs": 1, "hidden": [32]}))
    assert r.rc == 0
    m, arts = r.metrics, r.termination["artifacts"]
    assert m["onnx_bytes"] == arts["bytes"]
    # digits: 64 features, 10 classes; the input standardization (mean, std) is stored too
    assert m["onnx_params"] == 64 * 32 + 32 + 32 * 10 + 10 + 2 * 64
    assert 0 < m["onnx_latency_ms"] < 50


@pytest.mark.parametrize("mode", ["dynamic-int8", "static-int8"])
def test_quantized_model_beside_the_float_one(tmp_path: Path, run_inprocess, mode: str) -> None:
    """The int8 model is written, named in the artifacts, evaluated and measured; on digits its
    accuracy stays within 2 points of the float model's (the documented tolerance)."""
    doc = job(tmp_path, hp={"epochs": 3, "hidden": [64]})
    quant: dict[str, object] = {"mode": mode}
    if mode == "static-int8":
        quant["calibration"] = {"samples": 64}
    doc["spec"]["output"]["onnx"] = {"quantize": quant}
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0
    m, arts = r.metrics, r.termination["artifacts"]
    out = tmp_path / "out"
    blob = (out / "model.int8.onnx").read_bytes()
    assert arts["modelInt8"] == f"file://{out}/model.int8.onnx"
    assert arts["sha256Int8"] == storage.sha256(blob) and arts["bytesInt8"] == len(blob)
    assert arts["model"] == f"file://{out}/model.onnx"  # the float model stays
    assert m["int8_onnx_bytes"] == len(blob) < 0.5 * m["onnx_bytes"]
    assert m["int8_onnx_latency_ms"] > 0 and m["int8_onnx_params"] >= m["onnx_params"]
    assert abs(m["int8_val_accuracy_delta"]) <= 0.02
    assert m["int8_val_accuracy"] == pytest.approx(
        m["val_accuracy"] + m["int8_val_accuracy_delta"], abs=2e-3
    )
    # the int8 model really is int8 and really answers
    sess = ort.InferenceSession(blob)
    x = np.zeros((3, 64), dtype=np.float32)
    assert sess.run(None, {"input": x})[0].shape == (3, 10)
    import onnx

    types = {i.data_type for i in onnx.load_from_string(blob).graph.initializer}
    assert onnx.TensorProto.INT8 in types
    assert len(json.dumps(r.termination)) < 4096


def test_quantized_regressor_reports_its_metrics(tmp_path: Path, run_inprocess) -> None:
    doc = job(
        tmp_path,
        recipe="mlp-regressor",
        dataset="builtin://diabetes",
        hp={"epochs": 5, "batch_size": 32},
    )
    doc["spec"]["output"]["onnx"] = {"quantize": {"mode": "dynamic-int8"}}
    r = run_inprocess(tmp_path, doc)
    assert r.rc == 0
    for name in ("val_mse", "val_mae", "val_r2"):
        assert f"int8_{name}" in r.metrics and f"int8_{name}_delta" in r.metrics
    assert "int8_val_accuracy" not in r.metrics


def test_bad_quantize_mode_exits_2(tmp_path: Path, run_inprocess) -> None:
    doc = job(tmp_path, hp={"epochs": 1})
    doc["spec"]["output"]["onnx"] = {"quantize": {"mode": "int4"}}
    assert run_inprocess(tmp_path, doc).rc == 2
