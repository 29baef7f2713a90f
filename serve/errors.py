"""serve's exceptions and the one function that turns any carecycle error into HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from feedback.errors import CarecycleError, ConflictError, NotFoundError, StoreBusyError, StoreError, StoreUnavailableError
from serve.protocol import ErrorDetail, ErrorResponse

if TYPE_CHECKING:  # the engines raise these errors without loading the web framework
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse


class InvalidRequestError(CarecycleError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class EngineUnavailableError(CarecycleError):
    """The engine cannot answer now (not loaded, crashed, out of memory, unreachable)."""


class ModelLoadError(CarecycleError):
    """The model folder is missing or unreadable."""


class AdapterError(CarecycleError):
    """An adapter that cannot be loaded, activated or unloaded."""


class AuthenticationError(CarecycleError):
    """No credentials, or credentials that match no account."""


class PermissionDeniedError(CarecycleError):
    """A signed-in account whose role does not allow the action."""


class RateLimitedError(CarecycleError):
    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(CarecycleError):
    """A request body over the configured limit."""


_STATUS: dict[type[CarecycleError], tuple[int, str]] = {
    InvalidRequestError: (422, "invalid_request_error"),
    NotFoundError: (404, "not_found_error"),
    ConflictError: (409, "conflict_error"),
    EngineUnavailableError: (503, "engine_unavailable_error"),
    ModelLoadError: (503, "engine_unavailable_error"),
    AdapterError: (409, "adapter_error"),
    AuthenticationError: (401, "authentication_error"),
    PermissionDeniedError: (403, "permission_error"),
    RateLimitedError: (429, "rate_limit_error"),
    PayloadTooLargeError: (413, "payload_too_large_error"),
    StoreError: (503, "store_error"),
}


def error_payload(exc: CarecycleError) -> tuple[int, ErrorResponse]:
    """The HTTP status and OpenAI-shaped error body for a carecycle exception."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            status, kind = _STATUS[cls]
            break
    else:
        status, kind = 500, "internal_error"
    detail = ErrorDetail(message=str(exc), type=kind, param=getattr(exc, "param", None), code=status)
    return status, ErrorResponse(error=detail)


def error_response(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _error_headers(exc: CarecycleError) -> dict[str, str] | None:
    if isinstance(exc, AuthenticationError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, (RateLimitedError, StoreBusyError, StoreUnavailableError)):
        return {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return None


async def carecycle_error_handler(_: Request, exc: CarecycleError) -> JSONResponse:
    return error_response(*error_payload(exc), headers=_error_headers(exc))


async def validation_error_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 in the same shape as every other error, naming each offending field."""
    fields = [(".".join(str(part) for part in err["loc"] if part != "body"), err["msg"]) for err in exc.errors()]
    detail = ErrorDetail(
        message="invalid request — " + "; ".join(f"{where or 'body'}: {msg}" for where, msg in fields),
        type="invalid_request_error",
        param=(fields[0][0] or None) if fields else None,
        code=422,
    )
    return error_response(422, ErrorResponse(error=detail))


ERROR_RESPONSES = {
    status: {"model": ErrorResponse}
    for status in (401, 403, 404, 409, 413, 422, 429, 503)
}
