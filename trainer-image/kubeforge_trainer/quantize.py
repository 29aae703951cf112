"""int8 copies of an exported model (``spec.output.onnx.quantize``) with ONNX Runtime's
quantization tools, and their evaluation on the validation split.

- ``dynamic-int8``: weights stored as int8; activations quantized at run time per batch
  (``quantize_dynamic``). Needs no data.
- ``static-int8``: weights and activations int8 in QDQ form; activation ranges are fixed once by
  running ``calibration.samples`` training rows through the float model (``quantize_static``,
  MinMax calibration).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

QUANTIZED_FILE = "model.int8.onnx"


class _Rows:
    """onnxruntime's CalibrationDataReader protocol over a float32 array, one row at a time."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        self._it: Iterator[np.ndarray] = iter(rows)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._it, None)
        return None if row is None else {self._name: row[None, :]}


def quantize(float_model: bytes, mode: str, calibration_rows: np.ndarray | None = None) -> bytes:
    """The int8 model (serialized) of ``float_model`` in ``mode`` (dynamic-int8 | static-int8)."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model.onnx")
        pre = os.path.join(tmp, "model.pre.onnx")
        dst = os.path.join(tmp, QUANTIZED_FILE)
        with open(src, "wb") as fh:
            fh.write(float_model)
        # Shape inference and graph clean-up first, as ONNX Runtime's docs recommend: the
        # quantizer then sees fused Gemm/MatMul nodes with known shapes.
        quant_pre_process(src, pre, skip_symbolic_shape=False)
        if mode == "dynamic-int8":
            quantize_dynamic(pre, dst, weight_type=QuantType.QInt8)
        elif mode == "static-int8":
            if calibration_rows is None or len(calibration_rows) == 0:
                raise ValueError("static-int8 needs calibration rows")
            reader = _Rows("input", np.ascontiguousarray(calibration_rows, dtype=np.float32))
            quantize_static(
                pre,
                dst,
                reader,  # type: ignore[arg-type]  # the reader protocol: get_next()
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        else:
            raise ValueError(f"unknown quantize mode {mode!r}")
        with open(dst, "rb") as fh:
            return fh.read()


def predict(model: bytes, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's output on ``x`` (float32 rows), one CPU thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    xs = np.ascontiguousarray(x, dtype=np.float32)
    outs = [sess.run(None, {"input": xs[i : i + batch]})[0] for i in range(0, len(xs), batch)]
    return np.concatenate(outs).astype(np.float64)


def task_metrics(out: np.ndarray, y: np.ndarray, regression: bool) -> dict[str, float]:
    """The validation metrics the trainer reports for float models, from model outputs."""
    if regression:
        err = out.reshape(-1) - y.reshape(-1).astype(np.float64)
        mse = float(np.mean(err**2))
        var = float(np.var(y))
        return {
            "val_mse": mse,
            "val_mae": float(np.mean(np.abs(err))),
            "val_r2": 1.0 - mse / var if var > 0 else 0.0,
        }
    return {"val_accuracy": float(np.mean(out.argmax(axis=1) == y))}


def compare(
    float_model: bytes, int8_model: bytes, x: np.ndarray, y: np.ndarray, regression: bool
) -> dict[str, Any]:
    """``int8_<metric>`` and ``int8_<metric>_delta`` (int8 minus float, both through ONNX
    Runtime on the same rows), and ``int8_max_abs_diff`` between the two models' outputs."""
    ref = predict(float_model, x)
    got = predict(int8_model, x)
    float_m = task_metrics(ref, y, regression)
    int8_m = task_metrics(got, y, regression)
    out: dict[str, Any] = {
        "int8_max_abs_diff": float(np.max(np.abs(got - ref))) if ref.size else 0.0
    }
    for name, value in int8_m.items():
        out[f"int8_{name}"] = value
        out[f"int8_{name}_delta"] = value - float_m[name]
    return out
