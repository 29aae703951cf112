"""What a failed API request raises: ApiError (a non-2xx answer) or ApiConnectionError."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server: `.status`, `.reason`, the server's message, and
    the client's exception it wraps (`__cause__`) when there is one."""

    def __init__(
        self,
        status: int,
        reason: str,
        body: JSON | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = (body or {}).get("message") or reason
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = (body or {}).get("reason") or reason
        self.message = message
        self.body = body or {}
        self.headers = headers or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def throttled(self) -> bool:
        return self.status == 429


class ApiConnectionError(ConnectionError):
    """The API server could not be reached, or the connection broke mid-request."""
