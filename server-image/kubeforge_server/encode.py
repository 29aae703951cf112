"""Encoding inference outputs: JSON (non-finite floats as Triton writes them) and the binary
tensor extension."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from .codec import InferRequest
from .model import OnnxModel

_OPT_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def bytes_from_array(arr: np.ndarray) -> bytes:
    """Binary tensor extension encoding (BYTES: 4-byte little-endian length before each element)."""
    if arr.dtype == object:
        parts: list[bytes] = []
        for v in arr.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(len(b).to_bytes(4, "little"))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr).tobytes()


def _json_data(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()
        ]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        # orjson writes null for NaN/Inf; Triton writes the tokens NaN, Infinity and -Infinity,
        # which tritonclient (rapidjson) and Python's json read back as floats.
        return orjson.Fragment(json.dumps(arr.ravel().tolist()))
    if arr.dtype == np.float16:
        return arr.ravel().astype(np.float32)
    return np.ascontiguousarray(arr).ravel()


def encode_json_response(
    model: OnnxModel, req: InferRequest, names: list[str], results: list[np.ndarray]
) -> tuple[bytes, int | None]:
    """Encode the response; returns (body, Inference-Header-Content-Length or None)."""
    outputs = []
    binary_parts: list[bytes] = []
    binary_all = req.binary_all
    binary_outputs = req.binary_outputs
    out_specs = model.output_by_name
    for name, arr in zip(names, results, strict=True):
        datatype = out_specs[name].datatype
        if binary_all or name in binary_outputs:
            raw = bytes_from_array(arr)
            binary_parts.append(raw)
            outputs.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": arr.shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            outputs.append(
                {"name": name, "datatype": datatype, "shape": arr.shape, "data": _json_data(arr)}
            )
    doc: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": outputs,
    }
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=_OPT_NUMPY)
    if binary_parts:
        return head + b"".join(binary_parts), len(head)
    return head, None


__all__ = ["bytes_from_array", "encode_json_response"]
