"""POST /v1/responses, GET and DELETE /v1/responses/{id}.

A provider with its own Responses endpoint (``capabilities.native_responses``: openai/…)
gets the request passed through (passthrough); every other provider goes through the
canonical chat pipeline (gateway.pipeline.chat) and back into Responses events (events).
A non-streaming request runs the same stream and answers the collected Response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web

from gateway.doors.files import inline_stored_files
from gateway.doors.http import json_response, read_request, stream_events
from gateway.doors.responses.convert import Converted, input_items, to_chat
from gateway.doors.responses.events import Event, ResponseBuilder
from gateway.doors.responses.passthrough import Passthrough, portable_items
from gateway.doors.sse import SSEWriter
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, FILE_STORE, PROVIDERS
from gateway.ops.store import STATE_STORE, StateStore, Stored, StoreUnavailable
from gateway.pipeline import chat
from gateway.providers.base import ChatCall
from gateway.providers.registry import Target
from protocol.chat import ChatRequest
from protocol.responses import ResponsesRequest

log = logging.getLogger("acore.gateway")


def _unavailable(exc: StoreUnavailable) -> GatewayError:
    return GatewayError(503, f"Stored responses are unavailable right now: {exc}", type="server_error",
                        code="state_store_unavailable", headers={"Retry-After": "5"})


async def _load(app: web.Application, response_id: str) -> Stored | None:
    try:
        return await app[STATE_STORE].load(response_id)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None


def _not_found(response_id: str, param: str) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found")


async def create_response(request: web.Request) -> web.StreamResponse:
    body, parsed = await read_request(request, ResponsesRequest)
    if parsed.input is None and parsed.messages is None:
        raise bad_request("Either input or messages is required.", param="input")
    app = request.app
    target = app[PROVIDERS].resolve(parsed.model)
    request["log"].update(provider=target.provider, model=target.model, stream=bool(parsed.stream), api="responses")
    # An alias or a models list runs on the chat path, where its targets are tried in turn.
    routed = parsed.model in app[CONFIG].models or bool(parsed.models)
    if not routed and app[PROVIDERS].provider_for(target.provider).capabilities.native_responses:
        return await _passthrough(request, body, parsed, target)
    return await _via_chat(request, body, parsed, target)


# --------------------------------------------------------------------------- every provider: the chat path

async def _via_chat(request: web.Request, body: dict[str, Any], parsed: ResponsesRequest,
                    target: Target) -> web.StreamResponse:
    app = request.app
    store = app[STATE_STORE]
    history: list[dict[str, Any]] | None = None
    if parsed.previous_response_id:
        stored = await _load(app, parsed.previous_response_id)
        if stored is None:
            raise _not_found(parsed.previous_response_id, "previous_response_id")
        history = stored.items
    converted = to_chat(body, history)
    call = chat.new_call(app, converted.request, request.headers, request["request_id"], target)
    call.notices.extend(converted.notices)
    builder = ResponseBuilder(body, call.requested_model, converted.tools)
    events = _run(app, call, builder, converted, history, store if parsed.store is not False else None)

    if not parsed.stream:
        async with aclosing(events):  # a client gone mid-answer still closes the upstream stream
            async for _ in events:
                pass  # the builder collects the answer
        return json_response(builder.response(), headers=chat.notices_header(call))

    async def send(writer: SSEWriter, event: Event) -> None:
        await writer.send(event[1], event[0])

    async def on_error(writer: SSEWriter, error: GatewayError) -> None:
        request["log"]["stream_error"] = error.message
        for name, data in builder.fail(error):
            await writer.send(data, name)

    return await stream_events(request, events, send, headers_after_first=lambda: chat.notices_header(call),
                               on_error=on_error)


async def _run(app: web.Application, call: ChatCall, builder: ResponseBuilder, converted: Converted,
               history: list[dict[str, Any]] | None, store: StateStore | None) -> AsyncGenerator[Event, None]:
    chunks = chat.stream(app, call)
    try:
        # The first chunk comes before response.created so an early failure keeps its HTTP status.
        try:
            first: dict[str, Any] | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        for event in builder.start():
            yield event
        if first is not None:
            for event in builder.feed(first):
                yield event
        async for chunk in chunks:
            for event in builder.feed(chunk):
                yield event
        final = builder.finish()
        if store is not None:
            inputs = [*(history or ()), *converted.items]
            output = [item.data for item in builder.items]
            try:
                await store.save(builder.response(), [*inputs, *output], len(inputs))
            except StoreUnavailable as exc:  # the answer is still served; only its continuation is lost
                log.warning("response %s was not stored: %s", builder.response().get("id"), exc)
                call.notices.append("this response was not stored (the state store is unavailable)")
        for event in final:
            yield event
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- openai/…: OpenAI's own endpoint

async def _passthrough(request: web.Request, body: dict[str, Any], parsed: ResponsesRequest,
                       target: Target) -> web.StreamResponse:
    # The Responses body goes upstream as is; the hooks see only key, URL and model.
    carrier = ChatRequest(messages=[], stream=parsed.stream, timeout_s=parsed.timeout_s)
    call = ChatCall(
        request_id=request["request_id"],
        provider=target.provider,
        model=target.model,
        requested_model=target.requested,
        request=carrier,
        api_key=chat.provider_key_from(request.headers, parsed.api_key),
        base_url=parsed.base_url or None,
    )
    if parsed.previous_response_id:
        stored = await _load(request.app, parsed.previous_response_id)
        if stored is not None:
            # A conversation acore stored (it began on another provider): OpenAI cannot know the id, so the
            # history goes as input items instead. Any other id is OpenAI's own and passes through.
            body = {**body, "input": [*portable_items(stored.items), *input_items(body)]}
            body.pop("previous_response_id")
    body = await inline_stored_files(request.app.get(FILE_STORE), body)  # acore's file ids: the provider has none
    upstream = Passthrough(request.app, call, body)
    if not call.stream:
        return json_response(await upstream.complete(), headers=chat.notices_header(call))

    async def send(writer: SSEWriter, event: tuple[str | None, dict[str, Any]]) -> None:
        await writer.send(event[1], event[0])

    async def on_error(writer: SSEWriter, error: GatewayError) -> None:
        request["log"]["stream_error"] = error.message
        for name, data in upstream.failure_events(error):
            await writer.send(data, name)

    return await stream_events(request, upstream.events(), send, headers_after_first=lambda: chat.notices_header(call),
                               on_error=on_error)


# --------------------------------------------------------------------------- stored responses

async def get_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = await _load(request.app, response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    return json_response(stored.response)


async def get_input_items(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = await _load(request.app, response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    items = stored.items[:stored.input_count]
    return json_response({"object": "list", "data": items, "has_more": False,
                          "first_id": items[0].get("id") if items else None,
                          "last_id": items[-1].get("id") if items else None})


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    try:
        deleted = await request.app[STATE_STORE].remove(response_id)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    if not deleted:
        raise _not_found(response_id, "response_id")
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def websocket_responses(request: web.Request) -> web.Response:
    """Codex's built-in provider first tries a WebSocket; answer at once so it falls back to HTTP."""
    raise GatewayError(426, "WebSocket transport is not supported here: POST /v1/responses instead.",
                       code="websocket_not_supported", headers={"Upgrade": "websocket"})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/responses", websocket_responses)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", get_input_items)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
