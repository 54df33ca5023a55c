"""A fake OpenAI-compatible upstream speaking the real wire format, on 127.0.0.1.

Behaviour is chosen by the model name, so one server covers every case:
  echo            reply with the last user text (streamed word by word)
  tool            reply with one tool call (streamed in argument fragments)
  words-N         stream N chunks of "w " (N defaults to 10); used by benchmarks
  error-NNN       answer HTTP NNN with an OpenAI error object (429/503 add Retry-After)
  stall           never answer (until the client gives up)
  slow-MS         wait MS milliseconds before answering, then as echo
  flaky-N         answer HTTP 500 to the first N requests for this model name, then as echo
  stall-mid       stream one chunk, then stall
  garbage         stream an invalid JSON event
  no-finish       stream content and [DONE] without any finish_reason
  mid-error       stream one chunk, then an error event
  redirect        answer 307 to another URL
  hangup          read the request, then close the connection without an answer
  no-done         stream content and a finish_reason, then end the body without [DONE]
  cut             stream content, then end the body (no finish_reason, no [DONE])
  finish-REASON   stream/answer with finish_reason REASON (stop, length, content_filter, ...)
  ws-N            stream N chunks whose content is whitespace only (" ", "\n", "\t  ")
  tools-N         N parallel tool calls (get_weather for PARALLEL_CITIES), streamed one after another
  think           reasoning_content deltas, then the echo
  stopseq         "counting 1 2", ended by the request's first stop string: finish_reason stop and, as
                  vLLM says it, the choice's stop_reason naming that string
Media routes: /v1/audio/transcriptions|translations (names the upload; every response_format;
model "error-NNN"; stream=true as events), /v1/audio/speech (8 chunks, 20 ms apart),
/v1/images/generations|edits (n copies of a 1x1 PNG).
Every request is recorded (path, headers, body): GET /_requests reads them, DELETE clears.
GET /_stats counts streaming responses: started, finished, aborted (the client closed the
connection, e.g. a gateway cancelling upstream work) and open right now.
Run standalone: python -m tests.fakes.openai_upstream --port N
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import make_app, record, serve_main

STATS = web.AppKey("stats", dict[str, int])
_FLAKY_SEEN: dict[str, int] = {}  # flaky-N: requests seen per model name (one fake process per test)


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
    if model == "strict" and "stream_options" in body:  # a server whose schema forbids extra fields (FastAPI's 422)
        return web.json_response({"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options"],
                                              "msg": "Extra inputs are not permitted"}]}, status=422)
    if model == "redirect":
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/elsewhere")
    if model == "hangup":  # read the request, then close the connection without answering
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError("the fake hung up")
    if model == "stall":
        await _stall(request)
    if model.startswith("slow-"):
        await asyncio.sleep(int(model.split("-", 1)[1]) / 1000)
    if model.startswith("flaky-"):
        seen = _FLAKY_SEEN[model] = _FLAKY_SEEN.get(model, 0) + 1
        if seen <= int(model.split("-", 1)[1]):
            return web.json_response({"error": {"message": f"fake flaky failure {seen}", "type": "server_error",
                                                "param": None, "code": None}}, status=500)

    scripted = _scripted(model, body)
    if scripted is not None:
        return await _answer_scripted(request, model, body, *scripted)

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
    # OpenAI sends "usage": null on each chunk when include_usage is set, then a usage-only chunk.
    await response.write(_chunk(model, {}, finish, **({"usage": None} if include_usage else {})))
    if include_usage:
        data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [], "usage": _usage()}
        await response.write(b"data: " + orjson.dumps(data) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


PARALLEL_CITIES = ("Paris", "London", "Tokyo")


def _scripted(model: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, Any]] | None:
    """(deltas, finish_reason, extra choice fields) of the scripted answers: tools-N, think, stopseq."""
    if model.startswith("tools-"):
        deltas: list[dict[str, Any]] = []
        for index, city in enumerate(PARALLEL_CITIES[: int(model.split("-", 1)[1])]):
            arguments = orjson.dumps({"city": city}).decode()
            deltas.append({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]})
            deltas += [{"tool_calls": [{"index": index, "function": {"arguments": arguments[i:i + 5]}}]}
                       for i in range(0, len(arguments), 5)]
        return deltas, "tool_calls", {}
    if model == "think":
        thoughts = [{"reasoning_content": word} for word in ("Let ", "me ", "think.")]
        return [*thoughts, {"content": f"echo: {_last_user_text(body)}"}], "stop", {}
    if model == "stopseq":
        stop = body.get("stop")
        first = stop if isinstance(stop, str) else (stop or [None])[0]
        return [{"content": "counting"}, {"content": " 1 2"}], "stop", {"stop_reason": first}
    return None


async def _answer_scripted(request: web.Request, model: str, body: dict[str, Any], deltas: list[dict[str, Any]],
                           finish: str, extra: dict[str, Any]) -> web.StreamResponse:
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None}
        calls: dict[int, dict[str, Any]] = {}
        for delta in deltas:
            if "content" in delta:
                message["content"] = (message["content"] or "") + delta["content"]
            if "reasoning_content" in delta:
                message["reasoning_content"] = message.get("reasoning_content", "") + delta["reasoning_content"]
            for fragment in delta.get("tool_calls", ()):
                call = calls.setdefault(fragment["index"], {"id": fragment.get("id"), "type": "function",
                                                            "function": {"name": "", "arguments": ""}})
                call["function"]["name"] += fragment["function"].get("name", "")
                call["function"]["arguments"] += fragment["function"].get("arguments", "")
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return web.json_response({"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                                  "model": model, "usage": _usage(),
                                  "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                               "logprobs": None, **extra}]})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk(model, {"role": "assistant", "content": ""}))
    for delta in deltas:
        await response.write(_chunk(model, delta))
    last = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish, **extra}]}
    await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model, "choices": [], "usage": _usage()}
        await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
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


# A 1x1 PNG: what the fake "generates" (and the content tests check for).
FAKE_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                         "1f15c4890000000d49444154789c6360000002000005000157b0d5760000000049454e44ae426082")


async def _form(request: web.Request) -> dict[str, Any]:
    """A multipart body as recorded: text fields as they are, files as {filename, content_type, size}."""
    fields: dict[str, Any] = {}
    reader = await request.multipart()
    async for part in reader:
        data = await part.read()  # type: ignore[union-attr]
        if part.filename:  # type: ignore[union-attr]
            fields[part.name or ""] = {"filename": part.filename, "content_type": part.headers.get("Content-Type"),  # type: ignore[union-attr]
                                       "size": len(data)}
        else:
            fields[part.name or ""] = data.decode()
    return fields


async def transcriptions(request: web.Request) -> web.StreamResponse:
    """Answers with the uploaded file's name and size, in the response_format asked for (a model
    "stream" answers as OpenAI's streamed transcription events)."""
    form = await _form(request)
    record(request, form)
    upload = form.get("file") or {}
    text = f"heard {upload.get('filename')} ({upload.get('size')} bytes)"
    if str(form.get("model", "")).startswith("error-"):
        status = int(str(form["model"]).split("-", 1)[1])
        return web.json_response({"error": {"message": f"fake upstream error {status}",
                                            "type": "invalid_request_error", "param": None, "code": None}},
                                 status=status)
    if form.get("stream") == "true":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in text.split(" "):
            await response.write(b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": word + " "})
                                 + b"\n\n")
        await response.write(b"data: " + orjson.dumps({"type": "transcript.text.done", "text": text}) + b"\n\n")
        return response
    kind = form.get("response_format", "json")
    if kind == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if kind in ("srt", "vtt"):
        stamp = "00:00:00,000 --> 00:00:01,000" if kind == "srt" else "00:00:00.000 --> 00:00:01.000"
        head = "1\n" if kind == "srt" else "WEBVTT\n\n"
        return web.Response(text=f"{head}{stamp}\n{text}\n", content_type="text/plain")
    if kind == "verbose_json":
        return web.json_response({"task": "transcribe", "language": "english", "duration": 1.0, "text": text,
                                  "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": text}]})
    return web.json_response({"text": text})


async def speech(request: web.Request) -> web.StreamResponse:
    """Streams "audio" in 8 chunks, 20 ms apart, with the content type of the format asked for."""
    body = await request.json()
    record(request, body)
    kind = body.get("response_format", "mp3")
    types = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/opus", "flac": "audio/flac",
             "aac": "audio/aac"}
    response = web.StreamResponse(headers={"Content-Type": types.get(kind, "audio/mpeg")})
    await response.prepare(request)
    for index in range(8):
        await response.write(f"chunk{index}:{body.get('input', '')[:16]};".encode())
        await asyncio.sleep(0.02)
    return response


async def images(request: web.Request) -> web.Response:
    """generations (JSON) and edits (multipart): n images of FAKE_PNG, as b64_json (or url)."""
    body: dict[str, Any] = await request.json() if request.content_type == "application/json" else await _form(request)
    record(request, body)
    count = int(body.get("n") or 1)
    if body.get("response_format") == "url":
        data = [{"url": f"http://127.0.0.1/fake/{i}.png"} for i in range(count)]
    else:
        data = [{"b64_json": base64.b64encode(FAKE_PNG).decode(), "revised_prompt": body.get("prompt")}
                for _ in range(count)]
    return web.json_response({"created": int(time.time()), "data": data})


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
        web.post("/v1/audio/transcriptions", transcriptions),
        web.post("/v1/audio/translations", transcriptions),
        web.post("/v1/audio/speech", speech),
        web.post("/v1/images/generations", images),
        web.post("/v1/images/edits", images),
        web.get("/_stats", get_stats),
    )
    app[STATS] = {"started": 0, "finished": 0, "aborted": 0, "open": 0}
    return app


def main() -> None:
    serve_main(create_fake_openai_app, default_port=9100)


if __name__ == "__main__":
    main()
