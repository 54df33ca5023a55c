"""The Responses builder and converter on inputs the fake upstream cannot produce.

Every event is validated with the SDK's own pydantic types (strict), the final object with Response.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.doors.responses.convert import ToolSpec, to_chat
from gateway.doors.responses.events import ResponseBuilder
from gateway.errors import GatewayError

EVENT = TypeAdapter(ResponseStreamEvent)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _run_builder(chunks: list[dict[str, Any]], tools: dict[str, ToolSpec] | None = None) -> tuple[list[Any], Response]:
    builder = ResponseBuilder({"model": "x/y"}, "x/y", tools or {})
    events = builder.start()
    for chunk in chunks:
        events += builder.feed(chunk)
    events += builder.finish()
    for number, (name, data) in enumerate(events):
        EVENT.validate_python(data, strict=True)
        assert name == data["type"] and data["sequence_number"] == number
    return events, Response.model_validate(builder.response(), strict=True)


def test_reasoning_then_text() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16,
             "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 5}}
    events, response = _run_builder([
        _chunk({"role": "assistant", "reasoning_content": "Let me "}), _chunk({"reasoning_content": "think."}),
        _chunk({"content": "Answer"}), _chunk({}, "stop"), {"choices": [], "usage": usage}])
    kinds = [name for name, _ in events]
    assert kinds.count("response.reasoning_text.delta") == 2 and "response.reasoning_text.done" in kinds
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Let me think."
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 5


def test_length_is_incomplete_but_completed_event() -> None:
    events, response = _run_builder([_chunk({"content": "cut"}), _chunk({}, "length")])
    assert events[-1][0] == "response.completed"
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.total_tokens == 0  # none reported: zeros, never null


def test_namespace_and_custom_calls_map_back() -> None:
    tools = {"mcp__fs__read": ToolSpec("function", "read", "mcp__fs__"),
             "apply_patch": ToolSpec("custom", "apply_patch")}
    events, response = _run_builder([
        _chunk({"content": "Reading."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "mcp__fs__read", "arguments": '{"p'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ath": "x"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "apply_patch",
                                                                         "arguments": '{"input": "*** Begin Patch"}'}}]}),
        _chunk({}, "tool_calls")], tools)
    message, call, custom = response.output
    assert message.type == "message"
    assert call.type == "function_call" and (call.name, call.namespace) == ("read", "mcp__fs__")
    assert call.arguments == '{"path": "x"}' and call.call_id == "call_a"
    assert custom.type == "custom_tool_call" and custom.input == "*** Begin Patch" and custom.call_id == "call_b"
    assert "response.custom_tool_call_input.done" in [name for name, _ in events]


def test_interleaved_parallel_calls_keep_all_arguments() -> None:
    _, response = _run_builder([
        _chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a", "arguments": '{"x"'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "b", "arguments": '{"y"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]}),
        _chunk({}, "tool_calls")])
    assert [(c.name, c.arguments) for c in response.output if c.type == "function_call"] == [
        ("a", '{"x": 1}'), ("b", '{"y": 2}')]


def test_failure_events_validate() -> None:
    builder = ResponseBuilder({}, "x/y", {})
    events = builder.start() + builder.feed(_chunk({"content": "par"}))
    events += builder.fail(GatewayError(502, "boom", type="server_error"))
    for name, data in events:
        EVENT.validate_python(data, strict=True)
        assert name == data["type"]
    assert events[-1][1]["message"] == "boom"


def test_convert_history_items() -> None:
    converted = to_chat({"input": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}],
         "encrypted_content": "gAAA"},
        {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "function_call", "call_id": "c1", "name": "read", "namespace": "mcp__fs__", "arguments": "{}"},
        {"type": "function_call_output", "id": "fco_1", "call_id": "c1",
         "output": [{"type": "input_text", "text": "data"}]},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
    ]})
    messages = converted.request.messages
    assert messages[0] == {"role": "assistant", "content": "ok", "reasoning_content": "plan",
                           "tool_calls": [{"id": "c1", "type": "function",
                                           "function": {"name": "mcp__fs__read", "arguments": "{}"}}]}
    assert messages[1] == {"role": "tool", "tool_call_id": "c1", "content": "data"}
    assert messages[2]["tool_calls"][0]["function"] == {"name": "apply_patch", "arguments": '{"input":"*** Begin"}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "c2", "content": "done"}


def test_convert_tools_and_choices() -> None:
    converted = to_chat({
        "input": "hi", "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}},
            {"type": "web_search"},
            {"type": "namespace", "name": "ns", "description": "d", "tools": [{"type": "function", "name": "g"}]},
            {"type": "custom", "name": "patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
        ],
        "tool_choice": {"type": "function", "name": "g"}, "parallel_tool_calls": True,
        "reasoning": {"effort": "minimal"}, "max_output_tokens": 10})
    body = converted.request
    assert body.tools is not None
    assert [t["function"]["name"] for t in body.tools] == ["f", "ns__g", "patch"]
    assert body.tools[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert "start: x" in body.tools[2]["function"]["description"]
    assert body.tool_choice == {"type": "function", "function": {"name": "ns__g"}}  # found by its own name
    assert body.parallel_tool_calls is True and body.max_tokens == 10 and body.thinking == "low"
    assert converted.tools["ns__g"] == ToolSpec("function", "g", "ns")
    assert converted.tools["patch"].kind == "custom"
    assert any("web_search" in n for n in converted.notices)
    hosted = to_chat({"input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "web_search"}})
    assert hosted.request.tool_choice == "auto" and hosted.notices


def test_convert_errors_and_legacy() -> None:
    with pytest.raises(GatewayError) as info:
        to_chat({"model": "x/y"})
    assert info.value.status == 400 and info.value.param == "input"
    legacy = to_chat({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})
    assert legacy.request.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    # configuration_update: the latest effort wins over reasoning.effort; an explicit thinking wins over both
    update = {"type": "configuration_update", "reasoning": {"effort": "xhigh"}}
    assert to_chat({"input": [update, {"role": "user", "content": "u"}],
                    "reasoning": {"effort": "low"}}).request.thinking == "high"
    assert to_chat({"input": [update, {"role": "user", "content": "u"}], "thinking": "off"}).request.thinking == "off"
