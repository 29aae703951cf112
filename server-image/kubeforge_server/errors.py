"""Errors that map to a protocol status: HTTP code, extra HTTP headers and gRPC status name."""

from __future__ import annotations


class InferenceError(Exception):
    status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, headers: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers  # raw "name: value\r\n" lines added to the HTTP answer


class BadRequest(InferenceError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class NotFound(InferenceError):
    status = 404
    grpc_code = "NOT_FOUND"


class MethodNotAllowed(InferenceError):
    status = 405
    grpc_code = "UNIMPLEMENTED"

    def __init__(self, method: str, allow: str) -> None:
        super().__init__(
            f"method {method} not allowed here (allowed: {allow})",
            b"allow: %s\r\n" % allow.encode(),
        )


class PayloadTooLarge(InferenceError):
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(InferenceError):
    status = 503
    grpc_code = "UNAVAILABLE"


class Overloaded(InferenceError):
    """A bounded queue or budget is full: try again shortly (HTTP 503 + Retry-After)."""

    status = 503
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, b"retry-after: %d\r\n" % retry_after)
