"""Errors on the Anthropic door in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

The gateway's errors are ``GatewayError`` everywhere; on /v1/messages paths they are rendered
here instead of as OpenAI error objects, with Anthropic's statuses (an overloaded upstream is
529, as Anthropic answers it), both as the HTTP answer and as a stream's ``event: error``.
``anthropic_error_body`` needs no aiohttp app, so the low-level HTTP error handling can use it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError

MESSAGES_PATH = "/v1/messages"  # and /v1/messages/count_tokens below it

# Anthropic's error types and the status Anthropic answers each with.
STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_TYPE_OF_STATUS = {status: kind for kind, status in STATUS_OF_TYPE.items()}
_TYPE_OF_STATUS.update({503: "overloaded_error", 408: "timeout_error"})


def is_messages_path(path: str) -> bool:
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type of an HTTP status (4xx it has no name for are invalid requests)."""
    if status in _TYPE_OF_STATUS:
        return _TYPE_OF_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def _shape(error: GatewayError) -> tuple[int, dict[str, Any]]:
    """Status and body of a GatewayError on this door. An upstream Anthropic error keeps its own type
    (the Anthropic provider puts it in ``code``); an overloaded one is answered 529, as Anthropic does."""
    kind = error.code if error.code in STATUS_OF_TYPE else anthropic_error_type(error.status)
    status = STATUS_OF_TYPE["overloaded_error"] if kind == "overloaded_error" else error.status
    return status, {"type": "error", "error": {"type": kind, "message": error.message}}


def error_event(error: GatewayError) -> dict[str, Any]:
    """The ``event: error`` payload of a stream that fails midway."""
    return _shape(error)[1]


def error_response(error: GatewayError) -> web.Response:
    status, body = _shape(error)
    headers = dict(error.headers)
    if status in (429, 529) and "Retry-After" not in headers:
        headers["Retry-After"] = "1"
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)
