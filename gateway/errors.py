"""Every gateway exception, and the one renderer of OpenAI-shaped error bodies.

    GatewayError              500 server_error               outcome
    ├── InvalidRequest        400 invalid_request_error      client_error
    │   ├── ContextLengthExceeded 400 context_length_exceeded (also: past a limit's max_chars)
    │   ├── ArrayTooLong      400 array_above_max_length     (past a limit's max_messages)
    │   ├── IntegerTooLarge   400 integer_above_max_value    (past a limit's max_tokens)
    │   └── TooDeep           400 (JSON nested deeper than it can be re-encoded: 254 levels)
    ├── Unauthorized          401 authentication_error       client_error
    ├── Forbidden             403 permission_denied          client_error
    ├── ModelNotFound         404 model_not_found            client_error
    ├── RequestNotFound       404 request_not_found          client_error
    ├── RequestTimeout        408 request_timeout            client_error (+ connection: close)
    ├── PayloadTooLarge       413 request_too_large          client_error
    ├── RateLimited           429 rate_limit_exceeded        client_error (+ Retry-After)
    │   └── BudgetExceeded    429 budget_exceeded
    ├── NoHealthyUpstream     503 no_healthy_upstream        unavailable
    ├── PolicyUnavailable     503 policy_unavailable         unavailable
    ├── StoreUnavailable      503 store_unavailable          unavailable (+ Retry-After)
    │   └── LimitsUnavailable 503 limits_unavailable         (limits set to fail closed)
    ├── Overloaded            503 server_overloaded          unavailable (the connection cap)
    ├── ShuttingDown          503 server_shutting_down       unavailable (cut at the deadline)
    └── UpstreamError         502 an upstream failed; ``kind`` labels effgate_upstream_errors_total
        ├── UpstreamStatusError 502 the upstream's own 4xx/5xx, passed through as it came
        ├── UpstreamUnavailable 502 upstream_unavailable     upstream_error
        │   ├── ConnectFailed   502 (kind connect)
        │   ├── ProtocolFailed  502 (kind protocol)
        │   └── StreamCut       502 stream_interrupted (kind stream_cut)
        └── UpstreamTimeout     504 upstream_timeout         timeout
            └── TimedOut        504 (kind timeout)

Code raises these and never renders an error itself; ``gateway.lifecycle`` maps each to its
outcome (the ``outcome`` attribute) and sends its ``body()`` and ``headers()``, in one place.
Upstream clients turn their library's exceptions into the ``UpstreamError`` leaves in one seam each
(``map_*_errors`` in ``gateway.upstreams``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import orjson

Outcome = Literal[
    "ok",
    "client_error",
    "upstream_error",
    "timeout",
    "unavailable",
    "stream_error",
    "cancelled",
    "internal_error",
]
ErrorKind = Literal[
    "connect", "timeout", "status_429", "status_4xx", "status_5xx", "stream_cut", "protocol"
]


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    outcome: Outcome = "internal_error"

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
    code: str | None = None
    outcome: Outcome = "client_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ArrayTooLong(InvalidRequest):
    code = "array_above_max_length"


class IntegerTooLarge(InvalidRequest):
    code = "integer_above_max_value"


class TooDeep(InvalidRequest):
    """The body parsed (orjson reads 1024 levels) but nests too deeply to be written again
    (orjson writes 254): to an upstream, or counted for a limit. Raised where it is encoded,
    so well-formed requests pay for no depth check."""

    def __init__(
        self,
        message: str = "The request's JSON is nested too deeply: at most 254 levels of arrays"
        " and objects.",
        *,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)


class RequestTimeout(GatewayError):
    """The client did not send its whole body in time; the connection is closed after this."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    outcome: Outcome = "client_error"

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "connection": "close"}


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    outcome: Outcome = "client_error"


class Forbidden(GatewayError):
    """A valid key asking for what its tenant may not use (a route, a model, a bar, admin)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"
    outcome: Outcome = "client_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    outcome: Outcome = "client_error"


class RequestNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "request_not_found"
    outcome: Outcome = "client_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    outcome: Outcome = "client_error"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome: Outcome = "client_error"

    def __init__(self, message: str, *, retry_after_s: int = 1, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "retry-after": str(self.retry_after_s)}


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class NoHealthyUpstream(GatewayError):
    status = 503
    type = "upstream_error"
    code = "no_healthy_upstream"
    outcome: Outcome = "unavailable"


class PolicyUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "policy_unavailable"
    outcome: Outcome = "unavailable"


class StoreUnavailable(GatewayError):
    """The shared store (Redis) did not answer a call whose answer only it may hold (a request
    served by another replica); retrying soon is likely to work."""

    status = 503
    type = "server_error"
    code = "store_unavailable"
    outcome: Outcome = "unavailable"

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "retry-after": "1"}


class LimitsUnavailable(StoreUnavailable):
    """The shared budget store is unreachable and limits are set to fail closed."""

    code = "limits_unavailable"


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "server_overloaded"
    outcome: Outcome = "unavailable"


class ShuttingDown(GatewayError):
    status = 503
    type = "server_error"
    code = "server_shutting_down"
    outcome: Outcome = "unavailable"


class UpstreamError(GatewayError):
    """An upstream failed. ``kind`` is its label on ``effgate_upstream_errors_total``."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    outcome: Outcome = "upstream_error"
    kind: ErrorKind = "protocol"

    @property
    def retryable(self) -> bool:
        """Worth another try on the same upstream: connect failures (here), 429 and 5xx."""
        return False


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error: its status, (bounded) body and a few headers
    go to the client as they came, with ``x-effgate-upstream`` naming the model."""

    def __init__(
        self,
        message: str = "",
        *,
        param: str | None = None,
        status: int | None = None,
        raw_body: bytes | None = None,
        upstream_headers: Mapping[str, str] | None = None,
    ) -> None:
        if status is not None:
            self.status = status
        super().__init__(message or f"upstream returned HTTP {self.status}", param=param)
        self.raw_body = raw_body
        self.upstream_headers = dict(upstream_headers or {})
        if self.status == 429:
            self.kind = "status_429"
        else:
            self.kind = "status_5xx" if self.status >= 500 else "status_4xx"
        self.outcome = "client_error" if self.kind == "status_4xx" else "upstream_error"

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500

    def headers(self) -> dict[str, str]:
        return {**self.upstream_headers, **self.extra_headers}

    def body(self) -> bytes:
        return self.raw_body if self.raw_body is not None else super().body()


def upstream_status(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """The pass-through error for an upstream's HTTP ``status`` answer."""
    return UpstreamStatusError(status=status, raw_body=body, upstream_headers=headers)


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ConnectFailed(UpstreamUnavailable):
    kind: ErrorKind = "connect"

    @property
    def retryable(self) -> bool:
        return True


class ProtocolFailed(UpstreamUnavailable):
    kind: ErrorKind = "protocol"


class StreamCut(UpstreamUnavailable):
    code = "stream_interrupted"
    kind: ErrorKind = "stream_cut"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    outcome: Outcome = "timeout"
    kind: ErrorKind = "timeout"


class TimedOut(UpstreamTimeout):
    kind: ErrorKind = "timeout"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI error wire shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def internal_error_body(request_id: str) -> bytes:
    """The body of an unexpected failure: generic, with the request id to find it in the log."""
    return error_body(
        f"The gateway hit an internal error (request {request_id}).",
        "server_error",
        "internal_error",
    )
