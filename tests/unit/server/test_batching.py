"""Dynamic batching: requests that arrive together run once and are split back correctly; a lone
request runs at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from kubeforge_server.codec import InferRequest
from kubeforge_server.config import ServerConfig
from kubeforge_server.dataplane import Batcher, Job
from kubeforge_server.metrics import ModelMetrics
from kubeforge_server.model import load_model

from .conftest import RunningServer


def _req(x: np.ndarray, outputs: list[str] | None = None) -> InferRequest:
    r = InferRequest()
    r.feed = {"input": x}
    r.rows = x.shape[0]
    r.output_names = outputs
    return r


@pytest.mark.parametrize("max_delay", [0.0, 0.002])
def test_batcher_gathers_and_splits(mlp_path: Path, reference, max_delay: float) -> None:  # type: ignore[no-untyped-def]
    model = load_model(ServerConfig(model_uri=str(mlp_path), name="mlp", intra_op_threads=1))
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((n, 64)).astype(np.float32) for n in (1, 3, 1, 2, 5, 1)]
    results: dict[int, np.ndarray] = {}

    async def run() -> ModelMetrics:
        mm = ModelMetrics("mlp")
        b = Batcher(
            model, mm, max_batch_size=8, max_delay_s=max_delay, loop=asyncio.get_running_loop()
        )
        assert b.enabled

        def done(job: Job, names, outs, err) -> None:  # type: ignore[no-untyped-def]
            assert err is None and names == ["output"]
            results[job.ctx] = outs[0]

        for i, x in enumerate(xs):
            b.submit(
                Job(_req(x), 0.0 if max_delay == 0 else asyncio.get_running_loop().time(), done, i)
            )
        assert not results  # queued, not run inline
        for _ in range(500):  # runs happen on the model's worker thread
            if len(results) == len(xs):
                break
            await asyncio.sleep(0.01)
        return mm

    mm = asyncio.run(run())
    for i, x in enumerate(xs):
        np.testing.assert_allclose(
            results[i], reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
        )
    # 13 rows with max 8 → runs of 8 (1+3+1+2... until the 5 does not fit) and the rest.
    runs = sum(mm.batch_size.counts)
    assert runs == 2 and mm.batch_size.sum == 13


def test_lone_request_runs_without_waiting(mlp_path: Path) -> None:
    model = load_model(ServerConfig(model_uri=str(mlp_path), name="mlp", intra_op_threads=1))

    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        b = Batcher(model, ModelMetrics("mlp"), max_batch_size=32, max_delay_s=1.0, loop=loop)
        seen: list[int] = []
        b.submit(
            Job(
                _req(np.zeros((1, 64), np.float32)),
                loop.time(),
                lambda j, n, o, e: seen.append(1),
                None,
            )
        )
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.01)
        return seen

    assert asyncio.run(run()) == [1]  # within 0.5 s, well before the 1 s max delay


def test_concurrent_http_requests_are_batched(server: RunningServer, reference) -> None:  # type: ignore[no-untyped-def]
    xs = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32) for i in range(64)]

    def call(x: np.ndarray) -> np.ndarray:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        req = urllib.request.Request(
            f"http://{server.url}/v2/models/mlp/infer", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return np.array(json.loads(r.read())["outputs"][0]["data"], np.float32).reshape(1, 10)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, xs))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)
    with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'kubeforge_server_batch_size_count{model="mlp"}' in text


def test_concurrent_grpc_and_http_share_the_batcher(server: RunningServer, reference) -> None:  # type: ignore[no-untyped-def]
    grpcclient = pytest.importorskip("tritonclient.grpc")
    xs = [
        np.random.default_rng(100 + i).standard_normal((2, 64)).astype(np.float32)
        for i in range(32)
    ]

    def call(x: np.ndarray) -> np.ndarray:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            inp = grpcclient.InferInput("input", [2, 64], "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("mlp", [inp]).as_numpy("output")  # type: ignore[no-any-return]
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, xs))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)
