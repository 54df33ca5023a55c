"""A ``chat.completion`` (the canonical answer) as an Anthropic Message; what the stream shares with it."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

# OpenAI finish_reason -> Anthropic stop_reason ("stop" is end_turn unless a stop sequence was hit).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def tool_use_id(call_id: Any) -> str:
    return call_id if isinstance(call_id, str) and call_id else "toolu_" + secrets.token_hex(12)


def stop_reason(choice: dict[str, Any], stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Which stop sequence ended the text is known only where the
    upstream says so: ``stop_reason`` on the choice (vLLM, and acore's own workers)."""
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish), "end_turn"), None


def usage(openai_usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage -> Anthropic's: input_tokens counts what was not read from a cache."""
    openai_usage = openai_usage or {}
    prompt = int(openai_usage.get("prompt_tokens") or 0)
    details = openai_usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    created = int(details.get("cache_creation_tokens") or 0) if isinstance(details, dict) else 0
    return {"input_tokens": max(prompt - cached - created, 0), "cache_creation_input_tokens": created,
            "cache_read_input_tokens": cached, "output_tokens": int(openai_usage.get("completion_tokens") or 0)}


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as the object Anthropic's tool_use.input is; text that is not a JSON object
    (a model's malformed call) is kept, not lost, under ``_raw``."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def to_message(result: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    """The Anthropic Message for a non-streaming chat answer (its first choice)."""
    choices = result.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning,
                        "signature": str(message.get("reasoning_signature") or "")})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": tool_use_id(call.get("id")), "name": function.get("name") or "",
                        "input": tool_input(function.get("arguments"))})
    reason, sequence = stop_reason(choice, stops)
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage(result.get("usage"))}
