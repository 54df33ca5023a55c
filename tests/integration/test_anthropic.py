"""anthropic/… through a real gateway, against the fake Messages API, with the official openai SDK."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from tests import http
from tests.fakes.anthropic_upstream import SIGNATURE, TOOL_INPUT
from tests.http import records
from tests.native import (
    ANTHROPIC_KEY,
    CLIENT_KEY,
    Fakes,
    client,
    wait_for,
)
from tests.procs import Proc

# The fake upstreams and gateways (fixtures: fakes, fresh, native_gateway).
pytest_plugins = ["tests.native_fixtures"]

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def last_messages_request(fakes: Fakes) -> dict:
    hits = [r for r in records(fakes.anthropic) if r["path"] == "/v1/messages"]
    assert hits, "the fake saw no /v1/messages request"
    return hits[-1]


def test_text_request_translation_and_usage(native_gateway: Proc, fresh: Fakes) -> None:
    result = client(native_gateway).chat.completions.create(
        model="anthropic/claude-text",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "first part"},
            {"role": "user", "content": "hello there"},
        ],
        stop="END",
        temperature=1.5,
    )
    assert result.model == "anthropic/claude-text"
    assert result.choices[0].message.content == "echo: first part hello there"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == 12 + 30 + 5
    assert result.usage.completion_tokens == 7
    assert result.usage.prompt_tokens_details.cached_tokens == 30
    assert result.usage.model_dump()["prompt_tokens_details"]["cache_creation_tokens"] == 5

    sent = last_messages_request(fresh)
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    body = sent["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in English."}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "first part"},
                                                              {"type": "text", "text": "hello there"}]}]
    assert body["max_tokens"] == 4096
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0
    assert body["stream"] is True


def test_tools_and_tool_choice_mapping(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    for choice, expected in [("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
                             ({"type": "function", "function": {"name": "get_weather"}},
                              {"type": "tool", "name": "get_weather"})]:
        api.chat.completions.create(model="anthropic/claude-text", messages=[{"role": "user", "content": "hi"}],
                                    tools=TOOLS, tool_choice=choice, max_tokens=50)
        body = last_messages_request(fresh)["body"]
        assert body["tool_choice"] == expected
        assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                  "input_schema": TOOLS[0]["function"]["parameters"]}]
        assert body["max_tokens"] == 50


def test_multi_turn_tool_round_trip(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = api.chat.completions.create(model="anthropic/claude-tool", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.id == "toolu_fake1" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(TOOL_INPUT)

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    messages.append({"role": "user", "content": "Thanks!"})
    second = api.chat.completions.create(model="anthropic/claude-tool", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"

    sent = last_messages_request(fresh)["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_fake1", "name": "get_weather", "input": json.loads(TOOL_INPUT)},
    ]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_fake1", "content": "18C and sunny"},
        {"type": "text", "text": "Thanks!"},
    ]


def test_streaming_tool_calls_incremental(native_gateway: Proc, fresh: Fakes) -> None:
    stream = client(native_gateway).chat.completions.create(
        model="anthropic/claude-tool", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(fragments) > 3, "arguments should arrive in several fragments"
    assert fragments[0].index == 0 and fragments[0].id == "toolu_fake1"
    assert fragments[0].function.name == "get_weather"
    assert all(f.index == 0 and f.id is None for f in fragments[1:])
    assert "".join(f.function.arguments or "" for f in fragments) == TOOL_INPUT
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 47 + 7


def test_images_data_url(native_gateway: Proc, fresh: Fakes) -> None:
    result = client(native_gateway).chat.completions.create(model="anthropic/claude-images", messages=[{
        "role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG}},
        ]}])
    assert result.choices[0].message.content == "images: base64:image/png"
    blocks = last_messages_request(fresh)["body"]["messages"][0]["content"]
    assert blocks[1]["type"] == "image"
    source = blocks[1]["source"]
    assert source["type"] == "base64" and source["media_type"] == "image/png"
    assert base64.b64decode(source["data"]).startswith(b"\x89PNG")  # the media layer may re-encode it
    # http(s) image URLs are fetched by the attachments subsystem before providers see them; the
    # url-source mapping for any that reach the adapter is covered in tests/unit/test_native_translation.py.


def test_thinking_levels_and_reasoning_content(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    raw = api.chat.completions.with_raw_response.create(
        model="anthropic/claude-think", messages=[{"role": "user", "content": "hi"}], max_tokens=1000,
        temperature=0.3, extra_body={"thinking": "high"})
    result = raw.parse()
    assert result.choices[0].message.content == "echo: hi"
    assert result.choices[0].message.model_dump()["reasoning_content"] == "The user wants an echo. Simple. "
    body = last_messages_request(fresh)["body"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert body["max_tokens"] > 16384 and "temperature" not in body
    notice = raw.headers.get("x-acore-notice", "")
    assert "max_tokens raised" in notice and "temperature dropped" in notice

    stream = api.chat.completions.create(model="anthropic/claude-think", messages=[{"role": "user", "content": "hi"}],
                                         stream=True, extra_body={"thinking": "low"})
    chunks = list(stream)
    reasoning = "".join(c.choices[0].delta.model_dump().get("reasoning_content") or "" for c in chunks if c.choices)
    assert reasoning == "The user wants an echo. Simple. "
    assert last_messages_request(fresh)["body"]["thinking"]["budget_tokens"] == 1024

    for off in (False, "off"):
        api.chat.completions.create(model="anthropic/claude-text", messages=[{"role": "user", "content": "x"}],
                                    extra_body={"thinking": off})
        assert "thinking" not in last_messages_request(fresh)["body"]


@pytest.mark.parametrize(("model", "finish"), [("claude-maxtok", "length"), ("claude-stopseq", "stop"),
                                               ("claude-text", "stop")])
def test_stop_reasons(native_gateway: Proc, fresh: Fakes, model: str, finish: str) -> None:
    api = client(native_gateway)
    result = api.chat.completions.create(model=f"anthropic/{model}", messages=[{"role": "user", "content": "go"}])
    assert result.choices[0].finish_reason == finish
    chunks = list(api.chat.completions.create(model=f"anthropic/{model}", messages=[{"role": "user", "content": "go"}],
                                              stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [finish]


def test_errors_map_to_openai_statuses(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.InternalServerError) as overloaded:
        api.chat.completions.create(model="anthropic/claude-overloaded", messages=messages)
    assert overloaded.value.status_code == 503
    assert overloaded.value.response.headers.get("retry-after")
    with pytest.raises(openai.BadRequestError) as invalid:
        api.chat.completions.create(model="anthropic/claude-invalid", messages=messages)
    assert "roles must alternate" in invalid.value.message
    with pytest.raises(openai.AuthenticationError) as auth:
        api.chat.completions.create(model="anthropic/claude-text", messages=messages,
                                    extra_headers={"X-Provider-API-Key": "bad-key"})
    assert auth.value.status_code == 401
    with pytest.raises(openai.APIStatusError) as stalled:
        api.chat.completions.create(model="anthropic/claude-stall", messages=messages, extra_body={"timeout_s": 1})
    assert stalled.value.status_code == 504
    # An error event after the stream started: the SDK raises on the error frame.
    stream = api.chat.completions.create(model="anthropic/claude-midstream", messages=messages, stream=True)
    with pytest.raises(openai.APIError) as mid:
        for _ in stream:
            pass
    assert "Overloaded" in str(mid.value.message)


def test_client_api_key_is_used_and_never_logged(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    api.chat.completions.create(model="anthropic/claude-text", messages=[{"role": "user", "content": "k"}],
                                extra_headers={"X-Provider-API-Key": CLIENT_KEY})
    assert last_messages_request(fresh)["headers"]["x-api-key"] == CLIENT_KEY
    api.chat.completions.create(model="anthropic/claude-text", messages=[{"role": "user", "content": "k"}],
                                extra_body={"api_key": CLIENT_KEY})
    assert last_messages_request(fresh)["headers"]["x-api-key"] == CLIENT_KEY
    with pytest.raises(openai.AuthenticationError) as auth:
        api.chat.completions.create(model="anthropic/claude-text", messages=[{"role": "user", "content": "k"}],
                                    extra_body={"api_key": "bad-key"})
    assert "bad-key" not in auth.value.message
    log = native_gateway.log()
    assert '"path":"/v1/chat/completions"' in log.replace(" ", "")  # debug request lines are there
    assert CLIENT_KEY not in log and ANTHROPIC_KEY not in log


def test_client_disconnect_cancels_upstream(native_gateway: Proc, fresh: Fakes) -> None:
    stream = client(native_gateway).chat.completions.create(
        model="anthropic/claude-slow", messages=[{"role": "user", "content": "go"}], stream=True)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    started = time.monotonic()
    hit = wait_for(lambda: last_messages_request(fresh).get("cancelled"), timeout=5)
    assert hit, "the upstream request was not cancelled after the client went away"
    assert time.monotonic() - started < 5


def test_models_and_providers_list_anthropic(native_gateway: Proc, fresh: Fakes) -> None:
    ids = {m.id for m in client(native_gateway).models.list()}
    assert {"anthropic/claude-text", "anthropic/claude-tool"} <= ids
    providers = {p["name"]: p for p in http.get_json(native_gateway.url + "/providers", timeout=10)["providers"]}
    assert providers["anthropic"]["status"] == "available"
    models_hit = [r for r in records(fresh.anthropic) if r["path"] == "/v1/models"]
    assert not models_hit or models_hit[0]["headers"]["x-api-key"] == ANTHROPIC_KEY


def test_thinking_tool_loop_keeps_signed_thinking(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = api.chat.completions.create(model="anthropic/claude-tool", messages=messages, tools=TOOLS,
                                        extra_body={"thinking": "low"})
    message = first.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"] == "I should call the tool. "
    assert message["reasoning_signature"] == SIGNATURE
    tool_reply = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C"}
    # A client that echoes the assistant message whole keeps thinking on for the next turn.
    second = api.chat.completions.create(model="anthropic/claude-tool", messages=[*messages, message, tool_reply],
                                         tools=TOOLS, extra_body={"thinking": "low"})
    assert second.choices[0].message.content == "The tool said: 18C"
    sent = last_messages_request(fresh)["body"]
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "I should call the tool. ",
                                                 "signature": SIGNATURE}
    # A client that drops the extension fields: this turn goes without thinking, with a notice.
    stripped = {k: v for k, v in message.items() if k not in ("reasoning_content", "reasoning_signature")}
    raw = api.chat.completions.with_raw_response.create(
        model="anthropic/claude-tool", messages=[*messages, stripped, tool_reply], tools=TOOLS,
        extra_body={"thinking": "low"})
    assert raw.parse().choices[0].message.content == "The tool said: 18C"
    assert "thinking off for this turn" in raw.headers.get("x-acore-notice", "")
    assert "thinking" not in last_messages_request(fresh)["body"]


def test_truncated_stream_is_an_error(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    with pytest.raises(openai.APIStatusError) as failed:
        api.chat.completions.create(model="anthropic/claude-truncated", messages=[{"role": "user", "content": "a b"}])
    assert failed.value.status_code == 502 and "message_stop" in failed.value.message
    stream = api.chat.completions.create(model="anthropic/claude-truncated", messages=[{"role": "user", "content": "a b"}],
                                         stream=True)
    with pytest.raises(openai.APIError) as mid:
        for _ in stream:
            pass
    assert "message_stop" in str(mid.value.message)
