"""POST /v1/messages in front of an OpenAI-compatible upstream (the fake), with the official anthropic SDK.

Claude Code's ``claude-…`` names reach openai/… through the config's model aliases; every answer and
event is validated with the SDK's own types (messages_helpers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.fakes.openai_upstream import PARALLEL_CITIES, TOOL_ARGS
from tests.http import clear_records, records
from tests.integration.messages_helpers import (
    PNG_B64,
    TOOLS,
    blocks,
    check_sequence,
    events,
    message,
    post,
    recording,
    sdk,
    types,
    user,
)
from tests.procs import Proc, start_gateway

SONNET = "claude-sonnet-4-5-20250929"
GATEWAY_KEY = "acore-gateway-key-for-messages-0123"


@pytest.fixture(scope="module")
def gw(log_dir: Path, fake_openai: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    config = tmp_path_factory.mktemp("messages") / "acore.toml"
    config.write_text(f'[models."{SONNET}"]\ntargets = ["openai/echo"]\n'
                      '[models."claude-tools"]\ntargets = ["openai/tool"]\n')
    proc = start_gateway(log_dir, {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": "sk-test-123456"},
                         extra_args=["--config", str(config)])
    yield proc
    proc.stop()


@pytest.fixture()
def upstream(fake_openai: Proc) -> Proc:
    clear_records(fake_openai)
    return fake_openai


def sent(fake: Proc) -> dict:
    hits = [r for r in records(fake) if r["path"] == "/v1/chat/completions"]
    assert hits, "the fake saw no chat request"
    return hits[-1]["body"]


def test_text_through_an_alias(gw: Proc, upstream: Proc) -> None:
    # The SDK no longer has sampling arguments; Claude Code (and older SDKs) still send them.
    result = sdk(gw).messages.create(model=SONNET, max_tokens=100, system="Be brief.", messages=user("hello there"),
                                     extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
                                     metadata={"user_id": "u-42"})
    assert result.model == SONNET and result.role == "assistant" and result.type == "message"
    assert result.id.startswith("msg_")
    assert [b.type for b in result.content] == ["text"]
    assert result.content[0].text == "echo: hello there"
    assert (result.stop_reason, result.stop_sequence) == ("end_turn", None)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (5, 3)
    body = sent(upstream)
    assert body["model"] == "echo"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == (100, 0.5, 0.9, 40)
    assert body["user"] == "u-42" and "metadata" not in body and "stream" not in body


def test_stream_is_anthropic_event_sequence(gw: Proc, upstream: Proc) -> None:
    reply = post(gw, {"model": SONNET, "max_tokens": 50, "messages": user("one two three"), "stream": True})
    stream = events(reply)
    check_sequence(stream)
    assert types(stream).count("message_start") == 1
    assert stream[0].message.model == SONNET and stream[0].message.usage.output_tokens == 0
    (text,) = blocks(stream)
    assert text["type"] == "text" and text["streamed"] == "echo: one two three"
    final = stream[-2]
    assert final.delta.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)
    assert sent(upstream)["stream_options"] == {"include_usage": True}
    # The SDK's own stream helper assembles the same message.
    with sdk(gw).messages.stream(model=SONNET, max_tokens=50, messages=user("hi")) as helper:
        assert "".join(helper.text_stream) == "echo: hi"
        final_message = helper.get_final_message()
    assert final_message.stop_reason == "end_turn" and final_message.usage.output_tokens == 3


def test_tool_use_round_trip(gw: Proc, upstream: Proc) -> None:
    client = sdk(gw)
    first = client.messages.create(model="claude-tools", max_tokens=200, tools=TOOLS,
                                   messages=user("Weather in Paris?"))
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == json.loads(TOOL_ARGS) and call.id == "call_1"
    body = sent(upstream)
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                               "parameters": TOOLS[0]["input_schema"]}}]
    history = [*user("Weather in Paris?"), {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "18C"}]},
                   {"type": "text", "text": "And tomorrow?"}]}]
    second = client.messages.create(model=SONNET, max_tokens=200, tools=TOOLS, messages=history)
    assert second.content[0].text == "echo: And tomorrow?"
    messages = sent(upstream)["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(
            json.loads(TOOL_ARGS), separators=(",", ":"))}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    assert messages[3] == {"role": "user", "content": "And tomorrow?"}
    # An error result is marked as one for models that have no is_error flag.
    client.messages.create(model=SONNET, max_tokens=20, tools=TOOLS, messages=[*history[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "no such city", "is_error": True}]}])
    assert sent(upstream)["messages"][2]["content"] == "Error: no such city"


def test_tool_use_streams_input_json(gw: Proc, upstream: Proc) -> None:
    stream = events(post(gw, {"model": "claude-tools", "max_tokens": 50, "tools": TOOLS, "stream": True,
                              "messages": user("Weather?")}))
    check_sequence(stream)
    (tool,) = blocks(stream)
    assert tool["type"] == "tool_use" and tool["name"] == "get_weather" and tool["input"] == {}
    assert tool["streamed"] == TOOL_ARGS
    assert sum(1 for e in stream if getattr(e, "type", "") == "content_block_delta") > 3  # in fragments
    assert stream[-2].delta.stop_reason == "tool_use"
    with sdk(gw).messages.stream(model="claude-tools", max_tokens=50, tools=TOOLS, messages=user("x")) as helper:
        final = helper.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == json.loads(TOOL_ARGS)


def test_parallel_tool_calls_and_tool_choice(gw: Proc, upstream: Proc) -> None:
    stream = events(post(gw, {"model": "openai/tools-3", "max_tokens": 50, "tools": TOOLS, "stream": True,
                              "messages": user("Weather in three cities?")}))
    check_sequence(stream)
    calls = blocks(stream)
    assert [c["type"] for c in calls] == ["tool_use"] * 3
    assert [json.loads(c["streamed"])["city"] for c in calls] == list(PARALLEL_CITIES)
    assert len({c["id"] for c in calls}) == 3
    result = sdk(gw).messages.create(model="openai/tools-3", max_tokens=50, tools=TOOLS, messages=user("x"))
    assert [b.input["city"] for b in result.content] == list(PARALLEL_CITIES)  # type: ignore[union-attr]
    client = sdk(gw)
    for choice, expected, parallel in [
            ({"type": "auto"}, "auto", None), ({"type": "any"}, "required", None), ({"type": "none"}, "none", None),
            ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
            ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False)]:
        client.messages.create(model=SONNET, max_tokens=10, tools=TOOLS, tool_choice=choice,  # type: ignore[arg-type]
                               messages=user("x"))
        body = sent(upstream)
        assert body["tool_choice"] == expected
        assert body.get("parallel_tool_calls") is parallel


def test_thinking_blocks(gw: Proc, upstream: Proc) -> None:
    stream = events(post(gw, {"model": "openai/think", "max_tokens": 2000, "stream": True, "messages": user("hi"),
                              "thinking": {"type": "enabled", "budget_tokens": 1024}}))
    check_sequence(stream)
    thinking, text = blocks(stream)
    assert thinking["type"] == "thinking" and thinking["streamed"] == "Let me think."
    assert text["type"] == "text" and text["streamed"] == "echo: hi"  # never inside the thinking block
    result = sdk(gw).messages.create(model="openai/think", max_tokens=2000, messages=user("hi"),
                                     thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in result.content] == ["thinking", "text"]
    assert result.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    # An earlier turn's signed thinking is Anthropic's alone: other models get the text, with a notice.
    raw = sdk(gw).messages.with_raw_response.create(model=SONNET, max_tokens=10, messages=[
        *user("a"), {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                                      {"type": "redacted_thinking", "data": "xyz"},
                                                      {"type": "text", "text": "b"}]}, *user("c")])
    assert "thinking blocks of earlier turns dropped" in raw.headers.get("x-acore-notice", "")
    assert sent(upstream)["messages"][1] == {"role": "assistant", "content": "b"}


def test_images_and_documents(gw: Proc, upstream: Proc) -> None:
    sdk(gw).messages.create(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The memo."},
         "title": "memo.txt"},
        {"type": "text", "text": "Describe these."}]}])
    parts = sent(upstream)["messages"][0]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == {"type": "text", "text": "memo.txt\n\nThe memo."}
    assert parts[2] == {"type": "text", "text": "Describe these."}


@pytest.mark.parametrize(("model", "reason", "sequence"), [
    ("openai/stopseq", "stop_sequence", "3"), ("openai/finish-length", "max_tokens", None),
    ("openai/echo", "end_turn", None), ("openai/tool", "tool_use", None), ("openai/finish-content_filter", "refusal", None)])
def test_stop_reasons(gw: Proc, upstream: Proc, model: str, reason: str, sequence: str | None) -> None:
    body = {"model": model, "max_tokens": 7, "messages": user("count"), "stop_sequences": ["3", "END"]}
    result = message(post(gw, body))
    assert (result.stop_reason, result.stop_sequence) == (reason, sequence)
    assert sent(upstream)["stop"] == ["3", "END"] and sent(upstream)["max_tokens"] == 7
    stream = events(post(gw, {**body, "stream": True}))
    check_sequence(stream)
    assert (stream[-2].delta.stop_reason, stream[-2].delta.stop_sequence) == (reason, sequence)


def test_errors_in_anthropic_shape(gw: Proc, upstream: Proc) -> None:
    client = sdk(gw)
    cases: list[tuple[dict, type[anthropic.APIStatusError], int, str]] = [
        ({"model": SONNET, "messages": user("x")}, anthropic.BadRequestError, 400, "invalid_request_error"),
        ({"model": SONNET, "max_tokens": 5, "messages": user("x"), "temperature": 1.5}, anthropic.BadRequestError,
         400, "invalid_request_error"),
        ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
         anthropic.BadRequestError, 400, "invalid_request_error"),
        ({"model": "openai/error-401", "max_tokens": 5, "messages": user("x")}, anthropic.AuthenticationError, 401,
         "authentication_error"),
        ({"model": "nope/model", "max_tokens": 5, "messages": user("x")}, anthropic.NotFoundError, 404,
         "not_found_error"),
        ({"model": "openai/error-429", "max_tokens": 5, "messages": user("x")}, anthropic.RateLimitError, 429,
         "rate_limit_error"),
        ({"model": "openai/error-503", "max_tokens": 5, "messages": user("x")}, anthropic.APIStatusError, 529,
         "overloaded_error"),
        ({"model": "openai/error-500", "max_tokens": 5, "messages": user("x")}, anthropic.InternalServerError, 502,
         "api_error"),
    ]
    for body, error_class, status, kind in cases:
        for stream in (False, True):
            reply = post(gw, {**body, "stream": stream})
            assert reply.status == status, (body, reply.text)
            assert reply.json()["type"] == "error" and reply.json()["error"]["type"] == kind, reply.text
            assert set(reply.json()["error"]) == {"type", "message"}
        with pytest.raises(error_class) as raised:  # the SDK's own error classes, from its own request path
            client.post("/v1/messages", body=body, cast_to=anthropic.types.Message)
        assert raised.value.status_code == status
        assert raised.value.body["error"]["type"] == kind  # type: ignore[index]
    assert post(gw, {"model": "openai/error-429", "max_tokens": 5, "messages": user("x")}).headers["retry-after"] == "7"


def test_error_midstream_is_an_error_event(gw: Proc, upstream: Proc) -> None:
    stream = events(post(gw, {"model": "openai/mid-error", "max_tokens": 5, "messages": user("a b"), "stream": True}))
    assert types(stream)[:2] == ["message_start", "ping"]
    assert types(stream)[-1] == "error"
    assert stream[-1]["error"]["type"] == "api_error" and "exploded" in stream[-1]["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as raised:
        with sdk(gw).messages.stream(model="openai/mid-error", max_tokens=5, messages=user("a b")) as helper:
            helper.get_final_message()
    assert "exploded" in str(raised.value)


def test_claude_code_recording_replayed(gw: Proc, upstream: Proc) -> None:
    """What Claude Code sends (system blocks with cache_control, its 15 tools, metadata.user_id, a
    streaming request to /v1/messages?beta=true) reaches an OpenAI-compatible model through an alias."""
    recorded = recording()
    reply = post(gw, recorded["body"], path=recorded["path"], headers=recorded["headers"])
    stream = events(reply)
    check_sequence(stream)
    assert blocks(stream)[0]["streamed"].startswith("echo: ")
    assert "cache_control markers dropped" in reply.headers.get("x-acore-notice", "")
    body = sent(upstream)
    tools = recorded["body"]["tools"]
    assert [t["function"]["name"] for t in body["tools"]] == [t["name"] for t in tools]
    assert all(t["function"]["parameters"] == s["input_schema"] for t, s in zip(body["tools"], tools, strict=True))
    assert body["messages"][0]["role"] == "system" and body["messages"][0]["content"].startswith(
        "You are Claude Code, Anthropic's official CLI for Claude.\nYou are an interactive CLI tool")
    assert body["user"] == recorded["body"]["metadata"]["user_id"]
    assert body["max_tokens"] == 32000 and body["temperature"] == 1


def test_count_tokens_estimate(gw: Proc, upstream: Proc) -> None:
    counted = sdk(gw).messages.count_tokens(model=SONNET, messages=user("x" * 400), system="s" * 40, tools=TOOLS)
    assert counted.input_tokens == 100 + 10 + 4 * 2 + -(-len(json.dumps(
        [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"],
                                           "description": "Weather for a city"}}], separators=(",", ":"))) // 4)
    reply = post(gw, {"model": SONNET, "messages": user("hello")}, path="/v1/messages/count_tokens")
    assert reply.headers["x-acore-token-count"] == "estimate" and reply.json()["estimated"] is True
    assert not [r for r in records(upstream) if r["path"] == "/v1/chat/completions"]  # nothing generated


def test_gateway_key_as_x_api_key_or_bearer(log_dir: Path, fake_openai: Proc) -> None:
    proc = start_gateway(log_dir, {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": "sk-test-123456",
                                   "ACORE_API_KEY": GATEWAY_KEY})
    try:
        body = {"model": "openai/echo", "max_tokens": 5, "messages": user("k")}
        assert message(post(proc, body, headers={"x-api-key": GATEWAY_KEY})).content[0].text == "echo: k"  # type: ignore[union-attr]
        assert post(proc, body, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}).status == 200
        assert sdk(proc, api_key=GATEWAY_KEY).messages.create(**body).content  # type: ignore[arg-type]
        assert sdk(proc, auth_token=GATEWAY_KEY, api_key=None).messages.create(**body).content  # type: ignore[arg-type]
        refused = post(proc, body, headers={"x-api-key": "wrong"})
        assert refused.status == 401
        assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            sdk(proc, api_key="wrong").messages.create(**body)  # type: ignore[arg-type]
        # Other routes keep the OpenAI shape, and take x-api-key too.
        other = post(proc, {"model": "openai/echo", "messages": user("k")}, path="/v1/chat/completions",
                     headers={"x-api-key": "wrong"})
        assert other.status == 401 and other.json()["error"]["code"] == "invalid_api_key"
        ok = post(proc, {"model": "openai/echo", "messages": user("k")}, path="/v1/chat/completions",
                  headers={"x-api-key": GATEWAY_KEY})
        assert ok.status == 200
    finally:
        proc.stop()
