"""``chat.completion.chunk`` objects as Anthropic's exact event sequence, written as SSE frames.

    message_start (usage) · ping
    content_block_start · content_block_delta … · content_block_stop      one block at a time:
        thinking (thinking_delta, signature_delta) · text (text_delta) · tool_use (input_json_delta)
    message_delta (stop_reason, stop_sequence, usage) · message_stop

A block opens when the first delta of its kind arrives and closes when another kind (or another
tool call) starts, so reasoning never leaks into a text block and every tool call's arguments
stream in their own block. Input tokens are known only at the end of an OpenAI-shaped stream:
message_start says 0 and message_delta carries the real counts (the SDKs take both).

The builder returns the frames' bytes (``event: NAME\\ndata: JSON\\n\\n``): a delta, one per token,
is one prebuilt prefix plus the encoded text, with no event object built and encoded per token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.doors.messages.response import message_id, stop_reason, tool_use_id, usage

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
# The delta kinds of a block and the field each carries.
_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature",
                 "input_json_delta": "partial_json"}


def frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _delta_prefix(index: int, kind: str) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":'
            % (index, kind.encode(), _DELTA_FIELDS[kind].encode()))


class EventBuilder:
    """Per-stream state: which block is open and its index, the tool calls seen, the finish and usage."""

    __slots__ = ("_known_usage", "_prefixes", "current", "finish_choice", "index", "model", "started", "stops",
                 "tools", "usage")

    def __init__(self, model: str, stops: list[str],
                 known_usage: Callable[[], dict[str, Any] | None] = lambda: None) -> None:
        self.model = model
        self._known_usage = known_usage  # the usage known when the first chunk came (a local worker's prompt)
        self.stops = stops
        self.started = False
        self.index = -1  # the index of the block last opened
        self.current: str | None = None  # "text", "thinking", "tool_use" or None (no block open)
        self.tools: dict[int, int] = {}  # OpenAI tool-call index -> content block index
        self.finish_choice: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self._prefixes: dict[tuple[int, str], bytes] = {}

    def start(self) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**usage(self._known_usage()), "output_tokens": 0}}
        return frame("message_start", {"type": "message_start", "message": message}) + _PING

    def _close(self, out: list[bytes]) -> None:
        if self.current is not None:
            out.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % self.index)
            self.current = None

    def _open(self, out: list[bytes], block: dict[str, Any]) -> None:
        self._close(out)
        self.index += 1
        self.current = block["type"]
        out.append(frame("content_block_start", {"type": "content_block_start", "index": self.index,
                                                 "content_block": block}))

    def _delta(self, out: list[bytes], kind: str, value: str, index: int | None = None) -> None:
        key = (self.index if index is None else index, kind)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefixes[key] = _delta_prefix(*key)
        out.append(prefix + orjson.dumps(value) + b"}}\n\n")

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The frames one chunk makes (message_start first, for the first chunk)."""
        out: list[bytes] = [] if self.started else [self.start()]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one answer per request
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                if self.current != "thinking":
                    self._open(out, {"type": "thinking", "thinking": "", "signature": ""})
                self._delta(out, "thinking_delta", reasoning)
            signature = delta.get("reasoning_signature")
            if signature and self.current == "thinking":
                self._delta(out, "signature_delta", signature)
            text = delta.get("content")
            if text:
                if self.current != "text":
                    self._open(out, {"type": "text", "text": ""})
                self._delta(out, "text_delta", text)
            for position, fragment in enumerate(delta.get("tool_calls") or ()):
                self._tool_fragment(out, fragment, position)
            if choice.get("finish_reason"):
                self.finish_choice = choice
        return out[0] if len(out) == 1 else b"".join(out)

    def _tool_fragment(self, out: list[bytes], fragment: dict[str, Any], position: int) -> None:
        tool_index = fragment.get("index", position)
        function = fragment.get("function") or {}
        arguments = function.get("arguments")
        known = self.tools.get(tool_index)
        if known is None:
            self._open(out, {"type": "tool_use", "id": tool_use_id(fragment.get("id")),
                             "name": function.get("name") or "", "input": {}})
            self.tools[tool_index] = known = self.index
        if arguments:
            # Servers stream one call after another; a fragment of an earlier call (interleaved
            # streams) still goes to that call's block, where the SDKs' accumulators put it.
            self._delta(out, "input_json_delta", arguments, known)

    def finish(self) -> bytes:
        out: list[bytes] = [] if self.started else [self.start()]
        self._close(out)
        reason, sequence = stop_reason(self.finish_choice or {}, self.stops)
        out.append(frame("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                           "usage": usage(self.usage)}))
        out.append(_STOP)
        return b"".join(out)
