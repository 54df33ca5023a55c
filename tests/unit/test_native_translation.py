"""Pure translation pieces of the Anthropic / Ollama adapters, thinking and the base_url policy."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.pipeline.base_url import check_base_url
from gateway.providers import anthropic, ollama
from gateway.providers.base import ChatCall
from gateway.providers.collect import collect_chunks
from gateway.providers.openai_compat import normalize_reasoning_fields
from media.netpolicy import host_address, parse_ipv4_loose
from protocol.chat import parse_chat


def call(body: dict[str, Any], thinking: str | None = None) -> ChatCall:
    request = parse_chat(body)
    request.thinking = thinking
    return ChatCall(request_id="r", provider="x", model="m", requested_model="x/m", request=request)


def test_anthropic_http_image_url_becomes_url_source() -> None:
    assert anthropic.image_block("https://example.com/a.png") == {
        "type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(GatewayError):
        anthropic.image_block("ftp://example.com/a.png")


def test_anthropic_request_defaults_and_thinking_budget() -> None:
    request = anthropic.build_request(call({"messages": [{"role": "user", "content": "hi"}]}))
    assert request["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS and "thinking" not in request
    thinking_call = call({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}, thinking="medium")
    request = anthropic.build_request(thinking_call)
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert request["max_tokens"] == 4196 and thinking_call.notices


def test_anthropic_parallel_tool_calls_false() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = anthropic.build_request(call({"messages": [{"role": "user", "content": "hi"}], "tools": tools,
                                            "parallel_tool_calls": False}))
    assert request["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_anthropic_usage_mapping() -> None:
    assert anthropic.map_usage({"input_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 2,
                                "output_tokens": 4}) == {
        "prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 10, "cache_creation_tokens": 2}}


def test_ollama_refuses_http_image_urls() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]}
    with pytest.raises(GatewayError) as refused:
        ollama.build_request(call(body))
    assert refused.value.status == 400 and "data URL" in refused.value.message


def test_legacy_ollama_host() -> None:
    config = load_config(env={"OLLAMA_HOST": "127.0.0.1:5555"})
    assert config.provider_settings("ollama").base_url == "http://127.0.0.1:5555"


async def test_collect_chunks_merges_everything() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any]]:
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        for delta, finish in [({"role": "assistant", "content": ""}, None), ({"reasoning_content": "thi"}, None),
                              ({"reasoning_content": "nk"}, None), ({"content": "Hi"}, None),
                              ({"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                                                "function": {"name": "f", "arguments": ""}}]}, None),
                              ({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}, None),
                              ({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, None),
                              ({}, "tool_calls")]:
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield {**base, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    result = await collect_chunks(chunks())
    assert result["object"] == "chat.completion" and result["usage"]["total_tokens"] == 3
    (choice,) = result["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "Hi", "reasoning_content": "think", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}


def test_reasoning_field_normalised() -> None:
    chunk = normalize_reasoning_fields({"choices": [{"delta": {"reasoning": "r"}}, {"message": {"reasoning": "s"}}]})
    assert chunk["choices"] == [{"delta": {"reasoning_content": "r"}}, {"message": {"reasoning_content": "s"}}]


@pytest.mark.parametrize(("host", "expected"), [
    ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("[::ffff:169.254.169.254]", "169.254.169.254"), ("::1", "::1"), ("example.com", None), ("1.2.3.4.5", None),
])
def test_host_address_spellings(host: str, expected: str | None) -> None:
    address = host_address(host)
    assert (str(address) if address else None) == expected


def test_loose_ipv4_rejects_out_of_range() -> None:
    assert parse_ipv4_loose("256.0.0.1") is None and parse_ipv4_loose("4294967296") is None
    assert parse_ipv4_loose("4294967295") == ipaddress.IPv4Address("255.255.255.255")


def test_allowlist_prefix_matching() -> None:
    config = GatewayConfig(base_url_allowlist=("https://api.example.com/v1", "10.0.0.5:8000"))
    assert check_base_url(config, "https://api.example.com/v1/").trusted
    assert check_base_url(config, "http://10.0.0.5:8000/v1").trusted
    for refused in ("https://api.example.com/v10", "https://api.example.com.evil.io/v1", "http://10.0.0.5:8001"):
        with pytest.raises(GatewayError) as exc:
            check_base_url(config, refused)
        assert exc.value.status == 403


def test_n_above_one_refused_and_logprobs_noted() -> None:
    for module in (anthropic, ollama):
        with pytest.raises(GatewayError) as refused:
            module.build_request(call({"messages": [{"role": "user", "content": "hi"}], "n": 2}))
        assert refused.value.param == "n"
        noted = call({"messages": [{"role": "user", "content": "hi"}], "logprobs": True})
        module.build_request(noted)
        assert any("logprobs" in n for n in noted.notices)
