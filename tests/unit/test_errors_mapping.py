"""gateway.errors and the upstream error mapping in gateway.providers.http."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError, bad_request, model_not_found, not_implemented
from gateway.providers.http import connection_error, timeout_error, upstream_error


def test_error_body_shape() -> None:
    error = GatewayError(400, "bad thing", param="messages", code="x")
    assert error.body() == {"error": {"message": "bad thing", "type": "invalid_request_error",
                                      "param": "messages", "code": "x"}}
    response = error.response()
    assert response.status == 400 and response.content_type == "application/json"
    assert orjson.loads(response.body) == error.body()  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "invalid_request_error"),
                                              (429, "rate_limit_error"), (500, "server_error"),
                                              (502, "server_error"), (504, "server_error"),
                                              (501, "not_implemented_error")])
def test_type_by_status(status: int, kind: str) -> None:
    assert GatewayError(status, "m").type == kind


def test_helpers() -> None:
    assert bad_request("m", param="n").status == 400
    found = model_not_found("no such model")
    assert (found.status, found.code, found.param) == (404, "model_not_found", "model")
    assert not_implemented("later").status == 501


def test_upstream_4xx_kept_with_message_and_code() -> None:
    payload = orjson.dumps({"error": {"message": "Invalid 'messages'", "type": "invalid_request_error",
                                      "param": "messages", "code": "bad_messages"}})
    error = upstream_error("openai", 422, payload, {})
    assert (error.status, error.message, error.param, error.code) == (422, "Invalid 'messages'", "messages", "bad_messages")


def test_upstream_5xx_becomes_502_naming_provider() -> None:
    error = upstream_error("vllm", 500, b"<html>oops</html>", {})
    assert error.status == 502 and error.type == "server_error" and "vllm" in error.message


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_kept_or_defaulted(status: int) -> None:
    assert upstream_error("openai", status, b"{}", {"Retry-After": "30"}).headers["Retry-After"] == "30"
    assert upstream_error("openai", status, b"{}", {}).headers["Retry-After"] == "1"
    assert upstream_error("openai", status, b"{}", {}).status == status


def test_429_type_is_rate_limit_when_upstream_says_nothing() -> None:
    assert upstream_error("openai", 429, b"slow down", {}).type == "rate_limit_error"


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b'{"error": "plain"}', b'{"detail": 1}',
                                     b'{"error": {"message": 5}}', b"\xff\xfe"])
def test_odd_payloads_never_crash(payload: bytes) -> None:
    error = upstream_error("openai", 400, payload, {})
    assert error.status == 400 and isinstance(error.message, str) and error.message


def test_upstream_message_is_bounded() -> None:
    error = upstream_error("openai", 400, b"x" * 100_000, {})
    assert len(error.message) <= 1000


def test_connection_and_timeout_errors() -> None:
    refused = connection_error("lmstudio", "http://127.0.0.1:1/v1", ConnectionRefusedError())
    assert refused.status == 502 and "lmstudio" in refused.message and refused.code == "upstream_unreachable"
    timeout = timeout_error("openai", "no response headers")
    assert timeout.status == 504 and "openai" in timeout.message
