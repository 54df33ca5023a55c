"""protocol.chat: one canonical request from every door, a faithful upstream body, one Generate."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.doors.responses.convert import to_chat
from protocol.chat import EXTENSION_FIELDS, parse_chat
from protocol.openai import RequestValidationError

USER = [{"role": "user", "content": "hi"}]


def test_unknown_fields_and_client_values_survive_to_the_upstream_body() -> None:
    body: dict[str, Any] = {
        "model": "openai/gpt-x", "messages": USER, "temperature": 1, "seed": 0, "logit_bias": {"50256": -100},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "response_format": {"type": "json_object", "future_knob": 1},
        "reasoning_effort": "low", "web_search_options": {"x": None},
        "api_key": "sk-client-123456", "thinking": "high", "timeout_s": 3, "unload_after": True, "agent_format": "xml",
    }
    request = parse_chat(body)
    assert request.extra == {"reasoning_effort": "low", "web_search_options": {"x": None}}
    upstream = request.openai_body()
    assert upstream == {k: v for k, v in body.items() if k not in EXTENSION_FIELDS}
    assert isinstance(upstream["temperature"], int)  # as the client wrote it, not re-encoded as 1.0
    assert request.thinking_level == "high" and request.include_usage and request.agent_format == "xml"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": USER, "thinking": "extreme"}, "thinking"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "stop": 3}, "stop"),
    ({"messages": USER, "logit_bias": {"1": 500}}, "logit_bias"),
    ({"messages": USER, "api_key": 7}, "api_key"),
    ({"messages": []}, "messages"),
])
def test_bad_values_name_their_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestValidationError) as error:
        parse_chat(body)
    assert error.value.param == param


def test_generate_is_derived_from_the_request() -> None:
    request = parse_chat({"messages": USER, "max_tokens": 5, "max_completion_tokens": 7, "stop": "END",
                          "temperature": 0.2, "top_k": 3, "logit_bias": {"9": 1}, "prompt_cache_key": "k",
                          "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none",
                          "thinking": True})
    generate = request.to_generate("req-1")
    assert generate.request_id == "req-1" and generate.messages == USER
    assert generate.params.max_tokens == 7  # max_completion_tokens wins, as on OpenAI
    assert generate.params.stop == ["END"] and generate.params.temperature == 0.2 and generate.params.top_k == 3
    assert generate.params.logit_bias == {"9": 1} and generate.prompt_cache_key == "k"
    assert generate.tool_choice == "none" and generate.thinking == "on"
    assert not request.uses_tools  # tools offered, but tool_choice none: text only


def test_responses_door_produces_the_same_canonical_request() -> None:
    converted = to_chat({"model": "llamacpp/tiny", "input": "hi", "max_output_tokens": 9, "temperature": 0.5,
                         "stop": ["x"], "top_k": 4, "seed": 1, "thinking": False, "timeout_s": 2})
    request = converted.request
    assert request.model == "llamacpp/tiny" and request.stream and request.include_usage
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert (request.token_limit, request.temperature, request.stop_list, request.top_k, request.seed) == (9, 0.5, ["x"], 4, 1)
    assert request.thinking_level == "off" and request.timeout_s == 2
    assert request.to_generate("r").params.max_tokens == 9
