"""Gateway errors and the one renderer of OpenAI-shaped error bodies.

    GatewayError
    ├── InvalidRequest        400 invalid_request_error
    │   └── ContextLengthExceeded 400 context_length_exceeded
    ├── Unauthorized          401 authentication_error
    ├── ModelNotFound         404 model_not_found
    ├── RequestNotFound       404 request_not_found
    ├── PayloadTooLarge       413 request_too_large
    ├── RateLimited           429 rate_limit_exceeded (+ Retry-After)
    ├── UpstreamUnavailable   502 upstream_unavailable
    ├── NoHealthyUpstream     503 no_healthy_upstream
    ├── PolicyUnavailable     503 policy_unavailable
    └── UpstreamTimeout       504 upstream_timeout

Route code raises these and never renders an error itself.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra_headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return self.extra_headers

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code: ClassVar[str | None] = None


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "retry-after": str(self.retry_after_s)}


class UpstreamUnavailable(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class NoHealthyUpstream(GatewayError):
    status = 503
    type = "upstream_error"
    code = "no_healthy_upstream"


class PolicyUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "policy_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI error wire shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
