"""Helpers shared by the HTTP routes: reading a JSON body, streaming SSE out of a chunk iterator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, STREAMS
from gateway.sse import SSEWriter

_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "application/octet-stream", "text/plain")
BODY_READ_TIMEOUT_S = 30.0


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """Decode the body as a JSON object, with size, time and content-type checks."""
    limit = request.app[CONFIG].limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, f"Request body too large: {request.content_length} bytes (limit {limit}).",
                           code="request_too_large")
    content_type = request.content_type
    # curl -d sends x-www-form-urlencoded; accept any body that is JSON, refuse multipart forms.
    if content_type and not (content_type in _JSON_TYPES or content_type.endswith("+json")):
        raise bad_request(f"Unsupported Content-Type {content_type!r}: send application/json.")
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):  # no extra task per request, unlike wait_for
            raw = await request.read()
    except TimeoutError:
        raise GatewayError(408, "Timed out reading the request body.", code="request_timeout") from None
    if not raw:
        raise bad_request("The request body is empty: send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc.msg}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def stream_events(
    request: web.Request,
    events: AsyncIterator[Any],
    send: Callable[[SSEWriter, Any], Any],
    *,
    headers: dict[str, str] | None = None,
    headers_after_first: Callable[[], dict[str, str]] | None = None,
    on_error: Callable[[SSEWriter, GatewayError], Any],
    on_end: Callable[[SSEWriter], Any] | None = None,
) -> web.StreamResponse:
    """Stream events as SSE. Waits for the first event before answering 200, so an
    early failure keeps its HTTP status; a later one becomes one error event."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _close(events)
        raise
    extra = dict(headers or {})
    if headers_after_first is not None:
        extra.update(headers_after_first())
    writer = SSEWriter(request, extra)
    request.app[STREAMS].register()
    try:
        await writer.prepare()
        if first is not None:
            await send(writer, first)
            async for event in events:
                await send(writer, event)
        if on_end is not None:
            await on_end(writer)
    except GatewayError as exc:
        await _safe(on_error(writer, exc))
    except asyncio.CancelledError:
        # Client gone (handler cancellation) or server shutting down: tell the client if it still listens.
        if request.app[STREAMS].closing:
            await _safe(on_error(writer, GatewayError(503, "The server is shutting down.", type="server_error")))
        raise
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; closing the iterator below cancels the upstream work
    finally:
        await _close(events)
    return await writer.finish()


async def _close(events: AsyncIterator[Any]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await asyncio.shield(aclose())
        except Exception:
            pass


async def _safe(awaitable: Any) -> None:
    try:
        await awaitable
    except (ConnectionResetError, ConnectionError, RuntimeError):
        pass
