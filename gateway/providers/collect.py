"""Build a non-streaming ``chat.completion`` from a stream of ``chat.completion.chunk`` objects.

Adapters that translate (Anthropic, Ollama, local workers) produce one stream and
answer non-streaming requests with its collected form, so both paths agree by
construction.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any


class _Choice:
    __slots__ = ("content", "finish_reason", "reasoning", "role", "signature", "stop_reason", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.signature: list[str] = []  # Anthropic's signed-thinking extension (reasoning_signature)
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None  # the stop string that ended it, where the upstream says (vLLM)

    def add(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = delta.get("reasoning")  # some OpenAI-compatible servers use this name
        if isinstance(reasoning, str):
            self.reasoning.append(reasoning)
        if isinstance(delta.get("reasoning_signature"), str):
            self.signature.append(delta["reasoning_signature"])
        for position, fragment in enumerate(delta.get("tool_calls") or ()):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", position)
            call = self.tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if fragment.get("id"):
                call["id"] = fragment["id"]
            if fragment.get("type"):
                call["type"] = fragment["type"]
            function = fragment.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {"role": self.role, "content": text}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not text:
                message["content"] = None  # what OpenAI sends for a pure tool-call turn
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.signature:
            message["reasoning_signature"] = "".join(self.signature)
        return message


class ChunkCollector:
    """Merges chunks one at a time (a stream the door already sent, for the verbatim log) or all at
    once (``collect_chunks``): content, reasoning_content, tool_calls, finish_reason and usage."""

    __slots__ = ("choices", "first", "usage")

    def __init__(self) -> None:
        self.choices: dict[int, _Choice] = {}
        self.first: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if self.first is None:
            self.first = chunk
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            state = self.choices.setdefault(int(choice.get("index") or 0), _Choice())
            delta = choice.get("delta")
            if isinstance(delta, dict):
                state.add(delta)
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
            if isinstance(choice.get("stop_reason"), str):
                state.stop_reason = choice["stop_reason"]

    def result(self) -> dict[str, Any]:
        choices = self.choices
        head = self.first or {}
        result: dict[str, Any] = {
            "id": head.get("id") or "chatcmpl-collected",
            "object": "chat.completion",
            "created": head.get("created") or int(time.time()),
            "model": head.get("model", ""),
            "choices": [
                {"index": i, "message": choices[i].message(), "finish_reason": choices[i].finish_reason or "stop",
                 "logprobs": None, **({"stop_reason": choices[i].stop_reason} if choices[i].stop_reason else {})}
                for i in sorted(choices)
            ] or [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop",
                   "logprobs": None}],
        }
        if self.usage is not None:
            result["usage"] = self.usage
        return result


async def collect_chunks(chunks: AsyncIterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge content, reasoning_content, tool_calls, finish_reason and usage of every choice."""
    collector = ChunkCollector()
    async for chunk in chunks:
        collector.add(chunk)
    return collector.result()


async def complete_from_stream(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer of a translating adapter: its collected stream, always closed."""
    try:
        return await collect_chunks(chunks)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
