"""A fake Ollama server on 127.0.0.1 speaking the native API (NDJSON streaming).

Behaviour is chosen by the model name:
  llama-text        echo the last user text, word by word (and the number of images received)
  llama-tool        one message.tool_calls chunk (arguments as an object); when the last message is a
                    tool result, answer with text quoting it
  llama-think       message.thinking chunks, then content
  llama-length      done_reason "length"
  llama-error       HTTP 500 {"error": ...}
  llama-midstream   one content chunk, then an {"error": ...} line
  llama-truncated   one content chunk, then the body ends (no done line)
  llama-stall       never answer
  llama-slow        one chunk every 100 ms for about 60 s, or `options.num_predict` chunks when set
  anything else     HTTP 404 model not found (as Ollama does)
POST /api/embed returns deterministic vectors; GET /api/tags lists models (one embedding model);
POST /api/generate with keep_alive 0 and no prompt is an unload. Every request is recorded with
its headers: GET /_requests reads them, DELETE clears.
Run standalone: python -m tests.fakes.ollama_upstream --port N
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import make_app, record, serve_main

KNOWN = ("llama-text", "llama-tool", "llama-think", "llama-length", "llama-error", "llama-midstream",
         "llama-stall", "llama-slow", "llama-truncated")
STAMP = "2025-01-01T00:00:00.000000Z"


def _line(model: str, message: dict[str, Any] | None = None, **extra: Any) -> bytes:
    data: dict[str, Any] = {"model": model, "created_at": STAMP}
    if message is not None:
        data["message"] = {"role": "assistant", "content": "", **message}
    data.update(extra)
    return orjson.dumps(data) + b"\n"


def _done(model: str, reason: str = "stop") -> bytes:
    return _line(model, {}, done=True, done_reason=reason, total_duration=1000, load_duration=10,
                 prompt_eval_count=9, prompt_eval_duration=100, eval_count=4, eval_duration=200)


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    entry = record(request, body)
    model = str(body.get("model", ""))
    if model not in KNOWN:
        return web.json_response({"error": f"model '{model}' not found"}, status=404)
    if model == "llama-error":
        return web.json_response({"error": "llama runner process has terminated"}, status=500)
    if model == "llama-stall":
        await asyncio.sleep(3600)
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    text = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "") or "hello"
    images = sum(len(m.get("images") or ()) for m in messages)

    lines: list[bytes] = []
    reason = "stop"
    if model == "llama-tool" and last.get("role") != "tool":
        lines.append(_line(model, {"tool_calls": [{"function": {"name": "get_weather",
                                                                "arguments": {"city": "Paris", "unit": "celsius"}}}]}))
    elif model == "llama-tool":
        lines.append(_line(model, {"content": f"The tool {last.get('tool_name')} said: {last.get('content')}"}))
    else:
        if model == "llama-think":
            lines += [_line(model, {"thinking": word + " "}) for word in "Echo the user.".split(" ")]
        answer = f"echo: {text}" + (f" (images: {images})" if images else "")
        lines += [_line(model, {"content": w if i == 0 else " " + w}) for i, w in enumerate(answer.split(" "))]
        if model == "llama-length":
            reason = "length"

    if not body.get("stream", True):
        content = "".join(orjson.loads(x)["message"].get("content", "") for x in lines)
        return web.json_response({"model": model, "created_at": STAMP, "message": {"role": "assistant",
                                  "content": content}, "done": True, "done_reason": reason,
                                  "prompt_eval_count": 9, "eval_count": 4})

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        if model == "llama-slow":
            count = int((body.get("options") or {}).get("num_predict") or 600)
            for _ in range(count):
                await response.write(_line(model, {"content": "x "}, done=False))
                await asyncio.sleep(0.1)
        for index, line in enumerate(lines):
            await response.write(line)
            if model == "llama-truncated" and index == 0:
                return response  # the body ends without a done line
            if model == "llama-midstream" and index == 0:
                await response.write(orjson.dumps({"error": "an error was encountered while running the model"}) + b"\n")
                return response
        await response.write(_done(model, reason))
    except (asyncio.CancelledError, ConnectionResetError):
        entry["cancelled"] = True
        raise
    return response


async def embed(request: web.Request) -> web.Response:
    body = await request.json()
    record(request, body)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = [[((sum(map(ord, str(t))) * (i + 3)) % 17) / 17.0 + 0.01 for i in range(6)] for t in inputs]
    return web.json_response({"model": body.get("model"), "embeddings": vectors, "prompt_eval_count": 2 * len(inputs)})


async def generate(request: web.Request) -> web.Response:
    body = await request.json()
    record(request, body)
    if body.get("keep_alive") == 0 and not body.get("prompt"):
        return web.json_response({"model": body.get("model"), "created_at": STAMP, "response": "", "done": True,
                                  "done_reason": "unload"})
    return web.json_response({"error": "only unload is faked"}, status=400)


async def tags(request: web.Request) -> web.Response:
    record(request, None)
    models = [{"name": f"{m}:latest", "model": f"{m}:latest", "details": {"family": "llama", "families": ["llama"]}}
              for m in ("llama-text", "llama-tool")]
    models.append({"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest",
                   "details": {"family": "nomic-bert", "families": ["nomic-bert"]}})
    models.append({"name": "all-minilm:latest", "model": "all-minilm:latest",
                   "details": {"family": "bert", "families": ["bert"]}})
    return web.json_response({"models": models})


def create_app() -> web.Application:
    return make_app(
        web.post("/api/chat", chat),
        web.post("/api/embed", embed),
        web.post("/api/generate", generate),
        web.get("/api/tags", tags),
    )


def main() -> None:
    serve_main(create_app, default_port=9102, handler_cancellation=True)


if __name__ == "__main__":
    main()
