"""POST /v1/responses, GET and DELETE /v1/responses/{id}.

``openai/…`` goes to OpenAI's own Responses endpoint (openai_passthrough);
every other provider goes through the canonical chat pipeline
(gateway.chat.prepare_chat / stream) and back into Responses events (events).
A non-streaming request runs the same stream and answers the collected Response.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web

from gateway import chat
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.providers.base import ChatCall
from gateway.responses.convert import Converted, input_items, to_chat
from gateway.responses.events import Event, ResponseBuilder
from gateway.responses.openai_passthrough import Passthrough, portable_items
from gateway.responses.store import ResponseStore
from gateway.routes.common import json_response, read_json_body, stream_events
from gateway.sse import SSEWriter
from protocol.openai import RequestValidationError, validate
from protocol.responses import ResponsesRequest

RESPONSE_STORE = web.AppKey("response_store", ResponseStore)
# Providers whose own /v1/responses takes the request unchanged.
PASSTHROUGH_PROVIDERS = frozenset({"openai"})


def _not_found(response_id: str, param: str) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found")


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    try:
        parsed = validate(body, ResponsesRequest)
    except RequestValidationError as exc:
        raise bad_request(exc.message, param=exc.param) from None
    if parsed.input is None and parsed.messages is None:
        raise bad_request("Either input or messages is required.", param="input")
    app = request.app
    provider, model, requested = app[PROVIDERS].resolve(parsed.model)
    request["log"].update(provider=provider, model=model, stream=bool(parsed.stream), api="responses")
    if provider in PASSTHROUGH_PROVIDERS and app[PROVIDERS].pinned is None:
        return await _passthrough(request, body, parsed, provider, model, requested)
    return await _via_chat(request, body, parsed)


# --------------------------------------------------------------------------- every provider: the chat path

async def _via_chat(request: web.Request, body: dict[str, Any], parsed: ResponsesRequest) -> web.StreamResponse:
    app = request.app
    store = app[RESPONSE_STORE]
    history: list[dict[str, Any]] | None = None
    if parsed.previous_response_id:
        stored = store.get(parsed.previous_response_id)
        if stored is None:
            raise _not_found(parsed.previous_response_id, "previous_response_id")
        history = stored.items
    converted = to_chat(body, history)
    call = chat.prepare_chat(app, converted.body, request.headers, request["request_id"])
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
               history: list[dict[str, Any]] | None, store: ResponseStore | None) -> AsyncGenerator[Event, None]:
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
            store.put(builder.response(), [*inputs, *output], len(inputs))
        for event in final:
            yield event
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- openai/…: OpenAI's own endpoint

async def _passthrough(request: web.Request, body: dict[str, Any], parsed: ResponsesRequest, provider: str,
                       model: str, requested: str) -> web.StreamResponse:
    call = ChatCall(
        request_id=request["request_id"],
        provider=provider,
        model=model,
        requested_model=requested,
        body={},  # the Responses body goes upstream as is; hooks see only key, URL and model
        stream=bool(parsed.stream),
        api_key=chat.provider_key_from(request.headers, body),
        base_url=parsed.base_url or None,
        timeout_s=parsed.timeout_s,
    )
    if parsed.previous_response_id:
        stored = request.app[RESPONSE_STORE].get(parsed.previous_response_id)
        if stored is not None:
            # A conversation acore stored (it began on another provider): OpenAI cannot know the id, so the
            # history goes as input items instead. Any other id is OpenAI's own and passes through.
            body = {**body, "input": [*portable_items(stored.items), *input_items(body)]}
            body.pop("previous_response_id")
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
    stored = request.app[RESPONSE_STORE].get(response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    return json_response(stored.response)


async def get_input_items(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = request.app[RESPONSE_STORE].get(response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    items = stored.items[:stored.input_count]
    return json_response({"object": "list", "data": items, "has_more": False,
                          "first_id": items[0].get("id") if items else None,
                          "last_id": items[-1].get("id") if items else None})


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not request.app[RESPONSE_STORE].delete(response_id):
        raise _not_found(response_id, "response_id")
    return json_response({"id": response_id, "object": "response", "deleted": True})


def setup(app: web.Application) -> None:
    app[RESPONSE_STORE] = ResponseStore.from_env(app[CONFIG].env)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", get_input_items)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
