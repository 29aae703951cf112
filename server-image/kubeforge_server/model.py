"""The ONNX Runtime model: session options, signature from the graph, sha256, warmup, run."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ServerConfig
from .storage import ModelLoadError, resolve_model, sha256_file

log = logging.getLogger("kubeforge_server.model")

# ONNX Runtime type string → Open Inference Protocol datatype.
V2_FROM_ORT: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}

# Open Inference Protocol datatype → numpy dtype (BYTES: object array of bytes/str).
NP_FROM_V2: dict[str, Any] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
}

V2_FROM_NP: dict[Any, str] = {v: k for k, v in NP_FROM_V2.items() if k != "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = any size
    dtype: Any  # numpy dtype

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any) -> TensorSpec:
    datatype = V2_FROM_ORT.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"tensor {arg.name!r} has type {arg.type}, which the server cannot serve"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape, NP_FROM_V2.get(datatype))


def _providers(cfg: ServerConfig) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if cfg.execution_provider == "cpu":
        return ["CPUExecutionProvider"]
    if cfg.execution_provider == "cuda":
        want = ["CUDAExecutionProvider"]
    else:
        want = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    missing = [p for p in want if p not in available]
    if missing:
        raise ModelLoadError(
            f"execution provider {cfg.execution_provider!r} needs {missing}, but this onnxruntime "
            f"offers {available}; use the GPU image (onnxruntime-gpu) on a node with GPUs",
            unsupported=True,
        )
    providers: list[Any] = []
    if cfg.execution_provider == "tensorrt":
        os.makedirs(cfg.trt_cache_dir, exist_ok=True)
        providers.append(
            (
                "TensorrtExecutionProvider",
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": cfg.trt_cache_dir,
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": cfg.trt_cache_dir,
                },
            )
        )
    providers += ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return providers


def session_options(cfg: ServerConfig) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.effective_intra_op_threads
    so.inter_op_num_threads = max(1, cfg.inter_op_threads)
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if cfg.inter_op_threads > 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": getattr(
            ort.GraphOptimizationLevel,
            "ORT_ENABLE_LAYOUT",
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ),
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_opt_level]
    # Spinning worker threads burn the CPU quota the event loop needs; off unless asked for.
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0"
    )
    so.add_session_config_entry(
        "session.inter_op.allow_spinning", "1" if cfg.allow_spinning else "0"
    )
    so.log_severity_level = 3
    return so


class OnnxModel:
    """One loaded ONNX model. ``run`` is called on the event loop thread (or a gRPC worker)."""

    platform = "onnxruntime_onnx"

    def __init__(self, name: str, uri: str, path: Path, sha256: str, session: Any) -> None:
        self.name = name
        self.uri = uri
        self.path = path
        self.sha256 = sha256
        self.session = session
        self.version = "1"
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_by_name = {s.name: s for s in self.outputs}
        self.output_names = [s.name for s in self.outputs]
        self.output_index = {n: i for i, n in enumerate(self.output_names)}
        self.providers: list[str] = list(session.get_providers())
        # Dynamic batching needs a free leading dimension on every input and output.
        self.batchable = all(
            len(s.shape) >= 1 and s.shape[0] == -1 for s in self.inputs + self.outputs
        )
        self.ready = False
        # The bound C++ run skips the Python wrapper's per-call validation (we validate ourselves).
        inner = getattr(session, "_sess", None)
        self._run: Callable[[list[str], dict[str, np.ndarray], Any], list[np.ndarray]] = (
            inner.run if inner is not None and hasattr(inner, "run") else session.run
        )

    def run(
        self, feed: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        return self._run(list(output_names) if output_names else self.output_names, feed, None)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
            "parameters": {"sha256": self.sha256, "uri": self.uri},
        }

    def dummy_feed(self, batch: int) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for s in self.inputs:
            shape = [
                batch if i == 0 and d == -1 else (d if d >= 0 else 1) for i, d in enumerate(s.shape)
            ]
            if s.datatype == "BYTES":
                feed[s.name] = np.full(shape, "", dtype=object)
            elif s.datatype == "BF16":
                raise ModelLoadError(f"input {s.name!r} is BF16, which the server cannot feed")
            else:
                feed[s.name] = np.zeros(shape, dtype=s.dtype)
        return feed

    def warmup(self, max_batch: int) -> float:
        """Run the model on zeros (batch 1 and the largest batch) so the first request is fast."""
        start = time.perf_counter()
        sizes = [1] if not self.batchable or max_batch <= 1 else [1, max_batch]
        for b in sizes:
            feed = self.dummy_feed(b)
            for _ in range(3):
                self.run(feed)
        return time.perf_counter() - start


def load_model(cfg: ServerConfig) -> OnnxModel:
    """Fetch, check, hash and open the model. Raises ModelLoadError with a user-facing message."""
    import onnxruntime as ort

    path = resolve_model(cfg.model_uri, cache_dir=cfg.model_cache_dir, pvc_root=cfg.pvc_root)
    digest = sha256_file(path)
    providers = _providers(cfg)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(cfg), providers=providers
        )
    except Exception as exc:
        text = str(exc)
        hint = ""
        if "external" in text.lower() or "No such file" in text:
            hint = " (external-data files must sit beside the .onnx file, as saved)"
        raise ModelLoadError(
            f"{cfg.model_uri}: onnxruntime cannot load {path.name}: {text}{hint}"
        ) from exc
    model = OnnxModel(cfg.name, cfg.model_uri, path, digest, session)
    log.info(
        "loaded model %s from %s sha256=%s providers=%s intra_op_threads=%d inputs=%s outputs=%s",
        model.name,
        cfg.model_uri,
        digest,
        model.providers,
        cfg.effective_intra_op_threads,
        [s.metadata() for s in model.inputs],
        [s.metadata() for s in model.outputs],
    )
    return model
