"""gRPC transport: ``inference.GRPCInferenceService`` (KServe v2 / Triton wire format).

Submits to the same data plane as HTTP, so both protocols share the dynamic batcher. Outputs are
returned as ``raw_output_contents``, as Triton does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import grpc
import numpy as np

from .codec import InferRequest, array_from_bytes, bytes_from_array, check_datatype, check_shape
from .dataplane import DataPlane, Job, Results
from .errors import BadRequest, InferenceError
from .grpc_v2 import grpc_predict_v2_pb2 as pb
from .grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from .metrics import Metrics

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


def decode_grpc_request(model: Any, request: Any) -> InferRequest:
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
        shape = check_shape(spec, list(t.shape))
        if raw:
            feed[t.name] = array_from_bytes(spec, shape, raw[i])
            continue
        field = _CONTENTS_FIELD.get(spec.datatype)
        if field is None:
            raise BadRequest(
                f"input {t.name!r}: {spec.datatype} must be sent as raw_input_contents"
            )
        values = getattr(t.contents, field)
        n = int(np.prod(shape)) if shape else 1
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
        feed[t.name] = arr.reshape(shape)
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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Synchronous gRPC handlers on grpc's own threads, bridged to the event loop's data plane.

    grpc.aio would hook into the HTTP event loop and cost every HTTP request a little; grpc's thread
    pool sits idle in C when nobody speaks gRPC. A request is decoded on a gRPC thread, handed to
    the loop with ``call_soon_threadsafe`` (so it joins the same dynamic batches as HTTP), and the
    thread waits for the result. Metrics are only touched on the loop thread.
    """

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.loop = loop
        self.served = 0

    def _fail(self, context: Any, exc: InferenceError) -> None:
        context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)

    def _count(self, model: str, code: int, t0: float) -> None:
        """Record a finished request (runs on the loop thread)."""
        self.served += 1
        self.metrics.for_model(model).request_done("grpc", code, _now() - t0)

    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.ready)

    def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            entry = self.dp.get(request.name, request.version or None)
        except InferenceError as exc:
            self._fail(context, exc)
        return pb.ModelReadyResponse(ready=self.dp.model_ready(entry))

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        from . import SERVER_NAME, __version__

        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=["binary_tensor_data"]
        )

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            entry = self.dp.get(request.name, request.version or None)
        except InferenceError as exc:
            self._fail(context, exc)
        m = entry.model
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name,
            versions=[m.version],
            platform=m.platform,
            inputs=[tm(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in m.inputs],
            outputs=[tm(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in m.outputs],
        )

    def ModelInfer(self, request: Any, context: Any) -> Any:
        t0 = _now()
        loop = self.loop
        try:
            entry = self.dp.get(request.model_name, request.model_version or None)
        except InferenceError as exc:
            loop.call_soon_threadsafe(self._count, "_unknown", exc.status, t0)
            self._fail(context, exc)
        try:
            req = decode_grpc_request(entry.model, request)
        except InferenceError as exc:
            loop.call_soon_threadsafe(self._count, entry.model.name, exc.status, t0)
            self._fail(context, exc)
        done = threading.Event()
        box: list[Any] = []

        def complete(
            job: Job, names: list[str], results: Results | None, err: InferenceError | None
        ) -> None:
            entry.metrics.inflight -= 1
            self._count(entry.model.name, err.status if err is not None else 200, t0)
            box.extend((names, results, err))
            done.set()

        loop.call_soon_threadsafe(self.dp.submit, entry, Job(req, t0, complete, None))
        remaining = context.time_remaining()
        if not done.wait(timeout=min(remaining, 3600.0) if remaining is not None else 3600.0):
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "inference did not finish before the deadline"
            )
        names, results, err = box
        if err is not None:
            self._fail(context, err)
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
        return resp


def start_grpc(
    dataplane: DataPlane,
    metrics: Metrics,
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    max_message_bytes: int,
    workers: int = 8,
) -> tuple[Any, InferenceServicer, int]:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = InferenceServicer(dataplane, metrics, loop)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{'[::]' if host in ('0.0.0.0', '::') else host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    return server, servicer, bound
