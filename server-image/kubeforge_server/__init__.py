"""kubeforge-server: ONNX Runtime behind the Open Inference Protocol (KServe v2).

Layout (the KServe Python server's split, without its per-request framework cost):

- ``config``    typed settings from flags and env, cgroup-aware thread defaults
- ``storage``   model URI (fsspec, ``pvc://``, folders with external data) to a local file
- ``model``     the ONNX Runtime session: signature, sha256, warmup, run
- ``codec``     Open Inference Protocol tensors: JSON and the binary tensor extension
- ``batcher``   dynamic batching on the event loop
- ``dataplane`` models by name, readiness, inference entry point shared by the transports
- ``metrics``   Prometheus metrics with a cheap hot path
- ``http``      HTTP/1.1 transport (asyncio Protocol + httptools)
- ``grpc_service`` gRPC transport (``inference.GRPCInferenceService``)
- ``server``    lifecycle: start, load, warm, ready, drain on SIGTERM
"""

__version__ = "0.1.0"
SERVER_NAME = "kubeforge-server"
