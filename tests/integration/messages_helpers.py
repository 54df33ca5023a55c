"""What the /v1/messages tests share: the official anthropic SDK pointed at a gateway, and raw requests whose
every answer and event is re-parsed (validated) with the SDK's own types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests import http
from tests.procs import Proc

EVENT = TypeAdapter(RawMessageStreamEvent)
RECORDING = Path(__file__).resolve().parent.parent / "fakes" / "claude_code_request.json"
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def sdk(gateway: Proc, api_key: str = "unused", **kwargs: Any) -> anthropic.Anthropic:
    """The official client, as Claude Code points it at a gateway (ANTHROPIC_BASE_URL)."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=30, **kwargs)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def post(gateway: Proc, body: dict[str, Any], path: str = "/v1/messages",
         headers: dict[str, str] | None = None) -> http.Reply:
    return http.post(gateway.url + path, body, headers={"anthropic-version": "2023-06-01", **(headers or {})})


def message(reply: http.Reply) -> Message:
    """A non-streaming answer, validated as the SDK's Message."""
    assert reply.status == 200, reply.text
    return Message.model_validate(reply.json())


def events(reply: http.Reply) -> list[Any]:
    """A stream's events, each validated as the SDK's RawMessageStreamEvent (an ``event: error`` is
    returned as its raw dict); every ``event:`` line names its data's type, as Anthropic writes them."""
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    out: list[Any] = []
    for name, data in reply.events:
        assert name == data["type"], (name, data)
        if name == "ping":  # not one of the SDK's event types: the SDK skips it
            assert data == {"type": "ping"}
        out.append(data if name in ("error", "ping") else EVENT.validate_python(data))
    return out


def types(stream: list[Any]) -> list[str]:
    return [e["type"] if isinstance(e, dict) else e.type for e in stream]


def check_sequence(stream: list[Any]) -> None:
    """Anthropic's grammar: message_start, ping, then blocks opened, delta'd and closed one at a time with
    increasing indices, then one message_delta and message_stop."""
    kinds = types(stream)
    assert kinds[:2] == ["message_start", "ping"], kinds
    assert kinds[-2:] == ["message_delta", "message_stop"], kinds
    open_index, next_index = None, 0
    for event in stream[2:-2]:
        if isinstance(event, dict):
            raise AssertionError(f"unexpected {event['type']} between the blocks: {kinds}")
        if event.type == "content_block_start":
            assert open_index is None and event.index == next_index, kinds
            open_index, next_index = event.index, next_index + 1
        elif event.type == "content_block_delta":
            assert event.index == open_index, kinds
        elif event.type == "content_block_stop":
            assert event.index == open_index, kinds
            open_index = None
        else:
            raise AssertionError(f"unexpected {event.type} between the blocks: {kinds}")
    assert open_index is None


_DELTA_FIELD = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json",
                "signature_delta": "signature"}


def blocks(stream: list[Any]) -> list[dict[str, Any]]:
    """The content blocks a stream built: each start block with its deltas joined under ``streamed``
    (text, thinking or the tool input's JSON) and ``signed`` (signature deltas)."""
    out: list[dict[str, Any]] = []
    for event in stream:
        kind = getattr(event, "type", None)
        if kind == "content_block_start":
            out.append({**event.content_block.model_dump(), "streamed": "", "signed": ""})
        elif kind == "content_block_delta":
            name = _DELTA_FIELD[event.delta.type]
            out[event.index]["signed" if name == "signature" else "streamed"] += getattr(event.delta, name)
    return out


def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDING.read_text())
    return data
