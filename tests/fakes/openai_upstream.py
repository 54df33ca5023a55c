"""A fake OpenAI-compatible upstream speaking the real wire format, on 127.0.0.1.

Behaviour is chosen by the model name, so one server covers every case:
  echo            reply with the last user text (streamed word by word)
  tool            reply with one tool call (streamed in argument fragments)
  words-N         stream N chunks of "w " (N defaults to 10); used by benchmarks
  error-NNN       answer HTTP NNN with an OpenAI error object (429/503 add Retry-After)
  stall           never answer (until the client gives up)
  stall-mid       stream one chunk, then stall
  garbage         stream an invalid JSON event
  no-finish       stream content and [DONE] without any finish_reason
  mid-error       stream one chunk, then an error event
  redirect        answer 307 to another URL
  no-done         stream content and a finish_reason, then end the body without [DONE]
  cut             stream content, then end the body (no finish_reason, no [DONE])
  finish-REASON   stream/answer with finish_reason REASON (stop, length, content_filter, ...)
  ws-N            stream N chunks whose content is whitespace only (" ", "\n", "\t  ")
Every request is recorded (path, headers, body): GET /_requests reads them, DELETE clears.
GET /_stats counts streaming responses: started, finished, aborted (the client closed the
connection, e.g. a gateway cancelling upstream work) and open right now.
Run standalone: python -m tests.fakes.openai_upstream --port N
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import make_app, record, serve_main

STATS = web.AppKey("stats", dict[str, int])


async def _stall(request: web.Request) -> None:
    """Stall until the client goes away, then raise as a write would.

    Polling the transport (instead of one long sleep) lets the fake notice a closed
    connection without aiohttp's handler cancellation, so /_stats can prove that the
    gateway really dropped its upstream request.
    """
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        await asyncio.sleep(0.02)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _usage(prompt: int = 5, completion: int = 3) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


TOOL_ARGS = '{"city": "Paris", "unit": "celsius"}'


async def chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = orjson.loads(raw)
    record(request, body)
    model = str(body.get("model", ""))
    stream = bool(body.get("stream"))

    if model.startswith("error-"):
        status = int(model.split("-", 1)[1])
        headers = {"Retry-After": "7"} if status in (429, 503) else {}
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}.get(status, "server_error")
        return web.json_response(
            {"error": {"message": f"fake upstream error {status}", "type": kind, "param": "messages", "code": f"code_{status}"}},
            status=status,
            headers=headers,
        )
    if model == "redirect":
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/elsewhere")
    if model == "stall":
        await _stall(request)

    text = _last_user_text(body) or "hello"
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": f"echo: {text}"}
        finish = "stop"
        if model == "tool":
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGS}}],
            }
            finish = "tool_calls"
        elif model.startswith("finish-"):
            finish = model.split("-", 1)[1]
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": _usage(),
                "system_fingerprint": "fp_fake",
            }
        )

    stats = request.app[STATS]
    stats["started"] += 1
    stats["open"] += 1
    try:
        response = await _stream(request, body, model)
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        stats["aborted"] += 1
        raise
    else:
        stats["finished"] += 1
    finally:
        stats["open"] -= 1
    return response


async def _stream(request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
    text = _last_user_text(body) or "hello"
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if model == "garbage":
        await response.write(_chunk(model, {"role": "assistant", "content": ""}))
        await response.write(b"data: {not json\n\n")
        return response
    await response.write(_chunk(model, {"role": "assistant", "content": ""}))
    if model == "tool":
        await response.write(_chunk(model, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                             "function": {"name": "get_weather", "arguments": ""}}]}))
        for start in range(0, len(TOOL_ARGS), 8):
            await response.write(_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGS[start:start + 8]}}]}))
        finish = "tool_calls"
    elif model.startswith("ws-"):
        spaces = (" ", "\n", "\t  ", "  \n ")
        for index in range(int(model.split("-", 1)[1])):
            await response.write(_chunk(model, {"content": spaces[index % len(spaces)]}))
        finish = "stop"
    elif model.startswith("finish-"):
        await response.write(_chunk(model, {"content": "cut"}))
        finish = model.split("-", 1)[1]
    elif model.startswith("words"):
        count = int(model.split("-", 1)[1]) if "-" in model else 10
        frame = _chunk(model, {"content": "w "})
        for _ in range(count):
            await response.write(frame)
        finish = "stop"
    else:
        pieces = f"echo: {text}".split(" ")
        for index, piece in enumerate(pieces):
            await response.write(_chunk(model, {"content": piece if index == 0 else " " + piece}))
            if model == "stall-mid":
                await _stall(request)
            if model == "mid-error":
                await response.write(b"data: " + orjson.dumps({"error": {"message": "upstream exploded", "type": "server_error"}}) + b"\n\n")
                return response
        finish = "stop"
    if model == "no-finish":
        await response.write(b"data: [DONE]\n\n")
        return response
    if model == "cut":
        return response
    if model == "no-done":
        await response.write(_chunk(model, {}, finish))
        return response
    await response.write(_chunk(model, {}, finish))
    if include_usage:
        data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [], "usage": _usage()}
        await response.write(b"data: " + orjson.dumps(data) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


def _responses_object(body: dict[str, Any], text: str, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
    return {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": status,
            "model": body.get("model"), "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": body.get("tools") or [], "previous_response_id": body.get("previous_response_id"),
            "usage": usage if status == "completed" else None, "error": None, "incomplete_details": None}


async def responses(request: web.Request) -> web.StreamResponse:
    """OpenAI's /v1/responses for the passthrough: echo the input text; mid-error breaks off after one delta."""
    body = await request.json()
    record(request, body)
    model = str(body.get("model", ""))
    if model.startswith("error-"):
        status = int(model.split("-", 1)[1])
        return web.json_response({"error": {"message": f"fake upstream error {status}", "type": "invalid_request_error",
                                            "param": None, "code": f"code_{status}"}}, status=status)
    source = body.get("input")
    if isinstance(source, list):
        source = " ".join(str(p.get("text", "")) for item in source if isinstance(item, dict)
                          for p in (item.get("content") if isinstance(item.get("content"), list) else
                                    [{"text": item.get("content", "")}]) if isinstance(p, dict))
    text = f"echo: {source}"
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    if not body.get("stream"):
        return web.json_response(_responses_object(body, text, "completed", [message]))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    seq = 0

    async def send(event: dict[str, Any]) -> None:
        nonlocal seq
        event["sequence_number"] = seq
        seq += 1
        await response.write(f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n")

    start = _responses_object(body, text, "in_progress", [])
    await send({"type": "response.created", "response": start})
    await send({"type": "response.in_progress", "response": start})
    added = {**message, "status": "in_progress", "content": []}
    await send({"type": "response.output_item.added", "output_index": 0, "item": added})
    part = {"type": "output_text", "text": "", "annotations": []}
    await send({"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                "part": part})
    for index, piece in enumerate(text.split(" ")):
        await send({"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
                    "content_index": 0, "delta": piece if index == 0 else " " + piece, "logprobs": []})
        if model == "mid-error":
            return response  # the connection ends without response.completed
    await send({"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                "text": text, "logprobs": []})
    await send({"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                "part": {**part, "text": text}})
    await send({"type": "response.output_item.done", "output_index": 0, "item": message})
    await send({"type": "response.completed", "response": _responses_object(body, text, "completed", [message])})
    return response


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    record(request, body)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for index, text in enumerate(inputs):
        # deterministic 8-dim vectors derived from the text
        seed = sum(ord(c) for c in str(text))
        data.append({"object": "embedding", "index": index, "embedding": [((seed * (i + 3)) % 17) / 17.0 for i in range(8)]})
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": len(inputs) * 2, "total_tokens": len(inputs) * 2}})


async def models(request: web.Request) -> web.Response:
    record(request, None)
    ids = ["echo", "tool", "text-embedding-3-small"]
    return web.json_response({"object": "list", "data": [{"id": i, "object": "model", "owned_by": "fake"} for i in ids]})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def create_fake_openai_app() -> web.Application:
    app = make_app(
        web.post("/v1/chat/completions", chat),
        web.post("/v1/embeddings", embeddings),
        web.post("/v1/responses", responses),
        web.get("/v1/models", models),
        web.get("/_stats", get_stats),
    )
    app[STATS] = {"started": 0, "finished": 0, "aborted": 0, "open": 0}
    return app


def main() -> None:
    serve_main(create_fake_openai_app, default_port=9100)


if __name__ == "__main__":
    main()
