"""The Anthropic door's conversions, without a server: request -> canonical, chunks -> events, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from gateway.doors.messages.count_tokens import estimate_tokens
from gateway.doors.messages.errors import anthropic_error_body, error_event
from gateway.doors.messages.request import parse_messages, thinking_level, to_chat
from gateway.doors.messages.response import to_message
from gateway.doors.messages.stream import EventBuilder
from gateway.errors import GatewayError
from protocol.anthropic import ThinkingConfig
from protocol.codec import encode, worker_side_decoder
from protocol.messages import Tokenize

EVENT = TypeAdapter(RawMessageStreamEvent)


def convert(**body: Any) -> Any:
    return to_chat(parse_messages({"model": "m", "max_tokens": 10, **body}))


def test_images_documents_and_tool_results_convert() -> None:
    converted = convert(messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inline"}]}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "taken"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
    ])
    first, assistant, tool, after = converted.request.messages
    assert first["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "document.pdf"}},
        {"type": "file", "file_url": {"url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "inline"}]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]}
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "taken"}
    # A tool message carries text: the result's image follows in a user turn.
    assert after == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}


def test_bad_blocks_name_where_they_are() -> None:
    with pytest.raises(GatewayError) as bad:
        convert(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image"}]}])
    assert bad.value.status == 400 and bad.value.param == "messages.1.content.0"
    with pytest.raises(GatewayError) as missing:
        convert(messages=[{"role": "user", "content": [{"type": "tool_result"}]}])
    assert "tool_use_id" in missing.value.message


def test_server_tool_blocks_of_earlier_turns_are_dropped() -> None:
    converted = convert(messages=[{"role": "user", "content": "news?"}, {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {"query": "news"}},
        {"type": "web_search_tool_result", "tool_use_id": "srv", "content": []},
        {"type": "text", "text": "Here is the news."}]}, {"role": "user", "content": "thanks"}])
    assert converted.request.messages[1] == {"role": "assistant", "content": "Here is the news."}
    assert any("server tools" in n for n in converted.notices)


def test_server_tools_and_cache_control_are_noticed() -> None:
    converted = convert(messages=[{"role": "user", "content": "x"}], system=[
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"},
               {"name": "f", "input_schema": {"type": "object"}}])
    assert converted.request.messages[0] == {"role": "system", "content": "a\nb"}
    assert [t["function"]["name"] for t in converted.request.tools] == ["f"]
    assert any("web_search" in n for n in converted.notices) and any("cache_control" in n for n in converted.notices)


@pytest.mark.parametrize(("config", "level"), [
    ({"type": "enabled", "budget_tokens": 1024}, "low"), ({"type": "enabled", "budget_tokens": 8000}, "medium"),
    ({"type": "enabled", "budget_tokens": 32000}, "high"), ({"type": "disabled"}, "off"),
    ({"type": "adaptive"}, "on"), (None, None)])
def test_thinking_levels(config: dict | None, level: str | None) -> None:
    assert thinking_level(ThinkingConfig(**config) if config else None) == level


def parse_frames(frames: bytes) -> list[tuple[str, dict[str, Any]]]:
    """SSE frames as (event name, data), checking each names its data's type."""
    out = []
    for block in frames.decode().split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
            assert name == data["type"]
            out.append((name, data))
    return out


def test_interleaved_tool_fragments_stay_with_their_block() -> None:
    builder = EventBuilder("m", [])
    out = builder.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}},
        {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}}]})
    out += builder.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]})
    out += builder.finish()
    parsed = [EVENT.validate_python(data) for name, data in parse_frames(out) if name != "ping"]
    deltas = [(e.index, e.delta.partial_json) for e in parsed if e.type == "content_block_delta"]
    assert deltas == [(0, '{"x"'), (1, "{}"), (0, ": 1}")]
    assert parsed[-2].delta.stop_reason == "tool_use"


def test_text_frames_escape_and_reasoning_has_its_own_block() -> None:
    builder = EventBuilder("m", [])
    out = builder.chunk({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    out += builder.chunk({"choices": [{"index": 0, "delta": {"reasoning_content": "hm\n"}}]})
    out += builder.chunk({"choices": [{"index": 0, "delta": {"content": 'say "hi"\n\n'}}]})
    out += builder.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    out += builder.finish()
    events = parse_frames(out)
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                            "content_block_stop", "content_block_start", "content_block_delta",
                                            "content_block_stop", "message_delta", "message_stop"]
    assert events[3][1]["delta"] == {"type": "thinking_delta", "thinking": "hm\n"}
    assert events[6][1] == {"type": "content_block_delta", "index": 1,
                            "delta": {"type": "text_delta", "text": 'say "hi"\n\n'}}
    assert events[8][1]["usage"]["output_tokens"] == 2
    assert parse_frames(EventBuilder("m", []).finish())[0][0] == "message_start"  # an empty answer is whole too


def test_non_streaming_message_shape() -> None:
    result = {"choices": [{"message": {"role": "assistant", "content": "hi", "reasoning_content": "hmm",
                                       "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "not json"}}]},
                           "finish_reason": "tool_calls"}],
              "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}
    message = Message.model_validate(to_message(result, "claude-x", []))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"_raw": "not json"}  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (6, 4, 2)


def test_error_bodies() -> None:
    assert anthropic_error_body(413, "big") == {"type": "error", "error": {"type": "request_too_large", "message": "big"}}
    assert anthropic_error_body(431, "h")["error"]["type"] == "invalid_request_error"
    assert anthropic_error_body(503, "busy")["error"]["type"] == "overloaded_error"
    assert anthropic_error_body(500, "x")["error"]["type"] == "api_error"
    upstream = GatewayError(400, "bad", code="permission_error")
    assert error_event(upstream) == {"type": "error", "error": {"type": "permission_error", "message": "bad"}}


def test_estimate_and_tokenize_message() -> None:
    converted = convert(messages=[{"role": "user", "content": "abcd" * 25}])
    assert estimate_tokens(converted.request) == 25 + 4
    message = Tokenize(request_id="r", messages=[{"role": "user", "content": "x"}], tools=[])
    decoded, _ = worker_side_decoder().decode(encode(message))
    assert decoded == message  # a worker reads it as one of its requests
