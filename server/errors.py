"""The OpenAI error envelope and the one exception type routes raise to produce it.

Every error the server sends, on any path, has the four-key body
`{"error": {"message", "type", "param", "code"}}` so OpenAI SDKs can read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from cupyserve.runtime.outputs import EngineError

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


@dataclass(frozen=True)
class ErrorInfo:
    """One error as the client sees it; `status` is the HTTP status."""

    status: int
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"error status must be 4xx or 5xx, got {self.status}")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class APIError(Exception):
    """Raised anywhere in a route; the app turns it into the OpenAI error response."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(ErrorInfo(400, message, INVALID_REQUEST, param, code))


def model_not_found(model: str) -> APIError:
    return APIError(ErrorInfo(404, f"The model `{model}` does not exist or you do not have access to it.",
                              INVALID_REQUEST, "model", "model_not_found"))


def not_found(message: str, code: str = "not_found") -> APIError:
    return APIError(ErrorInfo(404, message, INVALID_REQUEST, None, code))


def unauthorized() -> ErrorInfo:
    return ErrorInfo(401, "Invalid or missing API key; send `Authorization: Bearer <key>`.",
                     INVALID_REQUEST, None, "invalid_api_key")


def unavailable(message: str, code: str = "overloaded") -> APIError:
    return APIError(ErrorInfo(503, message, SERVER_ERROR, None, code))


def internal_error() -> ErrorInfo:
    # The message stays generic on purpose: details go to the log, not to clients.
    return ErrorInfo(500, "Internal server error; see the server log (correlation id in the "
                          "X-Correlation-Id header).", SERVER_ERROR, None, "internal_error")


def from_engine_error(error: EngineError) -> ErrorInfo:
    """Map a runtime failure to the client shape; client-side statuses read as invalid requests."""
    status = error.status if 400 <= error.status <= 599 else 500
    kind = INVALID_REQUEST if status < 500 else (error.type or SERVER_ERROR)
    return ErrorInfo(status, error.message, kind, None, error.code)
