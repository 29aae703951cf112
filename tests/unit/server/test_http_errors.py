"""Malformed requests get a 4xx with {"error": "..."} naming the problem, never a 500."""

from __future__ import annotations

import http.client
import json
import socket
import struct

import numpy as np
import pytest

from .conftest import RunningServer


def post(
    server: RunningServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request(
            "POST", path, body=body, headers=headers or {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data), dict(resp.getheaders())
    finally:
        conn.close()


def get(server: RunningServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def tensor(**overrides: object) -> bytes:
    t: dict[str, object] = {
        "name": "input",
        "shape": [1, 64],
        "datatype": "FP32",
        "data": [0.5] * 64,
    }
    t.update(overrides)
    return json.dumps({"inputs": [t]}).encode()


INFER = "/v2/models/mlp/infer"

BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "non-empty 'inputs'"),
    (b'{"inputs": []}', "non-empty 'inputs'"),
    (b'{"inputs": [7]}', "each input must be an object"),
    (tensor(name="x"), "unknown input 'x'"),
    (tensor(datatype="INT64"), "expected datatype FP32"),
    (tensor(datatype=None), "expected datatype FP32"),
    (tensor(shape=[1, 63]), "expected shape [-1, 64]"),
    (tensor(shape=[64]), "expected 2 dimensions"),
    (tensor(shape="1,64"), "shape must be a list"),
    (tensor(shape=[1, -64]), "shape must be a list of non-negative integers"),
    (tensor(data=[0.5] * 63), "needs 64 elements, data has 63"),
    (tensor(data=["a"] * 64), "not a valid FP32 tensor"),
    (tensor(data=[[1.0, 2.0], [3.0]]), "not a valid FP32 tensor"),
    (tensor(data=[{"a": 1}] * 64), "not a valid FP32 tensor"),
    (tensor(data=None), "no 'data'"),
    (tensor(shape=[2**62, 64]), "--max-request-rows"),
    (tensor(shape=[2000, 64]), "batch of 2000 rows exceeds the maximum of 1024"),
    (tensor(data=[[[0.5] * 64]]), "nested lists do not match shape [1, 64]"),
    (tensor(data=[[0.5] * 63]), "nested lists do not match shape [1, 64]"),
    (tensor(parameters={"binary_data_size": 256}), "no Inference-Header-Content-Length"),
    (json.dumps({"inputs": [json.loads(tensor())["inputs"][0]] * 2}).encode(), "given twice"),
    (
        json.dumps(
            {"inputs": json.loads(tensor())["inputs"], "outputs": [{"name": "nope"}]}
        ).encode(),
        "unknown output",
    ),
    (
        json.dumps({"inputs": json.loads(tensor())["inputs"], "outputs": "output"}).encode(),
        "'outputs' must be a list",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES, ids=[m for _, m in BAD_BODIES])
def test_bad_json_requests_are_400(server: RunningServer, body: bytes, message: str) -> None:
    status, doc, _ = post(server, INFER, body)
    assert status == 400, doc
    assert message in doc["error"]


def _binary_request(
    x: np.ndarray, size: int | None = None, header_len: int | None = None, extra: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    raw = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    ).encode()
    hl = len(head) if header_len is None else header_len
    return head + raw + extra, {
        "Inference-Header-Content-Length": str(hl),
        "Content-Type": "application/octet-stream",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 100}, "needs 256 bytes"),
        ({"size": 10_000}, "runs past the end"),
        ({"header_len": 10_000_000}, "outside the body"),
        ({"header_len": 5}, "not valid JSON"),
        ({"extra": b"xx"}, "not claimed by any input"),
    ],
)
def test_bad_binary_requests_are_400(server: RunningServer, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    body, headers = _binary_request(np.ones((1, 64), np.float32), **kwargs)
    status, doc, _ = post(server, INFER, body, headers)
    assert status == 400, doc
    assert message in doc["error"]


def test_bad_header_length_value(server: RunningServer) -> None:
    status, doc, _ = post(server, INFER, tensor(), {"Inference-Header-Content-Length": "abc"})
    assert status == 400 and "must be an integer" in doc["error"]


def test_binary_request_and_binary_output(server: RunningServer, reference) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    raw = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    conn.request(
        "POST", INFER, body=head + raw, headers={"Inference-Header-Content-Length": str(len(head))}
    )
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200
    hl = int(resp.getheader("Inference-Header-Content-Length"))
    doc = json.loads(data[:hl])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    got = np.frombuffer(data[hl:], np.float32).reshape(doc["outputs"][0]["shape"])
    np.testing.assert_allclose(got, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_unknown_model_and_paths(server: RunningServer) -> None:
    status, doc, _ = post(server, "/v2/models/nope/infer", tensor())
    assert status == 404 and "not served" in doc["error"]
    assert get(server, "/v2/models/nope")[0] == 404
    assert get(server, "/v2/models/mlp/versions/9")[0] == 404
    assert get(server, "/v2/models/mlp/versions/1")[0] == 200
    assert get(server, "/v2/models/mlp/ready") == (200, b'{"name":"mlp","ready":true}')
    assert get(server, "/nothing")[0] == 404
    assert get(server, INFER)[0] == 405
    status, doc, _ = post(server, "/v2/models/mlp/versions/1/infer", tensor())
    assert status == 200 and doc["outputs"][0]["shape"] == [1, 10]


def test_request_too_large_is_413(server: RunningServer) -> None:
    body = tensor(data=[0.5] * 64) + b" " * (1024 * 1024 + 10)
    status, doc, _ = post(server, INFER, body)
    assert status == 413 and "exceeds the limit" in doc["error"]
    # The server keeps working afterwards.
    assert post(server, INFER, tensor())[0] == 200


def test_malformed_http_is_400_and_pipelining_keeps_order(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GARBAGE / HTTP/1.1\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in data
    body = tensor()
    one = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        INFER.encode(),
        len(body),
        body,
    )
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(one + health + one + health + last)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    assert data.count(b"HTTP/1.1 200 OK") == 5
    order = [
        data.find(b'"outputs"'),
        data.find(b'{"live":true}'),
        data.rfind(b'"outputs"'),
        data.rfind(b'{"live":true}'),
        data.find(b'{"ready":true}'),
    ]
    assert order == sorted(order) and -1 not in order


def test_expect_100_continue(server: RunningServer) -> None:
    body = tensor()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % (INFER.encode(), len(body))
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_bytes_and_int_models(tmp_path, reference) -> None:  # type: ignore[no-untyped-def]
    """Datatype handling beyond FP32: an INT64 → FP32 Cast model, JSON and binary."""
    from onnx import TensorProto, helper, save_model

    from .conftest import start_server

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    save_model(m, str(tmp_path / "cast.onnx"))
    srv = start_server(tmp_path / "cast.onnx", tmp_path)
    try:
        srv_port = srv.http_port
        conn = http.client.HTTPConnection("127.0.0.1", srv_port, timeout=10)
        conn.request(
            "POST",
            "/v2/models/cast/infer",
            body=json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [2, 3],
                            "datatype": "INT64",
                            "data": [[1, 2, 3], [4, 5, 6]],
                        }
                    ]
                }
            ),
        )
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200 and doc["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
        conn.request(
            "POST",
            "/v2/models/cast/infer",
            body=json.dumps(
                {
                    "inputs": [
                        {"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 2**70]}
                    ]
                }
            ),
        )
        r = conn.getresponse()
        assert r.status == 400 and "INT64" in json.loads(r.read())["error"]
        raw = struct.pack("<3q", 7, 8, 9)
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 3],
                        "datatype": "INT64",
                        "parameters": {"binary_data_size": 24},
                    }
                ]
            }
        ).encode()
        conn.request(
            "POST",
            "/v2/models/cast/infer",
            body=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        r = conn.getresponse()
        assert json.loads(r.read())["outputs"][0]["data"] == [7, 8, 9]
        conn.close()
    finally:
        srv.stop()
