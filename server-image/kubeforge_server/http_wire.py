"""HTTP/1.1 answers as bytes: status lines, the few headers the server sends, error bodies."""

from __future__ import annotations

import orjson

JSON = b"application/json"
OCTET = b"application/octet-stream"
TEXT_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_STATUS = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


def build_response(
    code: int,
    body: bytes,
    ctype: bytes = JSON,
    close: bool = False,
    header_length: int | None = None,
    extra: bytes = b"",
    head: bool = False,
) -> bytes:
    """One complete HTTP/1.1 answer. ``head``: the headers a GET would get, without the body."""
    if header_length is not None:
        extra += b"inference-header-content-length: %d\r\n" % header_length
    line = _STATUS.get(code) or b"HTTP/1.1 %d Status\r\n" % code
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        line,
        ctype,
        len(body),
        extra,
        b"connection: close\r\n" if close else b"",
        b"" if head else body,
    )


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


__all__ = ["JSON", "OCTET", "TEXT_METRICS", "build_response", "error_body"]
