"""gRPC transport: ``inference.GRPCInferenceService`` (KServe v2 / Triton wire format).

``grpc.aio`` on the server's own event loop: handlers are coroutines that submit to the same data
plane as HTTP (so both protocols share the dynamic batcher and the per-model queue limit), with no
thread-pool bridge. Large requests are decoded on a worker thread. Outputs are returned as
``raw_output_contents``, as Triton does. Messages are limited to ``--max-request-bytes`` and
count against the same buffered-bytes budget as HTTP bodies (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import numpy as np

from .codec import (
    DEFAULT_LIMITS,
    DecodeLimits,
    InferRequest,
    array_from_bytes,
    check_datatype,
    check_shape,
)
from .dataplane import DataPlane
from .encode import bytes_from_array
from .errors import BadRequest, InferenceError, Overloaded
from .grpc_v2 import grpc_predict_v2_pb2 as pb
from .grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from .metrics import Metrics
from .offload import offload_await

log = logging.getLogger("kubeforge_server.grpc")
_now = time.perf_counter

# datatype → InferTensorContents field
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param_true(params: Any, key: str) -> bool:
    if key in params:
        p = params[key]
        return p.WhichOneof("parameter_choice") == "bool_param" and p.bool_param
    return False


def decode_grpc_request(
    model: Any, request: Any, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferRequest:
    req = InferRequest()
    if request.id:
        req.id = request.id
    if not request.inputs:
        raise BadRequest("request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    feed = req.feed
    for i, t in enumerate(request.inputs):
        spec = model.input_by_name.get(t.name)
        if spec is None:
            raise BadRequest(
                f"unknown input {t.name!r}; the model takes {[s.name for s in model.inputs]}"
            )
        if t.name in feed:
            raise BadRequest(f"input {t.name!r} given twice")
        check_datatype(spec, t.datatype)
        shape = check_shape(spec, list(t.shape), limits)
        if raw:
            feed[t.name] = array_from_bytes(spec, shape, raw[i])
            continue
        field = _CONTENTS_FIELD.get(spec.datatype)
        if field is None:
            raise BadRequest(
                f"input {t.name!r}: {spec.datatype} must be sent as raw_input_contents"
            )
        values = getattr(t.contents, field)
        n = math.prod(shape)
        if len(values) != n:
            raise BadRequest(
                f"input {t.name!r}: shape {list(shape)} needs {n} elements, contents has {len(values)}"
            )
        if spec.datatype == "BYTES":
            arr = np.array([v.decode("utf-8", "replace") for v in values], dtype=object)
        else:
            try:
                arr = np.array(values, dtype=spec.dtype)
            except (ValueError, OverflowError) as exc:
                raise BadRequest(f"input {t.name!r}: {exc}") from None
        try:
            feed[t.name] = arr.reshape(shape)
        except ValueError as exc:
            raise BadRequest(f"input {t.name!r}: cannot reshape to {list(shape)}: {exc}") from None
    missing = [s.name for s in model.inputs if s.name not in feed]
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    rows = -1
    for arr in feed.values():
        lead = arr.shape[0] if arr.ndim else -1
        if rows == -1:
            rows = lead
        elif lead != rows:
            rows = -1
            break
    req.rows = rows
    if request.outputs:
        names = []
        for o in request.outputs:
            if o.name not in model.output_by_name:
                raise BadRequest(f"unknown output {o.name!r}; the model has {model.output_names}")
            names.append(o.name)
        req.output_names = names
    return req


_SMALL_MESSAGE = 64 * 1024


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Coroutine handlers on the server's event loop (``grpc.aio``)."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        reserve: Callable[[int], bool] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.served = 0
        self._reserve = reserve or (lambda n: True)
        self._release = release or (lambda n: None)
        self._decoder = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="grpc-decode")

    @staticmethod
    async def _fail(context: Any, exc: InferenceError) -> NoReturn:
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    def close(self) -> None:
        self._decoder.shutdown(wait=False)

    def _count(self, model: str, code: int, t0: float) -> None:
        self.served += 1
        self.metrics.for_model(model).request_done("grpc", code, _now() - t0)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            entry = self.dp.get(request.name, request.version or None)
        except InferenceError as exc:
            await self._fail(context, exc)
        return pb.ModelReadyResponse(ready=self.dp.model_ready(entry))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from . import SERVER_NAME, __version__

        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            entry = self.dp.get(request.name, request.version or None)
        except InferenceError as exc:
            await self._fail(context, exc)
        m = entry.model
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name,
            versions=[m.version],
            platform=m.platform,
            inputs=[tm(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in m.inputs],
            outputs=[tm(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in m.outputs],
        )

    async def ModelInfer(self, message: bytes, context: Any) -> Any:
        """Takes the serialized request: a large one is parsed on a worker thread."""
        t0 = _now()
        size = len(message)
        held = size if size > _SMALL_MESSAGE else 0
        if held and not self._reserve(held):
            full = Overloaded(f"request of {size} bytes does not fit the buffered-bytes budget")
            self._count("_unknown", full.status, t0)
            await self._fail(context, full)
        try:
            try:
                if held:
                    request = await offload_await(
                        self._decoder, pb.ModelInferRequest.FromString, message
                    )
                else:
                    request = pb.ModelInferRequest.FromString(message)
            except Exception as exc:  # protobuf's DecodeError
                await self._fail(context, BadRequest(f"malformed ModelInferRequest: {exc}"))
            del message
            return await self._infer(request, context, t0)
        finally:
            if held:
                self._release(held)

    async def _infer(self, request: Any, context: Any, t0: float) -> Any:
        try:
            entry = self.dp.get(request.model_name, request.model_version or None)
        except InferenceError as exc:
            self._count("_unknown", exc.status, t0)
            await self._fail(context, exc)
        large = request.ByteSize() > _SMALL_MESSAGE
        try:
            self.dp.check_queue(entry)
            if large:
                req = await offload_await(
                    self._decoder, decode_grpc_request, entry.model, request, entry.limits
                )
            else:
                req = decode_grpc_request(entry.model, request, entry.limits)
            names, results = await self.dp.infer(entry, req)
        except InferenceError as exc:
            self._count(entry.model.name, exc.status, t0)
            await self._fail(context, exc)
        self._count(entry.model.name, 200, t0)
        model = entry.model
        resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
        if req.id:
            resp.id = req.id
        for name, arr in zip(names, results, strict=True):
            out = resp.outputs.add()
            out.name = name
            out.datatype = model.output_by_name[name].datatype
            out.shape.extend(arr.shape)
            resp.raw_output_contents.append(bytes_from_array(arr))
        if entry.shadow is not None:  # a bump and a bounded put: never delays the answer
            entry.shadow.offer(req, names, results)
        return resp


def method_handlers(servicer: InferenceServicer) -> Any:
    """The service's handlers, as the generated ``add_..._to_server`` builds them, except that
    ModelInfer receives the serialized bytes (parsed off the loop when large)."""
    names = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=getattr(pb, f"{name}Request").FromString,
            response_serializer=getattr(pb, f"{name}Response").SerializeToString,
        )
        for name in names
    }
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=None,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


async def start_grpc(
    dataplane: DataPlane,
    metrics: Metrics,
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    reserve: Callable[[int], bool] | None = None,
    release: Callable[[int], None] | None = None,
) -> tuple[Any, InferenceServicer, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    servicer = InferenceServicer(dataplane, metrics, reserve, release)
    server.add_generic_rpc_handlers((method_handlers(servicer),))
    bound = server.add_insecure_port(f"{'[::]' if host in ('0.0.0.0', '::') else host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    return server, servicer, bound
