"""Fixtures: a seeded ONNX MLP (64→256→256→10) and a running kubeforge-server subprocess."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def build_mlp(
    path: Path,
    dims: tuple[int, ...] = (64, 256, 256, 10),
    seed: int = 0,
    external_data: bool = False,
) -> Path:
    """A Gemm/Relu MLP with a dynamic batch dimension, weights from a seeded generator."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur = "input"
    last = len(dims) - 2
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        out = "output" if i == last else f"h{i}"
        gemm_out = out if i == last else f"{out}_pre"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [gemm_out]))
        if i != last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        cur = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    model_path: Path
    name: str
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(
    model: str | Path,
    tmp: Path,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 60,
) -> RunningServer:
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp / f"server-{http_port}.log"
    full_env = {
        **os.environ,
        "KUBEFORGE_INTRA_OP_THREADS": "1",
        "KUBEFORGE_TERMINATION_LOG": str(tmp / "termination-log"),
        "KUBEFORGE_MODEL_CACHE_DIR": str(tmp / "cache"),
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "kubeforge_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *(args or []),
    ]
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=full_env)
    srv = RunningServer(proc, http_port, grpc_port, Path(str(model)), "", log_path)
    if wait_ready:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{srv.log()}")
            try:
                with urllib.request.urlopen(f"http://{srv.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            srv.stop()
            raise RuntimeError(f"server not ready in {timeout}s:\n{srv.log()}")
    return srv


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("model") / "mlp.onnx")


@pytest.fixture(scope="session")
def reference(mlp_path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(mlp_path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def server(mlp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(
        mlp_path,
        tmp_path_factory.mktemp("srv"),
        env={"KUBEFORGE_MAX_REQUEST_BYTES": str(1024 * 1024)},
    )
    srv.name = "mlp"
    yield srv
    srv.stop()


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)


# -- the attack suite's model and server ------------------------------------------------------------
@pytest.fixture(scope="session")
def sleepy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .attack_support import build_sleepy_model

    path, ms = build_sleepy_model(tmp_path_factory.mktemp("sleepy") / "sleepy.onnx")
    assert 15 <= ms <= 90, f"calibration gave a {ms:.1f} ms run"
    return path


@pytest.fixture(scope="module")
def sleepy(sleepy_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from .attack_support import TIMEOUT_ARGS

    srv = start_server(sleepy_model, tmp_path_factory.mktemp("srv"), args=TIMEOUT_ARGS)
    srv.name = "sleepy"
    yield srv
    srv.stop()
