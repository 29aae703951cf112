"""Model loading: folders with external data, pvc:// mapping, fsspec URIs, non-ONNX artefacts,
settings and the cgroup-aware thread default."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kubeforge_server.config import (
    ConfigError,
    ServerConfig,
    cgroup_cpu_limit,
    default_model_name,
    load_config,
)
from kubeforge_server.model import load_model
from kubeforge_server.storage import ModelLoadError, resolve_model, sha256_file

from .conftest import build_mlp, start_server


def cfg(uri: str, tmp: Path, **kw: object) -> ServerConfig:
    return ServerConfig(
        model_uri=uri,
        name=default_model_name(uri),
        intra_op_threads=1,
        model_cache_dir=str(tmp / "cache"),
        pvc_root=str(tmp / "pvc"),
        **kw,
    )  # type: ignore[arg-type]


def test_external_data_folder_loads(tmp_path: Path, reference) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "big-model"
    build_mlp(folder / "model.onnx", external_data=True)
    assert (folder / "weights.bin").stat().st_size > 300_000
    assert (folder / "model.onnx").stat().st_size < 10_000
    model = load_model(cfg(str(folder), tmp_path))
    assert model.name == "big-model"
    assert model.sha256 == sha256_file(folder / "model.onnx")
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(
        model.run({"input": x})[0], reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
    )
    model.warmup(32)


def test_remote_fsspec_folder_fetches_external_data(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    src = tmp_path / "src"
    build_mlp(src / "model.onnx", external_data=True)
    for f in src.iterdir():
        fs.pipe(f"/bucket/m/{f.name}", f.read_bytes())
    fs.pipe("/bucket/m/README.md", b"not needed")
    local = resolve_model(
        "memory://bucket/m/", cache_dir=str(tmp_path / "cache"), pvc_root="/nonexistent"
    )
    assert local.name == "model.onnx" and (local.parent / "weights.bin").exists()
    assert not (local.parent / "README.md").exists()
    model = load_model(cfg("memory://bucket/m/model.onnx", tmp_path))
    assert model.name == "model" and model.inputs[0].shape == (-1, 64)


def test_pvc_uri_maps_to_mount(tmp_path: Path) -> None:
    build_mlp(tmp_path / "pvc" / "models-claim" / "runs" / "7" / "model.onnx")
    c = cfg("pvc://models-claim/runs/7", tmp_path)
    assert resolve_model(c.model_uri, cache_dir=c.model_cache_dir, pvc_root=c.pvc_root) == (
        tmp_path / "pvc" / "models-claim" / "runs" / "7" / "model.onnx"
    )
    assert load_model(c).name == "7"
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model("pvc://models-claim/none", cache_dir="", pvc_root=str(tmp_path / "pvc"))


@pytest.mark.parametrize(
    ("name", "content", "exporter"),
    [
        ("model.pt", b"\x80\x02whatever", "torch.onnx.export"),
        ("model.pkl", pickle.dumps({"a": 1}), "skl2onnx"),
        ("model.h5", b"\x89HDF\r\n\x1a\n", "tf2onnx"),
        ("model.safetensors", b"{}", "torch.onnx.export"),
        ("model.joblib", b"x", "skl2onnx"),
    ],
)
def test_non_onnx_files_name_the_exporter(
    tmp_path: Path, name: str, content: bytes, exporter: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelLoadError, match=exporter) as info:
        load_model(cfg(str(tmp_path / name), tmp_path))
    assert info.value.unsupported and "not an ONNX model" in str(info.value)


def test_misnamed_artefacts_detected_by_content(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.onnx", "w") as z:  # torch.save writes a zip
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(ModelLoadError, match=r"torch.onnx.export"):
        load_model(cfg(str(tmp_path / "model.onnx"), tmp_path))
    (tmp_path / "m2.onnx").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ModelLoadError, match="skl2onnx"):
        load_model(cfg(str(tmp_path / "m2.onnx"), tmp_path))
    (tmp_path / "m3.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        load_model(cfg(str(tmp_path / "m3.onnx"), tmp_path))


def test_saved_model_folder_and_empty_folder(tmp_path: Path) -> None:
    sm = tmp_path / "saved"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(ModelLoadError, match=r"TensorFlow SavedModel.*tf2onnx"):
        load_model(cfg(str(sm), tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no .onnx file"):
        load_model(cfg(str(tmp_path / "empty"), tmp_path))


def test_non_onnx_server_exits_2_with_termination_message(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(1))
    srv = start_server(tmp_path / "model.pkl", tmp_path, wait_ready=False)
    assert srv.proc.wait(60) == 2
    message = (tmp_path / "termination-log").read_text()
    assert "skl2onnx" in message and "not an ONNX model" in message
    assert "skl2onnx" in srv.log()


def test_config_flags_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFORGE_EXECUTION_PROVIDER", "CUDA")
    monkeypatch.setenv("KUBEFORGE_INTRA_OP_THREADS", "3")
    monkeypatch.setenv("KUBEFORGE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("KUBEFORGE_GRAPH_OPT_LEVEL", "99")
    c = load_config(
        ["--model", "s3://b/models/digits.onnx", "--max-delay-ms", "0.5", "--grpc-port", "0"]
    )
    assert (c.name, c.execution_provider, c.intra_op_threads, c.max_batch_size) == (
        "digits",
        "cuda",
        3,
        8,
    )
    assert (c.max_delay_ms, c.grpc_port, c.graph_opt_level, c.http_port) == (0.5, 0, "all", 8080)
    assert load_config(["--model", "gs://b/runs/run-7/", "--name", "svc"]).name == "svc"
    assert default_model_name("gs://b/runs/run-7/") == "run-7"
    monkeypatch.setenv("KUBEFORGE_EXECUTION_PROVIDER", "tpu")
    with pytest.raises(ConfigError, match="KUBEFORGE_EXECUTION_PROVIDER"):
        load_config(["--model", "m.onnx"])
    monkeypatch.delenv("KUBEFORGE_EXECUTION_PROVIDER")
    with pytest.raises(ConfigError, match="--model"):
        load_config([])


def test_cuda_provider_missing_is_a_clear_error(tmp_path: Path, mlp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    with pytest.raises(ModelLoadError, match="GPU image"):
        load_model(cfg(str(mlp_path), tmp_path, execution_provider="cuda"))


def test_cgroup_quota_v1_and_v2(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "kubepods" / "pod1").mkdir(parents=True)
    (v2 / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    proc = tmp_path / "cgroup-v2"
    proc.write_text("0::/kubepods/pod1\n")
    assert cgroup_cpu_limit(v2, proc) == 1.5
    (v2 / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, proc) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "kubepods" / "c1").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "kubepods" / "c1" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu,cpuacct" / "kubepods" / "c1" / "cpu.cfs_period_us").write_text("100000")
    proc1 = tmp_path / "cgroup-v1"
    proc1.write_text("5:cpu,cpuacct:/kubepods/c1\n4:memory:/kubepods/c1\n")
    assert cgroup_cpu_limit(v1, proc1) == 0.5
    (v1 / "cpu,cpuacct" / "kubepods" / "c1" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(v1, proc1) is None


def test_server_never_imports_operator_torch_or_kubernetes(mlp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, kubeforge_server.cli, kubeforge_server.server, kubeforge_server.grpc_service\n"
        "from kubeforge_server.config import ServerConfig\n"
        "from kubeforge_server.model import load_model\n"
        f"load_model(ServerConfig(model_uri={str(mlp_path)!r}, name='m', intra_op_threads=1))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'torch', 'kubernetes', 'kubeforge')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
