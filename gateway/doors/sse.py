"""A StreamResponse-based Server-Sent Events writer.

Writes ``data: ...`` frames (optionally with ``event:`` lines), ends with
``data: [DONE]`` for chat streams, and turns a failure midway into one OpenAI
error event. Open streams register with the app's StreamTracker so a graceful
shutdown can end them instead of waiting for its timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError

_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class SSEWriter:
    """Writes SSE frames. With ``batching`` on, frames are queued and go out together on
    ``flush()`` (stream_events flushes whenever its source would wait for the network), so a
    burst of upstream events costs one socket write instead of one each."""

    # Never hold back more than this, however fast the source produces.
    MAX_PENDING_BYTES = 64 * 1024

    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self.request = request
        request_id = request.get("request_id")
        base = {**_HEADERS, "x-request-id": request_id} if request_id else dict(_HEADERS)
        self.response = web.StreamResponse(status=200, headers={**base, **(headers or {})})
        self.closed = False
        self.batching = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def prepare(self) -> None:
        await self.response.prepare(self.request)

    async def _write(self, frame: bytes) -> None:
        if not self.batching:
            await self.response.write(frame)
            return
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes >= self.MAX_PENDING_BYTES:
            await self.flush()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> None:
        if self._pending:
            frames = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            await self.response.write(frames)

    async def send(self, data: dict[str, Any], event: str | None = None) -> None:
        payload = orjson.dumps(data)
        if event is None:
            await self._write(b"data: " + payload + b"\n\n")
        else:
            await self._write(b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n")

    async def send_raw(self, frame: bytes) -> None:
        await self._write(frame)

    async def send_error(self, error: GatewayError, event: str | None = None) -> None:
        await self.send(error.body(), event)

    async def done(self) -> None:
        await self._write(b"data: [DONE]\n\n")

    async def finish(self) -> web.StreamResponse:
        if not self.closed:
            self.closed = True
            try:
                await self.flush()
                await self.response.write_eof()
            except (ConnectionResetError, ConnectionError, RuntimeError):
                pass
        return self.response


class StreamTracker:
    """In-flight requests and the tasks serving open streams, for a graceful stop (ops/drain.py):
    the server waits for them up to its shutdown timeout, then cancels the streams left, each of
    which ends with an error event."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.requests = 0  # requests being handled (counted by ops/drain.py's middleware)
        self._idle = asyncio.Event()
        self._idle.set()

    def register(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    def started(self) -> None:
        self.requests += 1
        self._idle.clear()

    def ended(self) -> None:
        self.requests -= 1
        if self.requests <= 0:
            self.requests = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline for the whole drain
        """Wait until no request is in flight, at most ``timeout`` seconds; True when it is so."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close_all(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - bounds the wait for cancelled tasks only
        self.closing = True
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
