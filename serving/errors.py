"""OpenAI-shaped errors shared by the engine and the gateway.

Both servers answer every failure with ``{"error": {"message", "type", "param", "code"}}`` as
the OpenAI API and vLLM do, so a client sees the same shape whichever hop failed. Domain code
raises :class:`ServingError` subclasses carrying the offending field; :func:`error_response`
is the one place they become HTTP.
"""

from __future__ import annotations

import json
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response


class ServingError(Exception):
    """A request-level failure with an HTTP status and an OpenAI error type."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(ServingError):
    status_code = 400
    error_type = "invalid_request_error"


class RequestTooLarge(ServingError):
    status_code = 413
    error_type = "invalid_request_error"


class Unauthorized(ServingError):
    status_code = 401
    error_type = "authentication_error"


class NotFound(ServingError):
    status_code = 404
    error_type = "not_found_error"


class Unavailable(ServingError):
    status_code = 503
    error_type = "service_unavailable"


class Overloaded(ServingError):
    """More work than can be taken now: shed at once with 429 and ``Retry-After``, so a
    client backs off instead of waiting in a queue without bound. Never a backend fault."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        retry_after_s: float = 1.0,
        param: str | None = None,
        code: str = "overloaded",
    ) -> None:
        super().__init__(message, param, code)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


def error_body(
    status: int, message: str, error_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json.dumps(payload).encode()


def error_response(exc: ServingError) -> Response:
    body = error_body(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)
    headers = {"Retry-After": exc.retry_after} if isinstance(exc, Overloaded) else None
    return Response(
        body, status_code=exc.status_code, media_type="application/json", headers=headers
    )


def status_error_response(status: int, message: str) -> Response:
    """Errors raised by the HTTP layer itself (unknown path, wrong method)."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }
    body = error_body(status, message, kinds.get(status, "internal_error"), code=str(status))
    return Response(body, status_code=status, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error an OpenAI-compatible app can raise to the OpenAI error shape."""

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        # param is the top-level field, as OpenAI reports it; the message has the full path
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())[1:]]
        param = loc[0] if loc else None
        where = f"`{'.'.join(loc)}`: " if loc else ""
        return error_response(
            InvalidRequest(f"invalid request: {where}{first.get('msg', exc)}", param)
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        return status_error_response(exc.status_code, str(exc.detail))
