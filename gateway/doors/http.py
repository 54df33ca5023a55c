"""HTTP helpers every door shares: reading a JSON body, answering JSON, streaming SSE out of an event iterator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway.doors.sse import SSEWriter
from gateway.errors import GatewayError, bad_request, invalid
from gateway.keys import CONFIG, STREAMS
from gateway.ops.limits import read_body
from gateway.ops.logs import server_timing
from gateway.ops.stats import OBSERVER, current
from protocol.openai import RequestValidationError, validate

_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "application/octet-stream", "text/plain")
T = TypeVar("T")


# Request key: the body's bytes as they came, for a door that passes them on unchanged (``keep_raw``).
RAW_BODY = "acore_raw_body"


async def read_json_body(request: web.Request, *, keep_raw: bool = False) -> dict[str, Any]:
    """Decode the body as a JSON object, with size, time and content-type checks.

    The raw body is one buffer (ops/limits.read_body), dropped once decoded: the request holds one
    copy of its body, the decoded one."""
    limits = request.app[CONFIG].limits
    limit = limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, f"Request body too large: {request.content_length} bytes (limit {limit}).",
                           code="request_too_large")
    content_type = request.content_type
    # curl -d sends x-www-form-urlencoded; accept any body that is JSON, refuse multipart forms.
    if content_type and not (content_type in _JSON_TYPES or content_type.endswith("+json")):
        raise bad_request(f"Unsupported Content-Type {content_type!r}: send application/json.")
    raw = await read_body(request, limit, limits.body_timeout_s)
    if keep_raw:
        request[RAW_BODY] = bytes(raw)
    stats = current()
    if stats is not None and stats.capture is not None:  # debug logs: the payload as it arrived
        request.app[OBSERVER].payload(request, bytes(raw), stats)
    if not raw:
        raise bad_request("The request body is empty: send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc.msg}.") from None
    finally:
        del raw
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


async def read_request(request: web.Request, request_type: type[T]) -> tuple[dict[str, Any], T]:
    """The body, and the body validated as ``request_type`` (a 400 naming the parameter if not)."""
    body = await read_json_body(request)
    try:
        return body, validate(body, request_type)
    except RequestValidationError as exc:
        raise invalid(exc) from None


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
    stats = current()
    if stats is not None:
        # The headers leave with the first event: the times up to it (the upstream's time to first
        # event, and ours); the whole request's are in the access log and /metrics.
        extra["Server-Timing"] = server_timing(stats, time.perf_counter())
    writer = SSEWriter(request, extra)
    request.app[STREAMS].register()
    try:
        await writer.prepare()
        if first is not None:
            await send(writer, first)  # the first event goes out at once: time to first chunk
            # Later events are queued and written together whenever the source would wait for
            # the network: a burst of upstream events costs one socket write, not one each,
            # and a slow trickle still goes out event by event without delay.
            writer.batching = True
            while True:
                try:
                    event = await _next_flushing(events, writer)
                except StopAsyncIteration:
                    break
                await send(writer, event)
        if on_end is not None:
            await on_end(writer)
        await writer.flush()
    except GatewayError as exc:
        await _safe(_error_and_flush(on_error, writer, exc))
    except asyncio.CancelledError:
        # Client gone (handler cancellation) or server shutting down: tell the client if it still listens.
        if request.app[STREAMS].closing:
            await _safe(_error_and_flush(
                on_error, writer, GatewayError(503, "The server is shutting down.", type="server_error")))
        raise
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; closing the iterator below cancels the upstream work
    finally:
        await _close(events)
    return await writer.finish()


async def _error_and_flush(on_error: Callable[[SSEWriter, GatewayError], Any], writer: SSEWriter,
                           error: GatewayError) -> None:
    await on_error(writer, error)
    await writer.flush()


class _Resume:
    """Awaits an ``__anext__`` step that already started and is suspended on ``waiting``.

    It hands each future the step waits on to the running task, exactly as ``await`` would,
    and delivers a cancellation (or any error thrown into the task) to the step, so the
    source sees the same exceptions at the same place as with a plain ``await anext(...)``.
    """

    __slots__ = ("error", "step", "waiting")

    def __init__(self, step: Any, waiting: Any, error: BaseException | None = None) -> None:
        self.step = step
        self.waiting = waiting
        self.error = error

    def __await__(self) -> Any:
        step, waiting, error = self.step, self.waiting, self.error
        while True:
            if error is not None:
                if isinstance(waiting, asyncio.Future) and isinstance(error, asyncio.CancelledError):
                    waiting.cancel()  # what Task.cancel() does to the future it waits on
                try:
                    waiting = step.throw(error)
                except StopIteration as done:
                    return done.value
                error = None
            try:
                yield waiting
            except BaseException as exc:
                error = exc
                continue
            try:
                waiting = step.send(None)
            except StopIteration as done:
                return done.value


async def _next_flushing(events: AsyncIterator[Any], writer: SSEWriter) -> Any:
    """``anext(events)``, writing the queued frames first if the source has to wait."""
    step = events.__anext__()
    try:
        waiting = step.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value  # the source had the next event ready: keep queueing
    if not writer.pending:
        return await _Resume(step, waiting)
    try:
        await writer.flush()
    except BaseException as exc:  # the client went away or the task was cancelled while writing
        return await _Resume(step, waiting, exc)
    return await _Resume(step, waiting)


CLOSE_WAIT_S = 2.0  # how long a request being cancelled waits for its event source to close


async def _close(events: AsyncIterator[Any]) -> None:
    """Close the event source, also when the request is being cancelled (the client is gone): the close
    runs to its end first (the upstream released, a worker told to Abort, the tokens made so far
    noted), so the request's access line and /metrics see it; the cancellation goes on after."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    closing = asyncio.ensure_future(aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await asyncio.wait((closing,), timeout=CLOSE_WAIT_S)
        if closing.done() and not closing.cancelled():
            closing.exception()  # retrieved: a failing close is not this request's error
        raise
    except Exception:
        pass


async def _safe(awaitable: Any) -> None:
    try:
        await awaitable
    except (ConnectionResetError, ConnectionError, RuntimeError):
        pass
