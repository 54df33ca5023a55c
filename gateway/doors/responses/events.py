"""Chat completion chunks → Responses stream events and the final Response object.

One builder serves both modes: a stream sends its events as they come, a
non-streaming request runs the same stream and answers ``builder.response()``.
Every run ends in ``response.completed`` carrying non-null usage (clients fail
the turn or retry in a loop without it) or, on failure, ``response.failed`` + ``error``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.doors.responses.convert import CUSTOM_ARG, ToolSpec
from gateway.errors import GatewayError

Event = tuple[str, dict[str, Any]]

# Echoed request fields and the defaults OpenAI reports when a request leaves them out.
_ECHO_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
    "user": None,
}
# Response.error.code is a closed set in the SDK's types.
_ERROR_CODES = {429: "rate_limit_exceeded"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def echo_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    echo = {}
    for key, default in _ECHO_DEFAULTS.items():
        value = body.get(key)
        echo[key] = default if value is None else value
    if echo["max_output_tokens"] is None and body.get("max_tokens") is not None:
        echo["max_output_tokens"] = body["max_tokens"]
    return echo


def usage_from_chat(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Chat usage → Responses usage; always a complete object, zeros when the provider reported none."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(prompt_details.get("cached_tokens") or 0),
                                 "cache_write_tokens": int(prompt_details.get("cache_write_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


@dataclass(slots=True)
class _Item:
    index: int  # output_index
    data: dict[str, Any]  # the output item, kept current
    kind: str  # "message" | "reasoning" | "tool"
    text: list[str] = field(default_factory=list)
    spec: ToolSpec | None = None
    done: bool = False


class ResponseBuilder:
    def __init__(self, body: Mapping[str, Any], model: str, tools: Mapping[str, ToolSpec],
                 response_id: str | None = None) -> None:
        self.id = response_id or new_id("resp")
        self.model = model
        self.created_at = int(time.time())
        self.echo = echo_fields(body)
        self.tools = tools
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None  # the item deltas currently go to (text or reasoning)
        self.calls: dict[int, _Item] = {}  # chat tool-call index → item
        self.status = "in_progress"
        self.usage: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.completed_at: int | None = None

    # ------------------------------------------------------------------ objects

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": self.completed_at,
            "background": False,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "model": self.model,
            "output": [item.data for item in self.items],
            "usage": self.usage,
            **self.echo,
        }

    def _event(self, kind: str, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return kind, event

    def start(self) -> list[Event]:
        snapshot = self.response()
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    # ------------------------------------------------------------------ items

    def _add(self, kind: str, data: dict[str, Any]) -> tuple[_Item, Event]:
        item = _Item(index=len(self.items), data=data, kind=kind)
        self.items.append(item)
        added = self._event("response.output_item.added", output_index=item.index, item=_copy(data))
        return item, added

    def _open_text(self, kind: str) -> list[Event]:
        """Make the open item a message (kind "message") or a reasoning item, opening one if needed."""
        if self.open is not None and self.open.kind == kind:
            return []
        events = self._close_open()
        if kind == "message":
            data = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            data = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        item, added = self._add(kind, data)
        events.append(added)
        events.append(self._event("response.content_part.added", item_id=data["id"], output_index=item.index,
                                  content_index=0, part=dict(part)))
        self.open = item
        return events

    def _close_open(self) -> list[Event]:
        item, self.open = self.open, None
        if item is None:
            return []
        text = "".join(item.text)
        item_id = item.data["id"]
        common = {"item_id": item_id, "output_index": item.index, "content_index": 0}
        if item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events = [self._event("response.output_text.done", **common, text=text, logprobs=[])]
        else:
            part = {"type": "reasoning_text", "text": text}
            events = [self._event("response.reasoning_text.done", **common, text=text)]
        events.append(self._event("response.content_part.done", **common, part=dict(part)))
        item.data["content"] = [part]
        item.data["status"] = "completed"
        item.done = True
        events.append(self._event("response.output_item.done", output_index=item.index, item=_copy(item.data)))
        return events

    def _text(self, kind: str, delta: str) -> list[Event]:
        events = self._open_text(kind)
        item = self.open
        assert item is not None
        item.text.append(delta)
        common = {"item_id": item.data["id"], "output_index": item.index, "content_index": 0}
        if kind == "message":
            events.append(self._event("response.output_text.delta", **common, delta=delta, logprobs=[]))
        else:
            events.append(self._event("response.reasoning_text.delta", **common, delta=delta))
        return events

    def _tool_delta(self, call: Mapping[str, Any]) -> list[Event]:
        index = call.get("index")
        index = index if isinstance(index, int) else len(self.calls)
        function = call.get("function") or {}
        raw_name, raw_arguments = function.get("name"), function.get("arguments")
        name = raw_name if isinstance(raw_name, str) else ""
        arguments = raw_arguments if isinstance(raw_arguments, str) else ""
        events: list[Event] = []
        item = self.calls.get(index)
        if item is None:
            # Calls stay open until the end: a provider may interleave the deltas of parallel calls.
            events += self._close_open()
            spec = self.tools.get(name)
            call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("call")
            if spec is not None and spec.kind == "custom":
                data: dict[str, Any] = {"id": new_id("ctc"), "type": "custom_tool_call", "call_id": call_id,
                                        "name": spec.name, "input": ""}
            else:
                data = {"id": new_id("fc"), "type": "function_call", "call_id": call_id,
                        "name": spec.name if spec else name, "arguments": "", "status": "in_progress"}
            if spec is not None and spec.namespace:
                data["namespace"] = spec.namespace
            item, added = self._add("tool", data)
            item.spec = spec
            self.calls[index] = item
            events.append(added)
        elif name and not item.done:
            # A name split across deltas (rare): keep it whole for the done events.
            item.data["name"] = item.data["name"] + name
        if arguments and not item.done:
            item.text.append(arguments)
            if item.data["type"] == "function_call":
                events.append(self._event("response.function_call_arguments.delta", item_id=item.data["id"],
                                          output_index=item.index, delta=arguments))
        return events

    def _close_call(self, item: _Item) -> list[Event]:
        if item.done:
            return []
        item.done = True
        arguments = "".join(item.text)
        common = {"item_id": item.data["id"], "output_index": item.index}
        if item.data["type"] == "custom_tool_call":
            # The chat model filled {"input": "..."}; a freeform tool's caller wants the bare string.
            text = _custom_input(arguments)
            item.data["input"] = text
            events = [self._event("response.custom_tool_call_input.delta", **common, delta=text),
                      self._event("response.custom_tool_call_input.done", **common, input=text)]
        else:
            item.data["arguments"] = arguments
            item.data["status"] = "completed"
            events = [self._event("response.function_call_arguments.done", **common, arguments=arguments)]
        events.append(self._event("response.output_item.done", output_index=item.index, item=_copy(item.data)))
        return events

    # ------------------------------------------------------------------ chunks

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._text("reasoning", reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                events += self._text("message", content)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._tool_delta(call)
            finish = choice.get("finish_reason")
            if finish == "length":
                self.incomplete = {"reason": "max_output_tokens"}
            elif finish == "content_filter":
                self.incomplete = {"reason": "content_filter"}
        return events

    def finish(self) -> list[Event]:
        """Close every open item and end with response.completed (usage never null)."""
        events = self._close_open()
        for item in self.calls.values():
            events += self._close_call(item)
        self.status = "incomplete" if self.incomplete else "completed"
        if self.incomplete:
            for item in self.items:
                if item.kind == "message":
                    item.data["status"] = "incomplete"
        self.completed_at = int(time.time())
        if self.usage is None:
            self.usage = usage_from_chat(None)
        events.append(self._event("response.completed", response=self.response()))
        return events

    def fail(self, error: GatewayError) -> list[Event]:
        self.status = "failed"
        code = _ERROR_CODES.get(error.status, "server_error")
        self.error = {"code": code, "message": error.message}
        if self.usage is None:
            self.usage = usage_from_chat(None)
        return [self._event("response.failed", response=self.response()),
                self._event("error", code=error.code or code, message=error.message, param=error.param)]


def _custom_input(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments  # the model wrote the input bare: use it as is
    if isinstance(value, dict) and isinstance(value.get(CUSTOM_ARG), str):
        return value[CUSTOM_ARG]
    if isinstance(value, str):
        return value
    return arguments


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    # Events are serialised later; a snapshot keeps later mutation out of earlier events.
    return orjson.loads(orjson.dumps(data))
