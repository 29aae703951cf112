"""Errors that map to a protocol status: HTTP code and gRPC status name."""

from __future__ import annotations


class InferenceError(Exception):
    status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(InferenceError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class NotFound(InferenceError):
    status = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(InferenceError):
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(InferenceError):
    status = 503
    grpc_code = "UNAVAILABLE"
