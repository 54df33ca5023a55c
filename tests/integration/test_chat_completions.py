"""POST /v1/chat/completions through a real gateway process to the fake OpenAI upstream.

Driven by the official ``openai`` SDK (max_retries=0) for the happy paths; the fake's
recorded requests (GET /_requests) prove what went upstream.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest

from tests import http
from tests.http import Reply
from tests.procs import Proc

PROVIDERS = [
    ("openai/echo", "echo"),
    ("openrouter/anthropic/claude-3.5-sonnet", "anthropic/claude-3.5-sonnet"),
    ("lmstudio/echo", "echo"),
    ("vllm/echo", "echo"),
    ("openai-compatible/echo", "echo"),
]


def client_for(proc: Proc, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key=kwargs.pop("api_key", "client-bearer-xyz"),
                         max_retries=0, timeout=30, **kwargs)


def marker() -> str:
    return "m-" + uuid.uuid4().hex


def upstream_record(fake: Proc, mark: str) -> dict[str, Any]:
    """The one request the fake upstream saw whose messages carry ``mark``."""
    found = [r for r in http.records(fake) if r["body"] and mark in json.dumps(r["body"].get("messages"))]
    assert len(found) == 1, f"expected one upstream request carrying {mark}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize(("model", "upstream_model"), PROVIDERS)
def test_non_streaming_each_provider(gateway: Proc, fake_openai: Proc, model: str, upstream_model: str) -> None:
    mark = marker()
    answer = client_for(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"hello {mark}"}]
    )
    assert answer.choices[0].message.content == f"echo: hello {mark}"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == model  # what the client asked, not the upstream's name
    assert answer.usage is not None and answer.usage.total_tokens == 8
    record = upstream_record(fake_openai, mark)
    assert record["body"]["model"] == upstream_model
    assert "stream" not in record["body"]


@pytest.mark.parametrize(("model", "upstream_model"), PROVIDERS)
def test_streaming_each_provider(gateway: Proc, fake_openai: Proc, model: str, upstream_model: str) -> None:
    mark = marker()
    chunks = list(client_for(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"one two {mark}"}], stream=True
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: one two {mark}"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.model == model for c in chunks)
    record = upstream_record(fake_openai, mark)
    assert record["body"]["model"] == upstream_model
    assert record["body"]["stream"] is True


def post(proc: Proc, body: Any = None, *, content: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """A raw POST /v1/chat/completions (no client library to trust)."""
    return http.post(proc.url + "/v1/chat/completions", body, content=content, headers=headers)


def raw_stream(proc: Proc, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Reply, list[str]]:
    """POST and return the response and its ``data:`` payloads, in order (the [DONE] included)."""
    response = post(proc, body, headers=headers)
    return response, response.sse_data()


def test_first_chunk_role_and_done(gateway: Proc) -> None:
    response, events = raw_stream(gateway, {"model": "openai/echo", "stream": True,
                                            "messages": [{"role": "user", "content": "a b"}]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    first = json.loads(events[0])
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_whitespace_deltas_preserved(gateway: Proc) -> None:
    response, events = raw_stream(gateway, {"model": "openai/ws-8", "stream": True,
                                            "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    # role chunk (""), 8 whitespace-only deltas, the finish chunk (no content)
    assert contents[1:9] == [" ", "\n", "\t  ", "  \n ", " ", "\n", "\t  ", "  \n "]


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter", "tool_calls"])
def test_finish_reason_passed_through(gateway: Proc, reason: str) -> None:
    client = client_for(gateway)
    chunks = list(client.chat.completions.create(
        model=f"openai/finish-{reason}", messages=[{"role": "user", "content": "x"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [reason]
    answer = client.chat.completions.create(model=f"openai/finish-{reason}", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].finish_reason == reason


def test_streamed_tool_calls_are_incremental(gateway: Proc) -> None:
    chunks = list(client_for(gateway).chat.completions.create(
        model="openai/tool", messages=[{"role": "user", "content": "weather?"}], stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    ))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 2  # not collapsed into one
    assert deltas[0].id == "call_1" and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_non_streaming_tool_call(gateway: Proc) -> None:
    answer = client_for(gateway).chat.completions.create(
        model="openai/tool", messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and answer.choices[0].finish_reason == "tool_calls"


def test_include_usage_final_chunk(gateway: Proc) -> None:
    chunks = list(client_for(gateway).chat.completions.create(
        model="openai/echo", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True},
    ))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


def test_without_include_usage_no_usage_chunk(gateway: Proc) -> None:
    response, events = raw_stream(gateway, {"model": "openai/echo", "stream": True,
                                            "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert all(json.loads(e)["choices"] for e in events[:-1])


STANDARD_FIELDS: dict[str, Any] = {
    "temperature": 0.3,
    "top_p": 0.9,
    "n": 2,
    "seed": 0,
    "max_tokens": 17,
    "max_completion_tokens": 19,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                "parameters": {"type": "object", "properties": {}}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "parallel_tool_calls": False,
    "logprobs": True,
    "top_logprobs": 3,
    "presence_penalty": -0.5,
    "frequency_penalty": 1.5,
    "logit_bias": {"50256": -100},
    "user": "user-42",
    "metadata": {"k": "v"},
    "stream_options": {"include_usage": True},
}


@pytest.mark.parametrize("stop", ["END", ["a", "b"]])
@pytest.mark.parametrize("stream", [False, True])
def test_standard_and_unknown_fields_forwarded_unchanged(gateway: Proc, fake_openai: Proc, stop: Any,
                                                         stream: bool) -> None:
    mark = marker()
    body: dict[str, Any] = {
        "model": "openai/echo",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": mark}],
        **STANDARD_FIELDS,
        "stop": stop,
        "stream": stream,
        "some_future_field": {"nested": [1, 2, {"x": None}]},
        "store": False,
        "reasoning_effort": "low",
        # ours: never forwarded
        "api_key": "sk-client-body-key-999999",
        "thinking": None,
        "unload_after": False,
        "timeout_s": 30,
    }
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    sent = upstream_record(fake_openai, mark)["body"]
    expected = {k: v for k, v in body.items() if k not in ("api_key", "thinking", "unload_after", "timeout_s")}
    expected["model"] = "echo"
    if not stream:
        # a non-streaming upstream call carries no stream fields at all
        expected.pop("stream")
        expected.pop("stream_options")
    assert sent == expected


def test_base_url_not_forwarded(gateway: Proc, fake_openai: Proc) -> None:
    mark = marker()
    response = post(gateway, {
        "model": "openai/echo", "messages": [{"role": "user", "content": mark}],
        "base_url": fake_openai.url + "/v1", "api_key": "sk-client-own-key-777777"})
    assert response.status_code == 200, response.text
    record = upstream_record(fake_openai, mark)
    assert "base_url" not in record["body"] and "api_key" not in record["body"]
    # the client's own key goes to the client's own base_url
    assert record["headers"].get("Authorization") == "Bearer sk-client-own-key-777777"


def test_stream_chosen_by_body_not_accept(gateway: Proc) -> None:
    response, events = raw_stream(gateway, {"model": "openai/echo", "stream": True,
                                            "messages": [{"role": "user", "content": "x"}]},
                                  headers={"Accept": "application/json"})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    plain = post(gateway, {"model": "openai/echo", "messages": [{"role": "user", "content": "x"}]},
                 headers={"Accept": "text/event-stream"})
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json()["object"] == "chat.completion"


def test_client_bearer_is_not_a_provider_key(gateway: Proc, fake_openai: Proc) -> None:
    """No gateway key configured: the client's Authorization is ignored, the server's key goes upstream."""
    mark = marker()
    client_for(gateway, api_key="sk-client-bearer-should-not-leak").chat.completions.create(
        model="openai/echo", messages=[{"role": "user", "content": mark}])
    headers = upstream_record(fake_openai, mark)["headers"]
    assert headers["Authorization"] == "Bearer sk-test-server-key-123456"
    assert "sk-client-bearer-should-not-leak" not in json.dumps(headers)


def test_x_provider_api_key_header_used(gateway: Proc, fake_openai: Proc) -> None:
    mark = marker()
    client_for(gateway, default_headers={"X-Provider-API-Key": "sk-from-header-555555"}).chat.completions.create(
        model="openai/echo", messages=[{"role": "user", "content": mark}])
    assert upstream_record(fake_openai, mark)["headers"]["Authorization"] == "Bearer sk-from-header-555555"


def test_request_id_echoed(gateway: Proc) -> None:
    simple = {"model": "openai/echo", "messages": [{"role": "user", "content": "x"}]}
    mine = post(gateway, simple, headers={"x-request-id": "my-req-123"})
    generated = post(gateway, simple)
    streamed = post(gateway, {**simple, "stream": True}, headers={"x-request-id": "my-stream-9"})
    failed = post(gateway, content=b"{", headers={"x-request-id": "my-bad-1"})
    assert mine.headers["x-request-id"] == "my-req-123"
    assert generated.headers["x-request-id"].startswith("req_")
    assert streamed.headers["x-request-id"] == "my-stream-9"
    assert failed.headers["x-request-id"] == "my-bad-1"
