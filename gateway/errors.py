"""OpenAI-style errors: one exception type and the middleware that renders it.

Every failure leaves the gateway as ``{"error": {"message", "type", "param", "code"}}``
with the right status. Nothing else (no traceback, no repr) ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from media.errors import MediaError
from protocol.openai import RequestValidationError

log = logging.getLogger("acore.gateway")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    426: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
}


def error_type(status: int) -> str:
    """The OpenAI error type of an HTTP status."""
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class GatewayError(Exception):
    """An error with everything needed to answer the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type(status)
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def body_for_path(path: str, status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """An error body in the shape of the door ``path`` belongs to: Anthropic's under /v1/messages, else
    OpenAI's. For answers made below the app (connection limits, aiohttp's own 400s), which no door renders."""
    from gateway.doors.messages.errors import anthropic_error_body, is_messages_path  # it imports this module

    if is_messages_path(path):
        return anthropic_error_body(status, message)
    return GatewayError(status, message, code=code).body()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def model_not_found(message: str) -> GatewayError:
    return GatewayError(404, message, param="model", code="model_not_found")


def invalid(exc: RequestValidationError) -> GatewayError:
    """A request body that failed validation (protocol/) as a 400 naming the parameter."""
    return bad_request(exc.message, param=exc.param)


def from_media(exc: MediaError, param: str = "messages") -> GatewayError:
    """An attachment error (media/ knows nothing of the gateway) as the client's error."""
    return GatewayError(exc.status, exc.message, param=exc.param or param, code=exc.code)


def not_implemented(message: str) -> GatewayError:
    return GatewayError(501, message, code="not_implemented")


# Doors whose errors have a shape of their own (the Anthropic door, doors/messages/errors.py) register
# (path test, renderer) here; every other path gets the OpenAI error object.
ErrorShape = tuple[Callable[[str], bool], Callable[[GatewayError], web.Response]]
ERROR_SHAPES: web.AppKey[list[ErrorShape]] = web.AppKey("error_shapes")


def render(request: web.Request, error: GatewayError) -> web.Response:
    """The error as the door of ``request.path`` writes errors."""
    for matches, renderer in request.app.get(ERROR_SHAPES, ()):
        if matches(request.path):
            return renderer(error)
    return error.response()


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return render(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            message = f"Request body too large: {exc.text}."
        elif exc.status == 404:
            message = f"Unknown route {request.method} {request.path}."
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}."
        else:
            message = exc.reason or "Request failed."
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return render(request, GatewayError(exc.status, message, headers=headers))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request, GatewayError(500, "Internal server error.", type="server_error"))
