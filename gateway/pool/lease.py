"""A Lease: one request's claim on a worker slot, and where the reader delivers that request's replies.

The pool's reader appends replies as they come off the socket and wakes the request once;
the request then takes every reply that has arrived since (``next_batch``), so a burst of
tokens costs one wake-up and, downstream, one SSE event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from gateway.errors import GatewayError
from gateway.pool.scheduler import WorkerState
from protocol.messages import Abort, AnyMessage, Error, ErrorCode, Final

if TYPE_CHECKING:
    from gateway.pool.client import WorkerPool

# Worker error code -> HTTP status (docs/worker-protocol.md).
STATUS_BY_CODE = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.NOT_SUPPORTED: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.WORKER_DEAD: 502,
}


def worker_error(error: Error) -> GatewayError:
    status = STATUS_BY_CODE.get(error.code, 500)  # type: ignore[call-overload]
    code = None if error.code == ErrorCode.INTERNAL else error.code
    message = error.message or f"The worker failed the request ({error.code})."
    headers = {"Retry-After": "1"} if status == 429 else None
    return GatewayError(status, message, param=error.param, code=code, headers=headers)


@dataclass(slots=True)
class Reply:
    message: AnyMessage
    frames: list[Any]  # binary frames after the header (buffers: vectors)


class Lease:
    """One request's claim on a worker slot, and the replies that arrived for it."""

    __slots__ = ("deadline", "finished", "idle_s", "items", "last_batch", "pool", "request_id", "sent", "waiter",
                 "worker")

    def __init__(self, pool: WorkerPool, worker: WorkerState, request_id: str) -> None:
        self.pool = pool
        self.worker = worker
        self.request_id = request_id
        self.items: deque[Reply | GatewayError] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # while waiting: when the pool's watchdog gives up on the worker
        self.idle_s = 0.0
        self.last_batch = 0.0  # when next_batch last returned (the stream interval counts from it)
        self.finished = False
        self.sent = False

    # ------------------------------------------------------------------ the reader's side

    def deliver(self, item: Reply | GatewayError) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ the request's side

    async def send(self, message: AnyMessage, *binary: bytes | memoryview) -> None:
        self.sent = True
        await self.pool.send(self.worker, message, *binary)

    async def _wait(self, idle_s: float) -> None:
        if self.items:
            return
        # No timer per wait (a stream waits once per token): the pool's watchdog checks the deadline
        # a few times a second and delivers the timeout as an item.
        loop = asyncio.get_running_loop()
        self.idle_s = idle_s
        self.deadline = loop.time() + idle_s
        self.waiter = loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
            self.deadline = 0.0

    def expire(self, now: float) -> None:
        """The watchdog's check: a worker silent past the deadline fails the wait."""
        if self.deadline and now >= self.deadline and not self.items:
            self.deliver(GatewayError(504, f"The worker {self.worker.id} sent nothing for {self.idle_s:.0f} s.",
                                      type="timeout_error", code="timeout"))

    def _check(self, item: Reply | GatewayError) -> Reply:
        if isinstance(item, GatewayError):
            self.finished = True
            raise item
        if isinstance(item.message, Error):
            self.finished = True
            raise worker_error(item.message)
        if isinstance(item.message, Final):
            self.finished = True
        return item

    async def next(self, idle_s: float) -> Reply:
        """The next reply; raises GatewayError for an Error, a dead worker or a silent one."""
        await self._wait(idle_s)
        return self._check(self.items.popleft())

    async def next_batch(self, idle_s: float, interval_s: float = 0.0) -> list[Reply]:
        """Every reply that has arrived (at least one), up to and including a Final. An error after
        some replies is raised on the next call, so the replies before it are not lost.

        With ``interval_s``, a batch is not taken sooner than that after the previous one (unless it
        ends the request): tokens arriving meanwhile join it, so a stream costs one event per interval
        instead of one per token. The first batch is never held (time to first token)."""
        await self._wait(idle_s)
        if interval_s and self.last_batch:
            loop = asyncio.get_running_loop()
            wait = self.last_batch + interval_s - loop.time()
            if wait > 0 and not self._ends():
                await asyncio.sleep(wait)
        self.last_batch = asyncio.get_running_loop().time()
        batch: list[Reply] = []
        items = self.items
        while items:
            item = items[0]
            if batch and (isinstance(item, GatewayError) or isinstance(item.message, Error)):
                break
            items.popleft()
            reply = self._check(item)
            batch.append(reply)
            if self.finished:
                break
        return batch

    def _ends(self) -> bool:
        """A reply that ends the request has arrived (a Final, an Error, a dead worker)."""
        return any(isinstance(item, GatewayError) or isinstance(item.message, Final | Error) for item in self.items)

    async def close(self) -> None:
        """Free the slot; a request that did not finish is aborted in the worker."""
        self.pool.leases.pop(self.request_id, None)
        if self.sent and not self.finished and self.worker.alive:
            try:
                await self.pool.send(self.worker, Abort(request_id=self.request_id))
            except zmq.ZMQError:
                pass
        self.finished = True
        self.pool.scheduler.release(self.worker, self.request_id)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())
