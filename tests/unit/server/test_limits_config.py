"""The server's limit flags: flag over environment over default, and bad values named."""

from __future__ import annotations

import pytest
from kubeforge_server.config import ConfigError, ServerConfig, load_config


def test_defaults() -> None:
    cfg = load_config(["--model", "m.onnx"])
    assert (cfg.max_request_bytes, cfg.max_json_bytes, cfg.max_request_rows) == (
        64 * 1024 * 1024,
        2 * 1024 * 1024,
        1024,
    )
    assert (cfg.max_queue, cfg.max_connections, cfg.max_header_bytes) == (256, 1000, 65536)
    assert cfg.max_buffered_bytes == 256 * 1024 * 1024
    assert (cfg.header_timeout, cfg.body_timeout, cfg.keepalive_timeout) == (10.0, 60.0, 65.0)


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFORGE_MAX_QUEUE", "7")
    monkeypatch.setenv("KUBEFORGE_HEADER_TIMEOUT", "2.5")
    cfg = load_config(["--model", "m.onnx", "--max-queue", "9"])
    assert cfg.max_queue == 9 and cfg.header_timeout == 2.5


def test_json_limit_never_above_the_body_limit() -> None:
    cfg = load_config(["--model", "m.onnx", "--max-request-bytes", "4096"])
    assert cfg.max_json_bytes == 4096


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-queue", "0"], "--max-queue"),
        (["--max-connections", "0"], "--max-connections"),
        (["--keepalive-timeout", "0"], "--keepalive-timeout"),
        (["--max-header-bytes", "10"], "--max-header-bytes"),
        (["--max-buffered-bytes", "2048"], "--max-buffered-bytes"),
    ],
)
def test_bad_limits_are_named(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(["--model", "m.onnx", *args])


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFORGE_BODY_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="KUBEFORGE_BODY_TIMEOUT"):
        load_config(["--model", "m.onnx"])


def test_every_limit_field_has_a_flag() -> None:
    from kubeforge_server.config import LIMIT_FLAGS

    fields = {f[2:].replace("-", "_") for f, _, _ in LIMIT_FLAGS}
    assert fields <= set(ServerConfig.__dataclass_fields__)
