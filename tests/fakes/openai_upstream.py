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
Every request is recorded (path, headers, body): GET /_requests reads them, DELETE clears.
Run standalone: python -m tests.fakes.openai_upstream --port N
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

RECORDS = web.AppKey("records", list[dict[str, Any]])


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
    request.app[RECORDS].append({"path": request.path, "headers": dict(request.headers), "body": body})
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
        await asyncio.sleep(3600)

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
                await asyncio.sleep(3600)
            if model == "mid-error":
                await response.write(b"data: " + orjson.dumps({"error": {"message": "upstream exploded", "type": "server_error"}}) + b"\n\n")
                return response
        finish = "stop"
    if model == "no-finish":
        await response.write(b"data: [DONE]\n\n")
        return response
    await response.write(_chunk(model, {}, finish))
    if include_usage:
        data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [], "usage": _usage()}
        await response.write(b"data: " + orjson.dumps(data) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[RECORDS].append({"path": request.path, "headers": dict(request.headers), "body": body})
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for index, text in enumerate(inputs):
        # deterministic 8-dim vectors derived from the text
        seed = sum(ord(c) for c in str(text))
        data.append({"object": "embedding", "index": index, "embedding": [((seed * (i + 3)) % 17) / 17.0 for i in range(8)]})
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": len(inputs) * 2, "total_tokens": len(inputs) * 2}})


async def models(request: web.Request) -> web.Response:
    request.app[RECORDS].append({"path": request.path, "headers": dict(request.headers), "body": None})
    ids = ["echo", "tool", "text-embedding-3-small"]
    return web.json_response({"object": "list", "data": [{"id": i, "object": "model", "owned_by": "fake"} for i in ids]})


async def get_records(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECORDS])


async def clear_records(request: web.Request) -> web.Response:
    request.app[RECORDS].clear()
    return web.json_response({"ok": True})


def create_fake_openai_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[RECORDS] = []
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_requests", get_records)
    app.router.add_delete("/_requests", clear_records)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    web.run_app(create_fake_openai_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
