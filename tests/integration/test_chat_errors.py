"""Every failure of POST /v1/chat/completions is an OpenAI error object with the right status.

Bad inputs (security notes table C), upstream faults (table B), and after each the gateway
must still serve a normal request.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.http import Reply
from tests.procs import Proc, free_port, start_gateway

USER = [{"role": "user", "content": "x"}]


def post(proc: Proc, body: Any = None, *, content: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    return http.post(proc.url + "/v1/chat/completions", body, content=content, headers=headers, timeout=timeout)


def error_of(answer: Reply) -> dict[str, Any]:
    """The OpenAI error object, checked for shape; never a traceback."""
    assert "Traceback" not in answer.text and "<" not in answer.text[:1], answer.text
    data = answer.json()
    assert set(data) == {"error"}, data
    assert set(data["error"]) == {"message", "type", "param", "code"}, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    return data["error"]


def still_serving(proc: Proc) -> None:
    answer = post(proc, {"model": "openai/echo", "messages": [{"role": "user", "content": "alive?"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo: alive?"


# ---------------------------------------------------------------- bad inputs (C1, C2, C4, C5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "openai/echo", "messages": "hello"}, "messages"),
        ({"model": "openai/echo", "messages": USER, "n": 10**9}, "n"),
        ({"model": "openai/echo", "messages": USER, "max_tokens": -1}, "max_tokens"),
        ({"model": "openai/echo", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "openai/echo", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "openai/echo"}, "messages"),
        ({"model": "openai/echo", "messages": []}, "messages"),
        ({"model": "openai/echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "openai/echo", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": 42, "messages": USER}, "model"),
    ],
)
def test_wrong_types_are_400_with_param(gateway: Proc, body: dict[str, Any], param: str) -> None:
    answer = post(gateway, body)
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_missing_model_without_default_is_400(gateway: Proc) -> None:
    answer = post(gateway, {"messages": USER})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["param"] == "model"
    assert "ABSTRACTCORE_DEFAULT_PROVIDER" in error["message"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b'"just a string"', b"", b"null", b"{\"model\": \"openai/echo\",}",
     b"\xff\xfe\x00garbage"],
)
def test_malformed_bodies_are_400(gateway: Proc, content: bytes) -> None:
    answer = post(gateway, content=content)
    assert answer.status_code == 400, answer.text
    assert error_of(answer)["type"] == "invalid_request_error"
    still_serving(gateway)


def test_deep_nesting_is_400_without_traceback(gateway: Proc) -> None:
    for content in (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 100_000 + b"]" * 100_000,
                    b'{"model":"openai/echo","messages":[{"role":"user","content":"x","x":' + b"[" * 100_000
                    + b"]" * 100_000 + b"}]}"):
        answer = post(gateway, content=content)
        assert answer.status_code == 400, answer.text[:300]
        assert "Recursion" not in answer.text
        error_of(answer)
    still_serving(gateway)


def test_multipart_content_type_refused(gateway: Proc) -> None:
    answer = post(gateway, content=b"--x\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert answer.status_code in (400, 415)
    error_of(answer)


def test_body_over_32mb_is_413(gateway: Proc) -> None:
    # valid JSON padded with whitespace past the 32 MiB cap
    content = b'{"model":"openai/echo","messages":[{"role":"user","content":"x"}]}' + b" " * (33 * 1024 * 1024)
    answer = post(gateway, content=content, timeout=60)
    assert answer.status_code == 413
    assert error_of(answer)["type"] == "invalid_request_error"
    still_serving(gateway)


def test_chunked_body_over_cap_is_413(gateway: Proc) -> None:
    """No Content-Length: the cap applies while reading."""
    with socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b" " * (1 << 20)
        status = b""
        try:
            for _ in range(40):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = sock.recv(200)
    assert status.startswith(b"HTTP/1.1 413"), status
    still_serving(gateway)


def test_announced_huge_body_is_413_at_once(gateway: Proc) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1073741824\r\n\r\n{\"model\"")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"error"' in head or b"Content-Length" in head
    assert time.monotonic() - started < 5  # not after a body-read deadline
    still_serving(gateway)


@pytest.mark.parametrize("model", ["nosuch/echo", "../model"])
def test_unknown_provider_is_404_model_not_found(gateway: Proc, model: str) -> None:
    answer = post(gateway, {"model": model, "messages": USER})
    assert answer.status_code == 404
    error = error_of(answer)
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"


def test_empty_model_part_is_400(gateway: Proc) -> None:
    answer = post(gateway, {"model": "openai/", "messages": USER})
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "model"


def test_model_without_prefix_names_default_setting(gateway: Proc) -> None:
    answer = post(gateway, {"model": "gpt-4o", "messages": USER})
    assert answer.status_code == 404
    error = error_of(answer)
    assert error["code"] == "model_not_found"
    assert "ABSTRACTCORE_DEFAULT_PROVIDER" in error["message"]


def test_too_many_messages_is_400(gateway: Proc) -> None:
    answer = post(gateway, {"model": "openai/echo", "messages": [{"role": "user", "content": "x"}] * 10_001})
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "messages"


def test_unknown_route_and_method(gateway: Proc) -> None:
    answer = http.get(gateway.url + "/v1/nothing-here", timeout=10)
    assert answer.status == 404
    answer = http.get(gateway.url + "/v1/chat/completions", timeout=10)
    assert answer.status == 405
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------- upstream faults (B2, B4)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_upstream_4xx_passed_through(gateway: Proc, status: int) -> None:
    for stream in (False, True):
        answer = post(gateway, {"model": f"openai/error-{status}", "messages": USER, "stream": stream})
        assert answer.status_code == status
        error = error_of(answer)
        assert error["message"] == f"fake upstream error {status}"
        assert error["code"] == f"code_{status}"


@pytest.mark.parametrize("status", [500, 502, 504])
def test_upstream_5xx_is_502(gateway: Proc, status: int) -> None:
    answer = post(gateway, {"model": f"openai/error-{status}", "messages": USER})
    assert answer.status_code == 502
    error = error_of(answer)
    assert error["type"] == "server_error" and "openai" in error["message"]
    still_serving(gateway)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_kept(gateway: Proc, status: int) -> None:
    for stream in (False, True):
        answer = post(gateway, {"model": f"openai/error-{status}", "messages": USER, "stream": stream})
        assert answer.status_code == status
        assert answer.headers["Retry-After"] == "7"
        error_of(answer)


def test_sdk_sees_typed_errors(gateway: Proc) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nosuch/x", messages=USER)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="openai/error-429", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="openai/echo", messages=USER, n=10**9)


def test_redirect_not_followed(gateway: Proc, fake_openai: Proc) -> None:
    answer = post(gateway, {"model": "openai/redirect", "messages": USER})
    assert answer.status_code == 502
    assert "redirect" in error_of(answer)["message"]


@pytest.mark.parametrize("model", ["mid-error", "garbage", "no-finish", "cut"])
def test_stream_failing_midway_ends_with_one_error_then_done(gateway: Proc, model: str) -> None:
    answer = post(gateway, {"model": f"openai/{model}", "messages": USER, "stream": True})
    assert answer.status_code == 200
    events = answer.sse_data()
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    errors = [e for e in events[:-1] if "error" in json.loads(e)]
    assert len(errors) == 1 and errors[0] == events[-2]
    error = json.loads(errors[0])["error"]
    assert error["type"] == "server_error" and "openai" in error["message"]
    still_serving(gateway)


def test_stream_ending_without_done_is_complete(gateway: Proc) -> None:
    """An upstream that closes the body after finish_reason but before [DONE] (seen in the wild)."""
    answer = post(gateway, {"model": "openai/no-done", "messages": USER, "stream": True}, timeout=10)
    assert answer.status_code == 200
    events = answer.sse_data()
    assert events[-1] == "[DONE]"
    assert not any("error" in json.loads(e) for e in events[:-1])
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


def test_missing_key_is_401_naming_variable(fake_openai: Proc, tmp_path: Path) -> None:
    proc = start_gateway(tmp_path, {"OPENAI_BASE_URL": fake_openai.url + "/v1"})
    try:
        answer = post(proc, {"model": "openai/echo", "messages": USER})
        assert answer.status_code == 401
        error = error_of(answer)
        assert "OPENAI_API_KEY" in error["message"] and error["type"] == "authentication_error"
        # the client's own key works instead
        answer = post(proc, {"model": "openai/echo", "messages": USER},
                      headers={"X-Provider-API-Key": "sk-client-provided-1"})
        assert answer.status_code == 200
    finally:
        proc.stop()


# ---------------------------------------------------------------- gateways with other settings


@pytest.fixture(scope="module")
def short_timeouts(log_dir: Path, fake_openai: Proc) -> Iterator[Proc]:
    config = log_dir / "short-timeouts.toml"
    config.write_text("[limits]\nfirst_byte_timeout_s = 1\nstream_idle_timeout_s = 1\n")
    refused = free_port()  # nothing listens there
    proc = start_gateway(log_dir, {
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_API_KEY": "sk-test-server-key-123456",
        "VLLM_BASE_URL": f"http://127.0.0.1:{refused}/v1",
        "ABSTRACTCORE_DEFAULT_PROVIDER": "openai",
        "ABSTRACTCORE_DEFAULT_MODEL": "echo",
    }, extra_args=["--config", str(config)])
    yield proc
    proc.stop()


def test_stall_before_headers_is_504(short_timeouts: Proc) -> None:
    for stream in (False, True):
        started = time.monotonic()
        answer = post(short_timeouts, {"model": "openai/stall", "messages": USER, "stream": stream})
        assert answer.status_code == 504
        error = error_of(answer)
        assert error["type"] == "server_error" and "openai" in error["message"]
        assert time.monotonic() - started < 20
    still_serving(short_timeouts)


def test_stall_mid_stream_ends_with_error_event(short_timeouts: Proc) -> None:
    answer = post(short_timeouts, {"model": "openai/stall-mid", "messages": USER, "stream": True})
    assert answer.status_code == 200
    events = answer.sse_data()
    assert events[-1] == "[DONE]"
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert len(errors) == 1 and "timed out" in errors[0]["message"]
    still_serving(short_timeouts)


def test_connection_refused_is_502_naming_provider(short_timeouts: Proc) -> None:
    for stream in (False, True):
        answer = post(short_timeouts, {"model": "vllm/some-model", "messages": USER, "stream": stream})
        assert answer.status_code == 502
        error = error_of(answer)
        assert "vllm" in error["message"] and error["code"] == "upstream_unreachable"
    still_serving(short_timeouts)


def test_default_provider_and_model(short_timeouts: Proc, fake_openai: Proc) -> None:
    bare = post(short_timeouts, {"model": "echo", "messages": [{"role": "user", "content": "bare"}]})
    assert bare.status_code == 200, bare.text
    assert bare.json()["model"] == "echo"
    missing = post(short_timeouts, {"messages": [{"role": "user", "content": "none"}]})
    assert missing.status_code == 200, missing.text
    assert missing.json()["model"] == "openai/echo"
    assert missing.json()["choices"][0]["message"]["content"] == "echo: none"
