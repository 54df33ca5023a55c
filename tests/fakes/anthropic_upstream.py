"""A fake Anthropic Messages API on 127.0.0.1, speaking the real SSE wire format event by event.

Behaviour is chosen by the model name:
  claude-text         echo the last user text (text_delta per word); usage with cache read/creation
  claude-tool         a tool_use block streamed as input_json_delta fragments (after a signed thinking
                      block when thinking is on); when the last user turn holds a tool_result, answer
                      with text quoting it (multi-turn round trip). Like the real API, a tool loop with
                      thinking on whose assistant turn lost its signed thinking block gets HTTP 400.
  claude-think        a thinking block (thinking_delta + signature_delta), then text
  claude-maxtok       stop_reason max_tokens
  claude-stopseq      stop_reason stop_sequence (stop_sequence echoed)
  claude-overloaded   HTTP 529 overloaded_error
  claude-invalid      HTTP 400 invalid_request_error
  claude-midstream    one text delta, then an in-stream error event (overloaded_error)
  claude-truncated    one text delta, then the body ends (no message_stop)
  claude-stall        never answer
  claude-slow         a text delta every 100 ms for 60 s (disconnect tests; records "cancelled")
  claude-images       describe the image blocks received (source types and media types)
An x-api-key of "bad-key" gets HTTP 401 authentication_error. Every request is recorded with its
headers (and, for /v1/messages*, its raw body and query string): GET /_requests reads them, DELETE clears.
POST /v1/messages/count_tokens answers {"input_tokens": COUNTED_TOKENS + the number of messages}.
Run standalone: python -m tests.fakes.anthropic_upstream --port N
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import make_app, record, serve_main

TOOL_INPUT = '{"city": "Paris", "unit": "celsius"}'
SIGNATURE = "EqQBCgIYAhIM"


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _last_user_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    return []


def _answer(body: dict[str, Any]) -> tuple[list[tuple[str, str, str]], str, str | None]:
    """Blocks as (type, text-or-json, name), the stop_reason, the stop_sequence."""
    model = str(body.get("model"))
    blocks = _last_user_blocks(body)
    text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text") or "hello"
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if model == "claude-tool":
        if results:
            return [("text", f"The tool said: {results[0].get('content')}", "")], "end_turn", None
        thought = [("thinking", "I should call the tool.", "")] if body.get("thinking") else []
        return [*thought, ("text", "Let me check.", ""), ("tool_use", TOOL_INPUT, "get_weather")], "tool_use", None
    if model == "claude-think":
        return [("thinking", "The user wants an echo. Simple.", ""), ("text", f"echo: {text}", "")], "end_turn", None
    if model == "claude-maxtok":
        return [("text", "this answer was cut", "")], "max_tokens", None
    if model == "claude-stopseq":
        return [("text", "counting 1 2", "")], "stop_sequence", "3"
    if model == "claude-images":
        images = [b for b in blocks if b.get("type") == "image"]
        described = ", ".join(f"{b['source']['type']}:{b['source'].get('media_type') or b['source'].get('url')}"
                              for b in images)
        return [("text", f"images: {described}", "")], "end_turn", None
    return [("text", f"echo: {text}", "")], "end_turn", None


def _thinking_tool_loop_error(body: dict[str, Any]) -> str | None:
    """The real API's rule: with thinking on, the assistant turn answered by tool results must keep
    its signed thinking block."""
    messages = body.get("messages") or []
    if not body.get("thinking") or len(messages) < 2:
        return None
    last, previous = messages[-1], messages[-2]
    if not isinstance(last.get("content"), list) or not any(b.get("type") == "tool_result" for b in last["content"]):
        return None
    blocks = previous.get("content") if isinstance(previous.get("content"), list) else []
    first = blocks[0] if blocks else {}
    if first.get("type") != "thinking" or first.get("signature") != SIGNATURE:
        return ("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. When "
                "`thinking` is enabled, a final `assistant` message must start with a thinking block.")
    return None


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


COUNTED_TOKENS = 100


async def count_tokens(request: web.Request) -> web.Response:
    raw = await request.read()
    body = orjson.loads(raw)
    entry = record(request, body)
    entry.update(raw=raw.decode(), query=request.query_string)
    if request.headers.get("x-api-key") in (None, "bad-key") or not request.headers.get("anthropic-version"):
        return _error(401, "authentication_error", "invalid x-api-key")
    if "max_tokens" in body:  # count_tokens refuses what only sampling takes, as the real API does
        return _error(400, "invalid_request_error", "max_tokens: Extra inputs are not permitted")
    return web.json_response({"input_tokens": COUNTED_TOKENS + len(body.get("messages") or [])})


async def messages(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = orjson.loads(raw)
    entry = record(request, body)
    entry.update(raw=raw.decode(), query=request.query_string)
    model = str(body.get("model", ""))
    if request.headers.get("x-api-key") == "bad-key":
        return _error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("x-api-key") or not request.headers.get("anthropic-version"):
        return _error(401, "authentication_error", "missing x-api-key or anthropic-version")
    if "max_tokens" not in body:
        return _error(400, "invalid_request_error", "max_tokens: Field required")
    thinking_error = _thinking_tool_loop_error(body)
    if thinking_error:
        return _error(400, "invalid_request_error", thinking_error)
    if model == "claude-overloaded":
        return _error(529, "overloaded_error", "Overloaded")
    if model == "claude-invalid":
        return _error(400, "invalid_request_error", "messages: roles must alternate")
    if model == "claude-stall":
        await asyncio.sleep(3600)

    blocks, stop_reason, stop_sequence = _answer(body)
    usage = {"input_tokens": 12, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5, "output_tokens": 1}
    output_tokens = 7
    if not body.get("stream"):
        content = []
        for kind, value, name in blocks:
            if kind == "tool_use":
                content.append({"type": "tool_use", "id": "toolu_fake1", "name": name, "input": orjson.loads(value)})
            elif kind == "thinking":
                content.append({"type": "thinking", "thinking": value, "signature": SIGNATURE})
            else:
                content.append({"type": "text", "text": value})
        return web.json_response({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                                  "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                                  "usage": {**usage, "output_tokens": output_tokens}})

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_event("message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": usage}}))
    await response.write(_event("ping", {"type": "ping"}))
    try:
        if model == "claude-slow":
            await response.write(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                                "content_block": {"type": "text", "text": ""}}))
            for _ in range(600):
                await response.write(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                    "delta": {"type": "text_delta", "text": "x "}}))
                await asyncio.sleep(0.1)
        for index, (kind, value, name) in enumerate(blocks):
            start: dict[str, Any] = {"type": kind, "text": ""}
            if kind == "tool_use":
                start = {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}
            elif kind == "thinking":
                start = {"type": "thinking", "thinking": ""}
            await response.write(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                                "content_block": start}))
            if kind == "tool_use":
                for offset in range(0, len(value), 7):
                    await response.write(_event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": value[offset:offset + 7]}}))
            elif kind == "thinking":
                for word in value.split(" "):
                    await response.write(_event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": word + " "}}))
                await response.write(_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": SIGNATURE}}))
            else:
                for position, word in enumerate(value.split(" ")):
                    await response.write(_event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": word if position == 0 else " " + word}}))
                    if model == "claude-truncated":
                        return response  # the body ends without message_stop
                    if model == "claude-midstream":
                        await response.write(_event("error", {"type": "error", "error": {
                            "type": "overloaded_error", "message": "Overloaded"}}))
                        return response
            await response.write(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        await response.write(_event("message_delta", {"type": "message_delta",
                                                      "delta": {"stop_reason": stop_reason,
                                                                "stop_sequence": stop_sequence},
                                                      "usage": {"output_tokens": output_tokens}}))
        await response.write(_event("message_stop", {"type": "message_stop"}))
    except (asyncio.CancelledError, ConnectionResetError):
        entry["cancelled"] = True
        raise
    return response


async def models(request: web.Request) -> web.Response:
    record(request, None)
    if request.headers.get("x-api-key") in (None, "bad-key"):
        return _error(401, "authentication_error", "invalid x-api-key")
    ids = ["claude-text", "claude-tool", "claude-think"]
    return web.json_response({"data": [{"type": "model", "id": i, "display_name": i.title(),
                                        "created_at": "2025-01-01T00:00:00Z"} for i in ids],
                              "has_more": False, "first_id": ids[0], "last_id": ids[-1]})


def create_app() -> web.Application:
    return make_app(
        web.post("/v1/messages", messages),
        web.post("/v1/messages/count_tokens", count_tokens),
        web.get("/v1/models", models),
    )


def main() -> None:
    serve_main(create_app, default_port=9101, handler_cancellation=True)


if __name__ == "__main__":
    main()
