"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API in front of every model.

A provider with its own Messages API (``capabilities.native_messages``: anthropic/…) gets the
request passed through byte for byte (passthrough.py), unless the model is an alias with several
targets (their fallbacks need the canonical pipeline). Every other request becomes the canonical
ChatRequest (request.py) and runs through the same pipeline as the chat door
(``pipeline.chat.new_call`` / ``complete`` / ``stream``, aliases included); the answer comes back as
an Anthropic Message (response.py) or Anthropic's event sequence (stream.py). Errors on these
paths are Anthropic's shape (errors.py), also as a stream's ``event: error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.doors.http import RAW_BODY, json_response, read_json_body, stream_events
from gateway.doors.messages.count_tokens import SOURCE_HEADER, count_with_tokenizer, estimate_tokens
from gateway.doors.messages.errors import error_event, error_response, is_messages_path
from gateway.doors.messages.passthrough import Passthrough
from gateway.doors.messages.request import parse_count_tokens, parse_messages, to_chat
from gateway.doors.messages.response import to_message
from gateway.doors.messages.stream import EventBuilder
from gateway.doors.sse import SSEWriter
from gateway.errors import ERROR_SHAPES, GatewayError
from gateway.keys import CONFIG, PROVIDERS
from gateway.pipeline import chat
from gateway.providers.base import ChatCall
from gateway.providers.registry import Target
from protocol.chat import ChatRequest

routes = web.RouteTableDef()

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


def _passes_through(app: web.Application, model: str, target: Target) -> bool:
    """The provider serves the Messages API itself, and the model is not an alias whose several targets
    (or per-target settings) only the canonical pipeline runs."""
    if not app[PROVIDERS].provider_for(target.provider).capabilities.native_messages:
        return False
    group = app[CONFIG].models.get(model)
    if group is None:
        return True
    only = group.targets[0] if len(group.targets) == 1 else None
    return only is not None and not only.base_url and only.max_tokens is None


def _passthrough_call(request: web.Request, body: dict[str, Any], target: Target, stream: bool) -> ChatCall:
    """The ChatCall a passthrough carries through the hooks (base_url policy) to the provider's resolver:
    key, URL and timeout; the body itself goes upstream untouched."""
    timeout = body.get("timeout_s")
    canonical = ChatRequest(model=body.get("model"), messages=[], stream=stream,
                            base_url=body.get("base_url") if isinstance(body.get("base_url"), str) else None,
                            timeout_s=float(timeout) if isinstance(timeout, int | float) else None)
    return ChatCall(request_id=request["request_id"], provider=target.provider, model=target.model,
                    requested_model=target.requested, request=canonical,
                    api_key=chat.provider_key_from(request.headers, body.get("api_key")),
                    base_url=canonical.base_url or None)


async def _passthrough(request: web.Request, body: dict[str, Any], target: Target, stream: bool,
                       path: str) -> web.StreamResponse:
    raw: bytes = request[RAW_BODY]  # the client's own bytes (read_json_body keep_raw)
    call = _passthrough_call(request, body, target, stream)
    if request.query_string:  # Claude Code posts to /v1/messages?beta=true
        path = f"{path}?{request.query_string}"
    passthrough = Passthrough(request.app, call, raw, body, request.headers, path)
    if not stream:
        payload = await passthrough.complete()
        return web.Response(body=payload, status=passthrough.status, content_type=passthrough.content_type,
                            headers=chat.notices_header(call))

    async def send(writer: SSEWriter, frame: bytes) -> None:
        await writer.send_raw(frame)

    return await stream_events(request, passthrough.events(), send,
                               headers_after_first=lambda: chat.notices_header(call), on_error=_on_error(request))


def _on_error(request: web.Request) -> Callable[[SSEWriter, GatewayError], Awaitable[None]]:
    """A failure after the stream started: its last event is Anthropic's ``event: error``."""

    async def on_error(writer: SSEWriter, error: GatewayError) -> None:
        request["log"]["stream_error"] = error.message
        await writer.send(error_event(error), "error")

    return on_error


@routes.post(MESSAGES)
async def create_message(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request, keep_raw=True)
    parsed = parse_messages(body)
    app = request.app
    target = app[PROVIDERS].resolve(parsed.model)
    stream = bool(parsed.stream)
    request["log"].update(provider=target.provider, model=target.model, stream=stream, api="messages")
    if _passes_through(app, parsed.model, target):
        return await _passthrough(request, body, target, stream, MESSAGES)
    converted = to_chat(parsed)
    call = chat.new_call(app, converted.request, request.headers, request["request_id"], target)
    call.notices.extend(converted.notices)
    stops = converted.request.stop_list
    if not call.stream:
        result = await chat.complete(app, call)
        return json_response(to_message(result, call.requested_model, stops), headers=chat.notices_header(call))

    # The pipeline's chunks go straight to the writer; the builder turns each into its frames (the first
    # also brings message_start, so an error before it keeps its HTTP status).
    builder = EventBuilder(call.requested_model, stops, lambda: call.usage)

    async def send(writer: SSEWriter, chunk: dict[str, Any]) -> None:
        frames = builder.chunk(chunk)
        if frames:
            await writer.send_raw(frames)

    async def on_end(writer: SSEWriter) -> None:
        await writer.send_raw(builder.finish())

    return await stream_events(request, chat.stream(app, call), send, on_end=on_end,
                               headers_after_first=lambda: chat.notices_header(call), on_error=_on_error(request))


@routes.post(COUNT_TOKENS)
async def count_tokens(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request, keep_raw=True)
    parsed = parse_count_tokens(body)
    app = request.app
    target = app[PROVIDERS].resolve(parsed.model)
    request["log"].update(provider=target.provider, model=target.model, stream=False, api="count_tokens")
    if _passes_through(app, parsed.model, target):
        response = await _passthrough(request, body, target, False, COUNT_TOKENS)
        response.headers[SOURCE_HEADER] = "upstream"
        return response
    converted = to_chat(parsed)
    call = chat.new_call(app, converted.request, request.headers, request["request_id"], target)
    call.notices.extend(converted.notices)
    provider = app[PROVIDERS].provider_for(call.provider)
    headers = chat.notices_header(call)
    if provider.capabilities.count_tokens:
        count = await count_with_tokenizer(provider, call)
        return json_response({"input_tokens": count}, headers={**headers, SOURCE_HEADER: "tokenizer"})
    estimate = estimate_tokens(converted.request)
    return json_response({"input_tokens": estimate, "estimated": True}, headers={**headers, SOURCE_HEADER: "estimate"})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.setdefault(ERROR_SHAPES, []).append((is_messages_path, error_response))
