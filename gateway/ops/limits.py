"""The in-flight byte budget: request bodies and decoded attachments held at once, all requests together.

Every request's body stays in memory while the request runs (its decoded form travels to the
provider), so twenty 30 MB bodies at once are gigabytes. ``budget_middleware`` takes a request's
Content-Length (twice: BODY_COPIES) from the budget before anything reads the body, and answers
503 + Retry-After at once when the budget cannot hold it; a chunked body (no Content-Length) takes its bytes as they
arrive (``read_body``), decoded attachments when they are decoded (``charge``). Everything a
request took goes back when it ends. ``read_body`` reads a body into one buffer sized from
Content-Length and keeps no other copy (aiohttp's ``request.read()`` grows a buffer, then copies
it into a bytes object it caches for the whole request).

The budget is ``[limits] max_inflight_bytes`` (``--max-inflight-bytes``,
``ACORE_MAX_INFLIGHT_BYTES``; default 1/8 of the RAM).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import orjson
from aiohttp import web

from gateway.errors import GatewayError, body_for_path
from gateway.keys import CONFIG
from gateway.ops.stats import OBSERVER

RETRY_AFTER_S = "1"
# A body is held twice while it is decoded (its bytes and the decoded JSON), then once, and its upstream
# encoding is another copy while it is sent: it is counted twice so the budget bounds what memory holds.
BODY_COPIES = 2


class ByteBudget:
    """Bytes held by requests now, against a capacity (one per process; the loop is single-threaded)."""

    __slots__ = ("capacity", "held", "on_refused", "peak", "refused")

    def __init__(self, capacity: int, on_refused: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self.refused = 0
        self.on_refused = on_refused  # counted in /metrics (acore_refused_total{reason="memory_budget"})

    def take(self, size: int) -> bool:
        if size > 0 and self.held + size > self.capacity:
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused()
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def give(self, size: int) -> None:
        self.held -= size


class Reservation:
    """What one request took from the budget; given back when the request ends."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: ByteBudget, size: int = 0) -> None:
        self.budget = budget
        self.size = size

    def add(self, size: int, what: str) -> None:
        if not self.budget.take(size):
            raise over_budget(what)
        self.size += size

    def release(self) -> None:
        self.budget.give(self.size)
        self.size = 0


BUDGET = web.AppKey("inflight_budget", ByteBudget)
_CURRENT: ContextVar[Reservation | None] = ContextVar("acore_inflight_reservation", default=None)


def over_budget(what: str) -> GatewayError:
    return GatewayError(503, f"The server holds as many request bytes as it may right now ({what} does not fit); "
                             "retry shortly.", type="server_error", code="server_busy",
                        headers={"Retry-After": RETRY_AFTER_S})


def charge(size: int, what: str = "a decoded attachment") -> None:
    """Take ``size`` more bytes for the running request (503 when they do not fit)."""
    reservation = _CURRENT.get()
    if reservation is not None:
        reservation.add(size, what)


@web.middleware
async def budget_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    budget = request.app[BUDGET]
    length = (request.content_length or 0) * BODY_COPIES
    if length > budget.capacity:
        length = 0  # could never fit: the route's own size limit answers it (413) without reading it
    if not budget.take(length):
        # Before the body is read: the client sends it, aiohttp drains it briefly, nothing is kept.
        error = over_budget(f"a body of {request.content_length} bytes")
        return web.Response(status=503, body=orjson.dumps(body_for_path(request.path, 503, error.message,
                                                                        error.code)),
                            content_type="application/json", headers=error.headers)
    reservation = Reservation(budget, length)
    token = _CURRENT.set(reservation)
    try:
        return await handler(request)
    finally:
        _CURRENT.reset(token)
        reservation.release()


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytearray:
    """The whole body in one buffer, within ``limit`` bytes and ``timeout_s`` in total (not between
    bytes: a body trickling in a byte at a time still ends then). 413 over the limit, 408 past the time."""
    length = request.content_length
    reservation = _CURRENT.get()
    try:
        async with asyncio.timeout(timeout_s):
            if length is not None:
                return await _read_sized(request, length)
            return await _read_chunked(request, limit, reservation)
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           code="request_timeout") from None


async def _read_sized(request: web.Request, length: int) -> bytearray:
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    content = request.content
    while filled < length:
        chunk = await content.readany()
        if not chunk:
            break
        end = min(length, filled + len(chunk))
        view[filled:end] = chunk[: end - filled]
        filled = end
    view.release()
    if filled < length:  # aiohttp's parser stops at Content-Length; fewer bytes: the client went away
        del body[filled:]
    return body


async def _read_chunked(request: web.Request, limit: int, reservation: Reservation | None) -> bytearray:
    body = bytearray()
    content = request.content
    while True:
        chunk = await content.readany()
        if not chunk:
            return body
        if len(body) + len(chunk) > limit:
            raise GatewayError(413, f"Request body too large: over {limit} bytes.", code="request_too_large")
        if reservation is not None:
            reservation.add(len(chunk) * BODY_COPIES, "a chunked body")
        body += chunk


def setup(app: web.Application) -> None:
    observer = app.get(OBSERVER)
    app[BUDGET] = ByteBudget(app[CONFIG].limits.max_inflight_bytes,
                             None if observer is None else lambda: observer.refused("memory_budget"))
