"""The gateway's side of the worker protocol: one ROUTER socket, one reader task, per-request queues.

Workers connect to us (DEALER -> ROUTER), so a worker started by hand joins a
running gateway and one worker may serve several gateways. Only the reader
task receives; replies are routed by request id to the asyncio.Queue of the
request that sent it. A frame that fails to decode is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from gateway.config import ConfigError
from gateway.errors import GatewayError
from gateway.pool.scheduler import RequestInfo, Scheduler, WorkerState
from protocol.codec import MAX_MESSAGE_BYTES, MalformedFrame, encode, gateway_side_decoder
from protocol.endpoints import is_loopback_tcp
from protocol.local import HEARTBEAT_INTERVAL_S, HEARTBEAT_TIMEOUT_S
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    AnyMessage,
    Chunk,
    Error,
    ErrorCode,
    Final,
    Goodbye,
    Heartbeat,
    Probe,
    Ready,
)

log = logging.getLogger("acore.gateway")

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


def check_bind(endpoint: str) -> None:
    """No CURVE support yet, so a worker socket reachable from other hosts would be unauthenticated."""
    if endpoint.startswith("tcp://") and not is_loopback_tcp(endpoint):
        raise ConfigError(f"refusing to bind the worker socket on {endpoint}: a non-loopback tcp:// bind "
                          "needs CURVE keys, which are not configured; bind tcp://127.0.0.1:PORT or use ipc://")
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"worker bind {endpoint!r} must be a tcp:// or ipc:// endpoint")


def worker_error(error: Error) -> GatewayError:
    status = STATUS_BY_CODE.get(error.code, 500)  # type: ignore[call-overload]
    code = None if error.code == ErrorCode.INTERNAL else error.code
    message = error.message or f"The worker failed the request ({error.code})."
    headers = {"Retry-After": "1"} if status == 429 else None
    return GatewayError(status, message, param=error.param, code=code, headers=headers)


def worker_dead(worker: WorkerState, reason: str) -> GatewayError:
    return GatewayError(502, f"The worker {worker.id} serving {worker.ready.model} went away ({reason}).",
                        type="server_error", code=ErrorCode.WORKER_DEAD)


@dataclass(slots=True)
class Reply:
    message: AnyMessage
    frames: list[bytes]


class Lease:
    """One request's claim on a worker slot, and the queue its replies arrive on."""

    def __init__(self, pool: WorkerPool, worker: WorkerState, request_id: str) -> None:
        self.pool = pool
        self.worker = worker
        self.request_id = request_id
        self.queue: asyncio.Queue[Reply | GatewayError] = asyncio.Queue()
        self.finished = False
        self.sent = False

    async def send(self, message: AnyMessage, *binary: bytes | memoryview) -> None:
        self.sent = True
        await self.pool.send(self.worker, message, *binary)

    async def next(self, idle_s: float) -> Reply:
        """The next reply; raises GatewayError for an Error, a dead worker or a silent one."""
        try:
            if self.queue.empty():
                # asyncio.timeout, not wait_for: no extra task per token on Python 3.11.
                async with asyncio.timeout(idle_s):
                    item = await self.queue.get()
            else:
                item = self.queue.get_nowait()
        except TimeoutError:
            raise GatewayError(504, f"The worker {self.worker.id} sent nothing for {idle_s:.0f} s.",
                               type="timeout_error", code="timeout") from None
        if isinstance(item, GatewayError):
            self.finished = True
            raise item
        if isinstance(item.message, Error):
            self.finished = True
            raise worker_error(item.message)
        if isinstance(item.message, Final):
            self.finished = True
        return item

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


class WorkerPool:
    def __init__(self, endpoint: str, queue_depth: int, expected: Callable[[str, str], bool],
                 failure: Callable[[str], str | None] = lambda _name: None) -> None:
        self.endpoint = endpoint
        self.session = "gw-" + secrets.token_hex(6)
        self.scheduler = Scheduler(queue_depth, expected, failure)
        self.leases: dict[str, Lease] = {}
        self.dropped_frames = 0
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._decoder = gateway_side_decoder()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        check_bind(self.endpoint)
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigError(f"cannot bind the worker socket {self.endpoint}: {exc}") from None
        self._sock = sock
        self._tasks = [asyncio.create_task(self._reader(), name="pool-reader"),
                       asyncio.create_task(self._heartbeats(), name="pool-heartbeats")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for worker in list(self.scheduler.workers.values()):
            if worker.alive:
                self.mark_dead(worker, "the gateway is shutting down")
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    # ------------------------------------------------------------------ requests

    async def lease(self, request: RequestInfo, wait_s: float) -> Lease:
        worker = await self.scheduler.acquire(request, wait_s)
        lease = Lease(self, worker, request.request_id)
        self.leases[request.request_id] = lease
        return lease

    async def send(self, worker: WorkerState, message: AnyMessage, *binary: bytes | memoryview) -> None:
        if self._sock is None:
            raise GatewayError(503, "The worker pool is not running.", type="server_error")
        await self._sock.send_multipart([worker.identity, *encode(message, *binary)])

    def live_workers(self) -> list[WorkerState]:
        return [w for w in self.scheduler.workers.values() if w.alive]

    def mark_dead(self, worker: WorkerState, reason: str) -> None:
        if not worker.alive:
            return
        log.warning("worker %s (%s, pid %d) is dead: %s", worker.id, worker.ready.model, worker.ready.pid, reason)
        worker.alive = False
        worker.died_at = time.monotonic()
        error = worker_dead(worker, reason)
        for request_id in list(worker.requests):
            lease = self.leases.get(request_id)
            if lease is not None:
                lease.queue.put_nowait(error)
        worker.requests.clear()
        self.scheduler.dispatch()

    def mark_dead_pid(self, pid: int) -> None:
        """The supervisor saw this process exit: no need to wait for missed heartbeats."""
        for worker in list(self.scheduler.workers.values()):
            if worker.ready.pid == pid:
                self.mark_dead(worker, f"process {pid} exited")

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            try:
                self._handle(frames)
            except Exception:  # one bad message must never stop the reader
                log.exception("worker pool: failed to handle a message")

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.dropped_frames += 1
            return
        identity = frames[0]
        try:
            message, binary = self._decoder.decode(frames[1:])
        except MalformedFrame as exc:
            self.dropped_frames += 1
            log.warning("dropped a malformed frame from %r (%d so far): %s", identity[:64], self.dropped_frames,
                        str(exc)[:200])
            return
        worker = self.scheduler.workers.get(identity)
        if isinstance(message, Ready):
            self._register(identity, message)
            return
        if isinstance(message, Goodbye):
            if worker is not None and worker.alive:
                self.mark_dead(worker, "it stopped")
            return
        if worker is None or not worker.alive:
            # A worker we do not know (we restarted, or declared it dead): ask it to announce itself.
            asyncio.get_running_loop().create_task(self._probe(identity))
            return
        worker.last_seen = time.monotonic()
        if isinstance(message, Heartbeat):
            worker.reported_active = message.active
            worker.reported_queued = message.queued
        elif isinstance(message, Chunk | Final | Error):
            lease = self.leases.get(message.request_id)
            if lease is not None and lease.worker is worker:
                lease.queue.put_nowait(Reply(message, [bytes(b) for b in binary]))

    def _register(self, identity: bytes, ready: Ready) -> None:
        if ready.protocol_version != PROTOCOL_VERSION:
            self.dropped_frames += 1
            log.warning("worker %s speaks protocol %d, not %d: ignored", ready.worker_id, ready.protocol_version,
                        PROTOCOL_VERSION)
            return
        known = self.scheduler.workers.get(identity)
        if known is not None and known.alive:
            known.ready = ready  # re-announce (answer to a Probe): keep its requests
            known.last_seen = time.monotonic()
            self.scheduler.dispatch()
            return
        log.info("worker %s joined: %s/%s (pid %d, %d slot(s))", ready.worker_id, ready.provider, ready.model,
                 ready.pid, max(1, ready.max_concurrency))
        self.scheduler.add(WorkerState(identity=identity, ready=ready, last_seen=time.monotonic()))

    async def _probe(self, identity: bytes) -> None:
        if self._sock is not None:
            try:
                await self._sock.send_multipart([identity, *encode(Probe(session=self.session))])
            except zmq.ZMQError:
                pass

    async def _heartbeats(self) -> None:
        assert self._sock is not None
        beat = encode(Heartbeat(sender=self.session))
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            now = time.monotonic()
            for worker in self.live_workers():
                if now - worker.last_seen > HEARTBEAT_TIMEOUT_S:
                    self.mark_dead(worker, f"no message for {now - worker.last_seen:.1f} s")
                    continue
                try:
                    await self._sock.send_multipart([worker.identity, *beat])
                except zmq.ZMQError:
                    pass
            self.scheduler.prune()
