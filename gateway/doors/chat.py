"""POST /v1/chat/completions, streaming (SSE) and not: the OpenAI chat door."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.doors.http import json_response, read_json_body, stream_events
from gateway.doors.sse import SSEWriter
from gateway.errors import GatewayError, invalid
from gateway.keys import CONFIG
from gateway.pipeline import chat
from gateway.pipeline.agent_format import rewrite_completion, rewrite_stream, tags_for
from protocol.chat import parse_chat
from protocol.openai import RequestValidationError

routes = web.RouteTableDef()


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    try:
        chat_request = parse_chat(body)
    except RequestValidationError as exc:
        raise invalid(exc) from None
    call = chat.new_call(request.app, chat_request, request.headers, request["request_id"])
    tags = tags_for(chat_request.agent_format, request.app[CONFIG].env)  # tool calls as text tags, if asked
    request["log"].update(provider=call.provider, model=call.model, stream=call.stream)
    if not call.stream:
        result = rewrite_completion(await chat.complete(request.app, call), tags)
        return json_response(result, headers=chat.notices_header(call))

    async def send(writer: SSEWriter, chunk: dict[str, Any]) -> None:
        await writer.send(chunk)

    async def on_error(writer: SSEWriter, error: GatewayError) -> None:
        request["log"]["stream_error"] = error.message
        await writer.send_error(error)
        await writer.done()

    async def on_end(writer: SSEWriter) -> None:
        await writer.done()

    return await stream_events(
        request,
        rewrite_stream(chat.stream(request.app, call), tags),
        send,
        headers_after_first=lambda: chat.notices_header(call),
        on_error=on_error,
        on_end=on_end,
    )


def setup(app: web.Application) -> None:
    app.add_routes(routes)
