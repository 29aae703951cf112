"""Shadow mirroring: output agreement (pure) and two real servers, the stable one mirroring to a
candidate off the request path."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from kubeforge_server.codec import InferRequest
from kubeforge_server.config import ConfigError, load_config
from kubeforge_server.shadow import decode_mirror_response, encode_mirror_request, outputs_agree

from .conftest import build_mlp, free_port, start_server


def test_classifier_outputs_agree_on_argmax_only() -> None:
    a = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
    b = np.array([[0.3, 0.6, 0.1], [0.5, 0.2, 0.3]], dtype=np.float32)  # same classes
    c = np.array([[0.3, 0.6, 0.1], [0.1, 0.2, 0.7]], dtype=np.float32)  # row 2 differs
    assert outputs_agree([a], [b], tolerance=0.0)
    assert not outputs_agree([a], [c], tolerance=10.0)


def test_regression_outputs_agree_within_tolerance() -> None:
    a = np.array([[1.0], [2.0]], dtype=np.float32)
    assert outputs_agree([a], [a + 0.0005], tolerance=1e-3)
    assert not outputs_agree([a], [a + 0.01], tolerance=1e-3)
    assert not outputs_agree([a], [a.reshape(2)], tolerance=1.0)  # shape differs
    assert not outputs_agree([a], [], tolerance=1.0)


def test_label_outputs_agree_when_equal() -> None:
    labels = np.array([1, 2, 3], dtype=np.int64)
    assert outputs_agree([labels], [labels.copy()], tolerance=5.0)
    assert not outputs_agree([labels], [np.array([1, 2, 4], dtype=np.int64)], tolerance=5.0)


def test_mirror_request_round_trip() -> None:
    req = InferRequest()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    req.feed = {"input": x}
    encoded = encode_mirror_request(req, ["output"])
    assert encoded is not None
    body, hl = encoded
    head = orjson.loads(body[:hl])
    assert head["inputs"][0]["shape"] == [3, 4]
    assert np.array_equal(np.frombuffer(body[hl:], dtype=np.float32).reshape(3, 4), x)
    # a response in the binary extension decodes back to arrays
    out = np.ones((3, 2), dtype=np.float32)
    rhead = orjson.dumps({"outputs": [{"name": "output", "datatype": "FP32", "shape": [3, 2],
                                       "parameters": {"binary_data_size": out.nbytes}}]})
    got = decode_mirror_response(rhead + out.tobytes(), len(rhead))
    assert np.array_equal(got["output"], out)
    req.feed = {"text": np.array(["a"], dtype=object)}
    assert encode_mirror_request(req, ["output"]) is None  # BYTES inputs are not mirrored


def _shadow_counts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'kubeforge_server_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)',
                         text):
        out[m.group(1)] = float(m.group(2))
    return out


def _infer(url: str, x: np.ndarray) -> list[float]:
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}]})
    req = urllib.request.Request(f"http://{url}/v2/models/mlp/infer", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return list(orjson.loads(r.read())["outputs"][0]["data"])


def _wait(fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.parametrize("same", [True, False], ids=["same-model", "other-weights"])
def test_stable_server_mirrors_to_the_candidate(
    mlp_path: Path, tmp_path: Path, same: bool
) -> None:
    cand_model = mlp_path if same else build_mlp(tmp_path / "other" / "mlp.onnx", seed=7)
    candidate = start_server(cand_model, tmp_path, args=["--name", "mlp"])
    stable = start_server(
        mlp_path, tmp_path,
        args=["--shadow-url", f"http://{candidate.url}", "--shadow-percent", "50"],
    )
    try:
        rng = np.random.default_rng(0)
        for _ in range(40):
            _infer(stable.url, rng.standard_normal((1, 64)).astype(np.float32))
        counts = _wait(lambda: (c := _shadow_counts(stable.url)).get("agreed", 0)
                       + c.get("disagreed", 0) >= 20 and c)
        assert counts["agreed"] + counts["disagreed"] == 20  # an even half of 40, no more
        assert counts["failed"] == 0 and counts["dropped"] == 0
        if same:
            assert counts["agreed"] == 20
        else:
            assert counts["disagreed"] > 10  # random weights: the argmax rarely matches
    finally:
        stable.stop()
        candidate.stop()


def test_an_absent_candidate_never_fails_a_client(mlp_path: Path, tmp_path: Path) -> None:
    stable = start_server(
        mlp_path, tmp_path,
        args=["--shadow-url", f"http://127.0.0.1:{free_port()}", "--shadow-queue", "2",
              "--shadow-concurrency", "1"],
    )
    try:
        x = np.ones((1, 64), dtype=np.float32)
        for _ in range(30):
            assert len(_infer(stable.url, x)) == 10
        counts = _wait(lambda: (c := _shadow_counts(stable.url)).get("failed", 0)
                       + c.get("dropped", 0) >= 30 and c)
        assert counts["agreed"] == counts["disagreed"] == 0
        assert counts["failed"] >= 1
    finally:
        stable.stop()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--shadow-url", "ftp://x"], "--shadow-url"),
        (["--shadow-url", "http://c:8080", "--shadow-percent", "150"], "--shadow-percent"),
        (["--shadow-url", "http://c:8080", "--shadow-budget", "0"], "--shadow-budget"),
        (["--shadow-url", "http://c:8080", "--shadow-queue", "0"], "--shadow-queue"),
        (["--shadow-url", "http://c:8080", "--shadow-tolerance", "-1"], "--shadow-tolerance"),
    ],
)
def test_bad_shadow_flags_name_the_flag(args: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        load_config(["--model", "/m.onnx", *args])


def test_shadow_flags_and_environment() -> None:
    cfg = load_config(["--model", "/m.onnx", "--shadow-url", "http://c.ns.svc:8080",
                       "--shadow-percent", "25"])
    assert (cfg.shadow_url, cfg.shadow_percent, cfg.shadow_budget) == (
        "http://c.ns.svc:8080", 25.0, 0.05)
    assert load_config(["--model", "/m.onnx"]).shadow_url == ""  # off by default
