"""Real third-party clients against a running kubeforge-server: tritonclient (HTTP JSON, HTTP
binary, gRPC) and the kserve client (v2 REST, JSON and binary, and gRPC), each checked against
onnxruntime run directly."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .conftest import RunningServer

BENCH_VENV = Path(
    os.environ.get("KUBEFORGE_BENCH_VENV", Path.home() / ".cache/kubeforge/bench-venv")
)


def _expected(reference, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return reference.run(None, {"input": x})[0]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http(server: RunningServer, reference, x: np.ndarray, binary: bool) -> None:  # type: ignore[no-untyped-def]
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(server.url)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("mlp")
        meta = client.get_model_metadata("mlp")
        assert meta["name"] == "mlp"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out], request_id="req-7")
        got = result.as_numpy("output")
        np.testing.assert_allclose(got, _expected(reference, x), rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == "req-7"
        # No outputs named: tritonclient asks for binary_data_output on all of them.
        result = client.infer("mlp", [inp])
        np.testing.assert_allclose(
            result.as_numpy("output"), _expected(reference, x), rtol=1e-5, atol=1e-5
        )
    finally:
        client.close()


def test_tritonclient_grpc(server: RunningServer, reference, x: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("mlp")
        meta = client.get_model_metadata("mlp", as_json=True)
        assert meta["name"] == "mlp"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
        assert client.get_server_metadata(as_json=True)["name"] == "kubeforge-server"
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(
            "mlp", [inp], outputs=[grpcclient.InferRequestedOutput("output")], request_id="g1"
        )
        np.testing.assert_allclose(
            result.as_numpy("output"), _expected(reference, x), rtol=1e-5, atol=1e-5
        )
        assert result.get_response().id == "g1"
        with pytest.raises(Exception, match="expected shape"):
            bad = grpcclient.InferInput("input", [2, 63], "FP32")
            bad.set_data_from_numpy(np.zeros((2, 63), np.float32))
            client.infer("mlp", [bad])
        with pytest.raises(Exception, match="not served"):
            client.infer("nope", [inp])
    finally:
        client.close()


KSERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferenceGRPCClient, RESTConfig, InferInput, InferRequest

    http_url, grpc_url, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    x = np.array(data, dtype=np.float32)

    async def main():
        out = {}
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        out["ready"] = await client.is_server_ready(http_url)
        out["model_ready"] = await client.is_model_ready(http_url, "mlp")
        for binary in (False, True):
            inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            req = InferRequest(model_name="mlp", infer_inputs=[inp], request_id="k1")
            res = await client.infer(http_url, req, model_name="mlp")
            out["rest_binary" if binary else "rest_json"] = res.outputs[0].as_numpy().tolist()
        await client.close()
        g = InferenceGRPCClient(grpc_url, retries=0)
        inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        inp.set_data_from_numpy(x)
        res = await g.infer(InferRequest(model_name="mlp", infer_inputs=[inp], request_id="k2"))
        out["grpc"] = res.outputs[0].as_numpy().tolist()
        out["grpc_ready"] = await g.is_model_ready("mlp")
        await g.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_kserve_client(server: RunningServer, reference, x: np.ndarray, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(
            f"kserve client not installed: kserve==0.21.0 would change core packages of the project venv, so it "
            f"lives in {BENCH_VENV} (python3 -m venv {BENCH_VENV} && {BENCH_VENV}/bin/pip install kserve==0.21.0 "
            f"onnxruntime numpy)"
        )
    script = tmp_path / "kserve_client.py"
    script.write_text(KSERVE_SCRIPT)
    proc = subprocess.run(
        [
            str(python),
            str(script),
            f"http://{server.url}",
            f"127.0.0.1:{server.grpc_port}",
            json.dumps(x.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ready"] is True and out["model_ready"] is True and out["grpc_ready"] is True
    want = _expected(reference, x)
    for key in ("rest_json", "rest_binary", "grpc"):
        np.testing.assert_allclose(
            np.array(out[key], dtype=np.float32), want, rtol=1e-5, atol=1e-5, err_msg=key
        )
