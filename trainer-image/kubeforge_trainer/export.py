"""ONNX export and the torch-vs-onnxruntime parity check."""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import numpy as np
import torch
from torch import nn


class ParityError(RuntimeError):
    pass


def export_onnx(model: nn.Module, sample: np.ndarray, *, opset: int, dynamic_batch: bool) -> bytes:
    """Export ``model`` (on CPU, eval mode, float32) with input ``input`` and output ``output``."""
    m = copy.deepcopy(model).to("cpu").float().eval()
    x = torch.as_tensor(sample[:2] if len(sample) >= 2 else sample, dtype=torch.float32)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:  # the TorchScript exporter: fast (<1 s) and honours any opset
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    m,
                    (x,),
                    path,
                    input_names=["input"],
                    output_names=["output"],
                    opset_version=opset,
                    dynamic_axes=axes,
                    dynamo=False,
                )
        except Exception:  # fall back to the dynamo exporter
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    m,
                    (x,),
                    path,
                    input_names=["input"],
                    output_names=["output"],
                    opset_version=opset,
                    dynamic_shapes=shapes,
                    dynamo=True,
                    verbose=False,
                )
        import onnx

        # One self-contained file (the dynamo exporter may write weights as external data).
        return bytes(onnx.load(path, load_external_data=True).SerializeToString())


def parity(model: nn.Module, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Max abs difference between torch (float32, CPU) and onnxruntime on ``x``."""
    import onnxruntime as ort

    m = copy.deepcopy(model).to("cpu").float().eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    xs = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(xs)).numpy()
    got = sess.run(None, {"input": xs})[0]
    if got.shape != ref.shape:
        raise ParityError(f"onnx output shape {got.shape} != torch {ref.shape}")
    return (
        float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    )
