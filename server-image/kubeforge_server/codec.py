"""Open Inference Protocol (v2) tensors: JSON and the binary tensor extension.

Decoding validates every input against the model's signature (name, datatype, rank, fixed
dimensions, element count) so that a malformed request is a 400 with a message, never a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest, PayloadTooLarge
from .model import NP_FROM_V2, OnnxModel, TensorSpec


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may ask for, checked before any array is built."""

    max_elements: int = 64 * 1024 * 1024  # per input tensor
    max_rows: int = 1024  # leading (batch) dimension
    max_json_bytes: int = 2 * 1024 * 1024  # the JSON part of an HTTP body


DEFAULT_LIMITS = DecodeLimits()


def json_too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"JSON request of {size} bytes exceeds the JSON limit of {limit} bytes (--max-json-bytes); "
        "send large tensors with the binary tensor extension (Inference-Header-Content-Length and "
        "parameters.binary_data_size)"
    )


class InferRequest:
    """A decoded inference request: the feed, its rows, and what to send back."""

    __slots__ = ("binary_all", "binary_outputs", "feed", "id", "output_names", "rows")

    def __init__(self) -> None:
        self.id: str | None = None
        self.feed: dict[str, np.ndarray] = {}
        self.rows = 1  # leading dimension shared by all inputs, or -1 when they differ
        self.output_names: list[str] | None = None  # None = every output
        self.binary_all = False  # request parameter binary_data_output
        self.binary_outputs: frozenset[str] = frozenset()


def check_shape(
    spec: TensorSpec, shape: Any, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(
            f"input {spec.name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) != len(spec.shape):
        raise BadRequest(
            f"input {spec.name!r}: expected {len(spec.shape)} dimensions {list(spec.shape)}, got shape {list(shape)}"
        )
    for got, want in zip(shape, spec.shape, strict=True):
        if want != -1 and got != want:
            raise BadRequest(
                f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(shape)}"
            )
    return check_size(spec, tuple(shape), limits)


def check_size(spec: TensorSpec, shape: tuple[int, ...], limits: DecodeLimits) -> tuple[int, ...]:
    """Element count and rows within the limits (Python ints: no overflow, unlike np.prod)."""
    if shape and shape[0] > limits.max_rows:
        raise BadRequest(
            f"input {spec.name!r}: batch of {shape[0]} rows exceeds the maximum of "
            f"{limits.max_rows} rows per request (--max-request-rows)"
        )
    n = math.prod(shape)
    if n > limits.max_elements:
        raise BadRequest(
            f"input {spec.name!r}: shape {list(shape)} has {n} elements, more than the "
            f"{limits.max_elements} one request may carry"
        )
    return shape


def _check_nesting(spec: TensorSpec, shape: tuple[int, ...], data: list[Any]) -> None:
    """Flat data must hold exactly prod(shape) values; nested data must nest exactly rank deep
    with the shape's lengths along its first path (ragged rows are caught by numpy, cheaply,
    since the total is bounded by then)."""
    expected = math.prod(shape)
    if not data or type(data[0]) is not list:
        if len(data) != expected:
            raise BadRequest(
                f"input {spec.name!r}: shape {list(shape)} needs {expected} elements, "
                f"data has {len(data)}"
            )
        return
    node: Any = data
    depth = 0
    while type(node) is list:
        if depth >= len(shape) or len(node) != shape[depth]:
            raise BadRequest(
                f"input {spec.name!r}: data is not a valid {spec.datatype} tensor: nested lists "
                f"do not match shape {list(shape)}"
            )
        depth += 1
        node = node[0] if node else None
    if depth != len(shape):
        raise BadRequest(
            f"input {spec.name!r}: data is not a valid {spec.datatype} tensor: nested lists "
            f"do not match shape {list(shape)}"
        )


def check_datatype(spec: TensorSpec, datatype: Any) -> None:
    if datatype != spec.datatype:
        raise BadRequest(
            f"input {spec.name!r}: expected datatype {spec.datatype}, got {datatype!r}"
        )


def array_from_json(spec: TensorSpec, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if type(data) is list:
        _check_nesting(spec, shape, data)
    if type(data) is list and spec.datatype != "BYTES":
        try:
            arr = np.array(data, dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(
                f"input {spec.name!r}: data is not a valid {spec.datatype} tensor: {exc}"
            ) from None
        if arr.size != math.prod(shape):
            raise BadRequest(
                f"input {spec.name!r}: shape {list(shape)} needs {math.prod(shape)} elements, data has {arr.size}"
            )
        return arr.reshape(shape)
    if data is None:
        raise BadRequest(f"input {spec.name!r}: no 'data' and no binary_data_size parameter")
    if not isinstance(data, list):
        data = [data]
    try:
        if spec.datatype == "BYTES":
            arr = np.array(data, dtype=object)
            flat = arr.ravel()
            for i, v in enumerate(flat):
                if not isinstance(v, str):
                    if isinstance(v, bytes):
                        flat[i] = v.decode("utf-8", "replace")
                    else:
                        raise BadRequest(f"input {spec.name!r}: BYTES data must be strings")
        else:
            arr = np.array(data, dtype=spec.dtype)
    except BadRequest:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(
            f"input {spec.name!r}: data is not a valid {spec.datatype} tensor: {exc}"
        ) from None
    expected = math.prod(shape)
    if arr.size != expected:
        raise BadRequest(
            f"input {spec.name!r}: shape {list(shape)} needs {expected} elements, data has {arr.size}"
        )
    return arr.reshape(shape)


def array_from_bytes(
    spec: TensorSpec, shape: tuple[int, ...], raw: memoryview | bytes
) -> np.ndarray:
    expected = math.prod(shape)
    if spec.datatype == "BYTES":
        items: list[str] = []
        mv = memoryview(raw)
        pos, end = 0, len(mv)
        while pos < end:
            if pos + 4 > end:
                raise BadRequest(f"input {spec.name!r}: truncated BYTES element length")
            n = int.from_bytes(mv[pos : pos + 4], "little")
            pos += 4
            if pos + n > end:
                raise BadRequest(f"input {spec.name!r}: truncated BYTES element")
            items.append(bytes(mv[pos : pos + n]).decode("utf-8", "replace"))
            pos += n
            if len(items) > expected:
                break
        if len(items) != expected:
            raise BadRequest(
                f"input {spec.name!r}: shape {list(shape)} needs {expected} elements, got {len(items)}"
            )
        return np.array(items, dtype=object).reshape(shape)
    dtype = spec.dtype
    if len(raw) != expected * dtype.itemsize:
        raise BadRequest(
            f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {expected * dtype.itemsize} "
            f"bytes, binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _parse_outputs(model: OnnxModel, req: InferRequest, outputs: Any, params: Any) -> None:
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        req.binary_all = True
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for o in outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("each requested output must be an object with a 'name'")
        name = o["name"]
        if name not in model.output_by_name:
            raise BadRequest(f"unknown output {name!r}; the model has {model.output_names}")
        names.append(name)
        op = o.get("parameters")
        if isinstance(op, dict):
            flag = op.get("binary_data")
            if flag is True:
                binary.add(name)
            elif flag is False:
                binary.discard(name)
    if names:
        req.output_names = names
    req.binary_outputs = frozenset(binary)


def _shape_of(spec: TensorSpec, shape: Any, limits: DecodeLimits) -> tuple[int, ...]:
    """Fast shape check for the common case; falls back to check_shape for the message."""
    if type(shape) is list and len(shape) == len(spec.shape):
        for d, want in zip(shape, spec.shape):  # noqa: B905 - lengths checked
            if type(d) is not int or d < 0 or (want != -1 and d != want):
                break
        else:
            return check_size(spec, tuple(shape), limits)
    return check_shape(spec, shape, limits)


def decode_json_request(
    model: OnnxModel,
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> InferRequest:
    """Decode an HTTP infer body (JSON, optionally followed by binary tensor data)."""
    binary: memoryview | None = None
    if header_length is None:
        head: Any = body
        if len(body) > limits.max_json_bytes:
            raise json_too_large(len(body), limits.max_json_bytes)
    else:
        if not 0 <= header_length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        if header_length > limits.max_json_bytes:
            raise json_too_large(header_length, limits.max_json_bytes)
        mv = memoryview(body)
        head = mv[:header_length]
        binary = mv[header_length:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise BadRequest("request body must be a JSON object with 'inputs'")
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    req = InferRequest()
    rid = doc.get("id")
    if rid is not None:
        req.id = rid if type(rid) is str else str(rid)
    feed = req.feed
    offset = 0
    by_name = model.input_by_name
    rows = -2
    for t in inputs:
        if type(t) is not dict:
            raise BadRequest("each input must be an object with name, shape, datatype and data")
        name = t.get("name")
        spec = by_name.get(name) if type(name) is str else None
        if spec is None:
            raise BadRequest(
                f"unknown input {name!r}; the model takes {[s.name for s in model.inputs]}"
            )
        if name in feed:
            raise BadRequest(f"input {name!r} given twice")
        if t.get("datatype") != spec.datatype:
            check_datatype(spec, t.get("datatype"))
        shape = _shape_of(spec, t.get("shape"), limits)
        tp = t.get("parameters")
        size = tp.get("binary_data_size") if type(tp) is dict else None
        if size is not None:
            if binary is None:
                raise BadRequest(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if type(size) is not int or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body"
                )
            feed[name] = array_from_bytes(spec, shape, binary[offset : offset + size])
            offset += size
        else:
            feed[name] = array_from_json(spec, shape, t.get("data"))
        lead = shape[0] if shape else -1
        rows = lead if rows == -2 else (rows if rows == lead else -1)
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    if len(feed) != len(model.inputs):
        missing = [s.name for s in model.inputs if s.name not in feed]
        raise BadRequest(
            f"missing inputs {missing}; the model takes {[s.name for s in model.inputs]}"
        )
    req.rows = rows
    outputs = doc.get("outputs")
    params = doc.get("parameters")
    if outputs is not None or params is not None:
        _parse_outputs(model, req, outputs, params)
    return req


def precheck_head(model: OnnxModel, head: Any, limits: DecodeLimits) -> None:
    """Check the JSON head of a binary-extension request as soon as it has arrived, so a request
    with an impossible shape is refused before its (possibly large) tensor bytes are read.
    Raises BadRequest; anything it cannot judge is left to the full decode."""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        return
    inputs = doc.get("inputs") if type(doc) is dict else None
    if type(inputs) is not list:
        return
    for t in inputs:
        spec = model.input_by_name.get(t.get("name")) if type(t) is dict else None
        if spec is not None:
            check_datatype(spec, t.get("datatype"))
            _shape_of(spec, t.get("shape"), limits)


__all__ = [
    "DEFAULT_LIMITS",
    "NP_FROM_V2",
    "DecodeLimits",
    "InferRequest",
    "array_from_bytes",
    "array_from_json",
    "check_datatype",
    "check_shape",
    "decode_json_request",
]
