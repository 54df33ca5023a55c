"""ollama/… through a real gateway, against the fake native Ollama API, with the official openai SDK."""

from __future__ import annotations

import base64
import json
import re
import time

import openai
import pytest

from tests import http
from tests.http import records
from tests.native import (
    Fakes,
    client,
    wait_for,
)
from tests.procs import Proc

# The fake upstreams and gateways (fixtures: fakes, fresh, native_gateway).
pytest_plugins = ["tests.native_fixtures"]

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def last_chat(fakes: Fakes) -> dict:
    hits = [r for r in records(fakes.ollama) if r["path"] == "/api/chat"]
    assert hits, "the fake saw no /api/chat request"
    return hits[-1]


def test_text_and_options_mapping(native_gateway: Proc, fresh: Fakes) -> None:
    result = client(native_gateway).chat.completions.create(
        model="ollama/llama-text",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        temperature=0.2, top_p=0.9, max_tokens=64, stop=["END"], seed=7, presence_penalty=0.5,
        frequency_penalty=0.25)
    assert result.model == "ollama/llama-text"
    assert result.choices[0].message.content == "echo: hello there"
    assert result.choices[0].finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (9, 4, 13)
    body = last_chat(fresh)["body"]
    assert body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["END"], "seed": 7,
                               "presence_penalty": 0.5, "frequency_penalty": 0.25}
    client(native_gateway).chat.completions.create(model="ollama/llama-text", max_completion_tokens=12,
                                                   messages=[{"role": "user", "content": "x"}])
    assert last_chat(fresh)["body"]["options"] == {"num_predict": 12}


def test_streaming_text_with_usage(native_gateway: Proc, fresh: Fakes) -> None:
    chunks = list(client(native_gateway).chat.completions.create(
        model="ollama/llama-text", messages=[{"role": "user", "content": "one two"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 13


def test_multi_turn_tool_round_trip(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = api.chat.completions.create(model="ollama/llama-tool", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert last_chat(fresh)["body"]["tools"] == TOOLS

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C"})
    second = api.chat.completions.create(model="ollama/llama-tool", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "The tool get_weather said: 18C"
    sent = last_chat(fresh)["body"]["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "get_weather",
                                                   "arguments": {"city": "Paris", "unit": "celsius"}}}]
    assert sent[2] == {"role": "tool", "content": "18C", "tool_name": "get_weather"}


def test_streaming_tool_calls(native_gateway: Proc, fresh: Fakes) -> None:
    chunks = list(client(native_gateway).chat.completions.create(
        model="ollama/llama-tool", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True))
    fragments = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(fragments) == 1
    assert fragments[0].index == 0 and fragments[0].id.startswith("call_")
    assert json.loads(fragments[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_images_become_base64_list(native_gateway: Proc, fresh: Fakes) -> None:
    result = client(native_gateway).chat.completions.create(model="ollama/llama-text", messages=[{
        "role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert result.choices[0].message.content == "echo: see (images: 1)"
    (image,) = last_chat(fresh)["body"]["messages"][0]["images"]
    assert base64.b64decode(image).startswith(b"\x89PNG")


def test_response_format_to_format(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    api.chat.completions.create(model="ollama/llama-text", messages=[{"role": "user", "content": "j"}],
                                response_format={"type": "json_object"})
    assert last_chat(fresh)["body"]["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    api.chat.completions.create(model="ollama/llama-text", messages=[{"role": "user", "content": "j"}],
                                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert last_chat(fresh)["body"]["format"] == schema


def test_thinking_and_reasoning_content(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    raw = api.chat.completions.with_raw_response.create(
        model="ollama/llama-think", messages=[{"role": "user", "content": "hi"}], extra_body={"thinking": "high"})
    result = raw.parse()
    assert last_chat(fresh)["body"]["think"] is True
    assert "think=true" in raw.headers.get("x-acore-notice", "")
    assert result.choices[0].message.model_dump()["reasoning_content"] == "Echo the user. "
    assert result.choices[0].message.content == "echo: hi"
    chunks = list(api.chat.completions.create(model="ollama/llama-think", messages=[{"role": "user", "content": "hi"}],
                                              stream=True, extra_body={"thinking": True}))
    reasoning = "".join(c.choices[0].delta.model_dump().get("reasoning_content") or "" for c in chunks)
    assert reasoning == "Echo the user. "
    api.chat.completions.create(model="ollama/llama-text", messages=[{"role": "user", "content": "x"}],
                                extra_body={"thinking": "off"})
    assert last_chat(fresh)["body"]["think"] is False
    api.chat.completions.create(model="ollama/llama-text", messages=[{"role": "user", "content": "x"}])
    assert "think" not in last_chat(fresh)["body"]


def test_length_stop_reason(native_gateway: Proc, fresh: Fakes) -> None:
    result = client(native_gateway).chat.completions.create(model="ollama/llama-length",
                                                            messages=[{"role": "user", "content": "go"}])
    assert result.choices[0].finish_reason == "length"


def test_errors(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="ollama/no-such-model", messages=messages)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.InternalServerError) as crashed:
        api.chat.completions.create(model="ollama/llama-error", messages=messages)
    assert crashed.value.status_code == 502 and "llama runner" in crashed.value.message
    with pytest.raises(openai.APIStatusError) as stalled:
        api.chat.completions.create(model="ollama/llama-stall", messages=messages, extra_body={"timeout_s": 1})
    assert stalled.value.status_code == 504
    stream = api.chat.completions.create(model="ollama/llama-midstream", messages=messages, stream=True)
    with pytest.raises(openai.APIError) as mid:
        for _ in stream:
            pass
    assert "error was encountered" in str(mid.value.message)


def test_client_disconnect_cancels_upstream(native_gateway: Proc, fresh: Fakes) -> None:
    stream = client(native_gateway).chat.completions.create(
        model="ollama/llama-slow", messages=[{"role": "user", "content": "go"}], stream=True)
    for seen, _ in enumerate(stream):
        if seen == 3:
            break
    stream.close()
    started = time.monotonic()
    assert wait_for(lambda: last_chat(fresh).get("cancelled"), timeout=5)
    assert time.monotonic() - started < 5


def test_models_embeddings_and_providers(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    listed = {m.id: m.model_dump() for m in api.models.list()}
    assert listed["ollama/llama-text:latest"]["type"] == "text-generation"
    assert listed["ollama/nomic-embed-text:latest"]["type"] == "text-embedding"
    assert listed["ollama/all-minilm:latest"]["type"] == "text-embedding"
    result = api.embeddings.create(model="ollama/nomic-embed-text:latest", input=["a", "b"], encoding_format="float")
    assert len(result.data) == 2 and len(result.data[0].embedding) == 6
    embed_hit = [r for r in records(fresh.ollama) if r["path"] == "/api/embed"][-1]
    assert embed_hit["body"]["input"] == ["a", "b"]
    providers = {p["name"]: p for p in http.get_json(native_gateway.url + "/providers", timeout=10)["providers"]}
    assert providers["ollama"]["status"] == "available" and providers["ollama"]["model_count"] == 4


def test_truncated_stream_is_an_error(native_gateway: Proc, fresh: Fakes) -> None:
    api = client(native_gateway)
    with pytest.raises(openai.APIStatusError) as failed:
        api.chat.completions.create(model="ollama/llama-truncated", messages=[{"role": "user", "content": "a b"}])
    assert failed.value.status_code == 502 and "before done" in failed.value.message
    stream = api.chat.completions.create(model="ollama/llama-truncated", messages=[{"role": "user", "content": "a b"}],
                                         stream=True)
    with pytest.raises(openai.APIError) as mid:
        for _ in stream:
            pass
    assert "before done" in str(mid.value.message)
