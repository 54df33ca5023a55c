"""The gateway's side of the worker protocol: one ROUTER socket, read straight off the event loop.

Workers connect to us (DEALER -> ROUTER), so a worker started by hand joins a running gateway
and one worker may serve several gateways. The socket is a plain (not asyncio) pyzmq socket
whose file descriptor the event loop watches: when it is readable, ``_drain`` takes every
message waiting, decodes it and hands it to its request's Lease by request id, with no task or
future per message. A frame that fails to decode is dropped and counted. Over tcp:// with keys
the socket is a CURVE server (gateway/pool/auth.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from gateway.config import ConfigError
from gateway.errors import GatewayError
from gateway.pool.auth import WorkerAuth
from gateway.pool.lease import Lease, Reply
from gateway.pool.scheduler import RequestInfo, Scheduler, WorkerState
from protocol.codec import MAX_MESSAGE_BYTES, MalformedFrame, encode, gateway_side_decoder
from protocol.curve import key_id
from protocol.endpoints import ipc_in_use, ipc_path, is_loopback_tcp, remove_ipc
from protocol.local import HEARTBEAT_INTERVAL_S, HEARTBEAT_TIMEOUT_S
from protocol.messages import (
    PROTOCOL_VERSION,
    AnyMessage,
    Chunk,
    Error,
    ErrorCode,
    Final,
    Fronts,
    Goodbye,
    Heartbeat,
    Loading,
    MediaChunk,
    Probe,
    Ready,
)

log = logging.getLogger("acore.gateway")

_HOSTNAME = socket.gethostname()
# Plain ints, not pyzmq's enums: checked once per message, and enum arithmetic costs microseconds.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
WATCHDOG_S = 0.1  # how often waiting requests' idle limits are checked
# Messages handled per wake-up before the loop gets a turn (the rest are handled on the next one).
MAX_PER_WAKE = 256
# libzmq's own keep-alive on tcp links: a peer silent this long has its connection dropped and
# redialled (our heartbeats decide when a worker is dead; this keeps a half-open link from lingering).
ZMQ_HEARTBEAT_IVL_MS = 1000
ZMQ_HEARTBEAT_TIMEOUT_MS = 5000


def check_bind(endpoint: str, curve: bool = False) -> None:
    """A worker socket reachable from other hosts must authenticate its peers (CURVE)."""
    if endpoint.startswith("tcp://") and not is_loopback_tcp(endpoint) and not curve:
        raise ConfigError(f"refusing to bind the worker socket on {endpoint}: a non-loopback tcp:// bind needs "
                          "CURVE keys (--worker-keys DIR, see `acore-gateway keygen`); or bind tcp://127.0.0.1:PORT "
                          "or ipc://")
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"worker bind {endpoint!r} must be a tcp:// or ipc:// endpoint")


def claim_ipc(endpoint: str) -> None:
    """Before binding an ipc:// socket: a live gateway's socket is refused (binding would silently take it
    over), a file a crashed run left behind is removed."""
    path = ipc_path(endpoint)
    if path is None or not path.exists():
        return
    if ipc_in_use(path):
        raise ConfigError(f"another gateway serves workers on {endpoint}: stop it, or use another --port or "
                          "--worker-bind")
    path.unlink(missing_ok=True)
    log.info("removed the worker socket %s left behind by a gateway that did not stop", path)


def worker_dead(worker: WorkerState, reason: str) -> GatewayError:
    return GatewayError(502, f"The worker {worker.id} serving {worker.ready.model} went away ({reason}).",
                        type="server_error", code=ErrorCode.WORKER_DEAD)


class WorkerPool:
    def __init__(self, endpoint: str, queue_depth: int, expected: Callable[[str, str], bool],
                 failure: Callable[[str], str | None] = lambda _name: None, auth: WorkerAuth | None = None,
                 fronts: list[str] | None = None) -> None:
        self.endpoint = endpoint
        self.fronts = fronts or [endpoint]  # every HTTP front's worker socket (--processes N)
        self.expected_models: set[tuple[str, str]] = set()  # (engine, name) of the configured workers
        self.auth = auth if endpoint.startswith("tcp://") else None
        self.session = "gw-" + secrets.token_hex(6)
        self.scheduler = Scheduler(queue_depth, expected, failure)
        self.leases: dict[str, Lease] = {}
        self.dropped_frames = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._decoder = gateway_side_decoder()
        self._drain_scheduled = False
        self._fd = -1
        self._beats: dict[int, float] = {}  # heartbeat number -> when it was sent (for round-trip times)
        # Workers that announced a download or load but no Ready yet: identity -> (last Loading, when).
        self.loading: dict[bytes, tuple[Loading, float]] = {}
        self._seq = 0

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        check_bind(self.endpoint, curve=self.auth is not None)
        claim_ipc(self.endpoint)
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A message to a worker whose connection is down this moment (it is redialling) raises instead of
        # vanishing: ``send`` then waits for the connection to come back rather than lose the request.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.endpoint.startswith("tcp://"):
            sock.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        if self.auth is not None:
            self.auth.apply(sock)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigError(f"cannot bind the worker socket {self.endpoint}: {exc}") from None
        self._sock = sock
        if self.auth is not None:
            self.auth.start(self._ctx, sock)
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self._tasks = [asyncio.create_task(self._heartbeats(), name="pool-heartbeats"),
                       asyncio.create_task(self._watchdog(), name="pool-watchdog")]
        self._schedule_drain()  # anything that arrived between bind and add_reader

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
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        if self.auth is not None:
            await self.auth.stop()
        if self._sock is not None:
            self._sock.close(linger=0)
            remove_ipc(self.endpoint)  # the socket file, and its directory when nothing else is left there
        if self._ctx is not None:
            self._ctx.term()

    # ------------------------------------------------------------------ requests

    async def lease(self, request: RequestInfo, wait_s: float) -> Lease:
        worker = await self.scheduler.acquire(request, wait_s)
        lease = Lease(self, worker, request.request_id)
        self.leases[request.request_id] = lease
        return lease

    async def send(self, worker: WorkerState, message: AnyMessage, *binary: bytes | memoryview) -> None:
        frames = [worker.identity, *encode(message, *binary)]
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT_S
        while not self._send(frames):
            # Not connected right now: a worker redials within its backoff (a dropped link, a CURVE
            # handshake still under way), or its heartbeats stop and it is declared dead.
            if not worker.alive or time.monotonic() > deadline:
                raise worker_dead(worker, "its connection did not come back")
            await asyncio.sleep(0.02)

    def _send(self, frames: list[Any]) -> bool:
        """Send without blocking; False when the peer is not connected this moment (nothing was sent)."""
        sock = self._sock
        if sock is None:
            raise GatewayError(503, "The worker pool is not running.", type="server_error")
        delivered = True
        try:
            sock.send_multipart(frames, flags=_NOBLOCK, copy=False)
        except zmq.Again:
            pass  # the peer's queue is full (it stopped reading): its heartbeats will say it is gone
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            delivered = False
        # A send can consume the socket's readable edge: look for waiting messages ourselves.
        if sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self._schedule_drain()
        return delivered

    def live_workers(self) -> list[WorkerState]:
        return [w for w in self.scheduler.workers.values() if w.alive]

    def mark_dead(self, worker: WorkerState, reason: str) -> None:
        if not worker.alive:
            return
        log.warning("worker %s (%s, pid %d%s) is dead: %s", worker.id, worker.ready.model, worker.ready.pid,
                    f", {worker.address}" if worker.address else "", reason)
        worker.alive = False
        worker.died_at = time.monotonic()
        error = worker_dead(worker, reason)
        for request_id in list(worker.requests):
            lease = self.leases.get(request_id)
            if lease is not None:
                lease.deliver(error)
        worker.requests.clear()
        self.scheduler.dispatch()

    def mark_dead_pid(self, pid: int) -> None:
        """The supervisor saw this process exit: no need to wait for missed heartbeats."""
        for worker in list(self.scheduler.workers.values()):
            if worker.ready.pid == pid and worker.ready.host in ("", _HOSTNAME):  # a pid is only unique per host
                self.mark_dead(worker, f"process {pid} exited")

    # ------------------------------------------------------------------ reading

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(MAX_PER_WAKE):
            try:
                # Asking first is cheaper than the zmq.Again exception a read of an empty socket raises.
                if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    return
                frames = sock.recv_multipart(flags=_NOBLOCK, copy=False)
            except zmq.ZMQError:
                return  # closing (or, rarely, nothing after all)
            try:
                self._handle(frames)
            except Exception:  # one bad message must never stop the reader
                log.exception("worker pool: failed to handle a message")
        self._schedule_drain()  # more are waiting: let the loop run the requests first

    def _handle(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            self.dropped_frames += 1
            return
        identity = frames[0].bytes
        try:
            message, binary = self._decoder.decode([frame.buffer for frame in frames[1:]])
        except MalformedFrame as exc:
            self.dropped_frames += 1
            log.warning("dropped a malformed frame from %r (%d so far): %s", identity[:64], self.dropped_frames,
                        str(exc)[:200])
            return
        worker = self.scheduler.workers.get(identity)
        if isinstance(message, Chunk | Final | Error | MediaChunk):
            if worker is not None and worker.alive:
                worker.last_seen = time.monotonic()
                lease = self.leases.get(message.request_id)
                if lease is not None and lease.worker is worker:
                    lease.deliver(Reply(message, binary))
                return
        elif isinstance(message, Ready):
            self._register(identity, message, frames[1])
            return
        elif isinstance(message, Goodbye):
            if worker is not None and worker.alive:
                self.mark_dead(worker, "it stopped")
            return
        elif isinstance(message, Loading):  # not a worker yet: downloading or loading its model
            self.loading[identity] = (message, time.monotonic())
            return
        if worker is None or not worker.alive:
            # A worker we do not know (we restarted, or declared it dead): ask it to announce itself.
            self._probe(identity)
            return
        now = time.monotonic()
        worker.last_seen = now
        if isinstance(message, Heartbeat):
            worker.reported_active = message.active
            worker.reported_queued = message.queued
            sent = self._beats.get(message.echo) if message.echo else None
            if sent is not None:
                worker.rtt_ms = round((now - sent) * 1000, 3)

    def _register(self, identity: bytes, ready: Ready, header: zmq.Frame) -> None:
        if ready.protocol_version != PROTOCOL_VERSION:
            self.dropped_frames += 1
            log.warning("worker %s speaks protocol %d, not %d: ignored", ready.worker_id, ready.protocol_version,
                        PROTOCOL_VERSION)
            return
        self.loading.pop(identity, None)
        known = self.scheduler.workers.get(identity)
        if known is not None and known.alive:
            known.ready = ready  # re-announce (answer to a Probe): keep its requests
            known.last_seen = time.monotonic()
            self.scheduler.dispatch()
            return
        # Over ipc:// libzmq reports a placeholder address: only a tcp:// peer has one worth showing.
        address = _frame_property(header, "Peer-Address") if self.endpoint.startswith("tcp://") else ""
        user = _frame_property(header, "User-Id")
        worker = WorkerState(identity=identity, ready=ready, last_seen=time.monotonic(), address=address,
                             key_id=key_id(user.encode()) if user and user != "anonymous" else "")
        log.info("worker %s joined: %s/%s (pid %d, %d slot(s)%s%s)", ready.worker_id, ready.provider, ready.model,
                 ready.pid, worker.slots, f", from {address}" if address else "",
                 f", key {worker.key_id}" if worker.key_id else "")
        self.scheduler.add(worker)
        if len(self.fronts) > 1:  # the worker joins every front, whichever it was pointed at
            try:
                self._send([identity, *encode(Fronts(endpoints=self.fronts))])
            except (zmq.ZMQError, GatewayError):
                pass

    def _probe(self, identity: bytes) -> None:
        try:
            self._send([identity, *encode(Probe(session=self.session))])
        except (zmq.ZMQError, GatewayError):
            pass

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            now = time.monotonic()
            self._seq += 1
            self._beats[self._seq] = now
            self._beats.pop(self._seq - 8, None)  # answers older than 8 beats are too late to count
            beat = encode(Heartbeat(sender=self.session, seq=self._seq))
            for worker in self.live_workers():
                if now - worker.last_seen > HEARTBEAT_TIMEOUT_S:
                    self.mark_dead(worker, f"no message for {now - worker.last_seen:.1f} s")
                    continue
                try:
                    self._send([worker.identity, *beat])
                except (zmq.ZMQError, GatewayError):
                    pass
            self.scheduler.prune()
            for identity, (_, seen) in list(self.loading.items()):
                if now - seen > HEARTBEAT_TIMEOUT_S:  # it failed or was stopped before its Ready
                    del self.loading[identity]

    async def _watchdog(self) -> None:
        """Idle limits of waiting requests, checked here rather than with a timer per token."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_S)
            now = loop.time()
            for lease in list(self.leases.values()):
                lease.expire(now)

    def describe(self) -> dict[str, Any]:
        """What /providers shows of the socket itself."""
        info: dict[str, Any] = {"endpoint": self.endpoint, "dropped_frames": self.dropped_frames}
        if self.auth is not None:
            info.update(self.auth.describe())
        return info


def _frame_property(frame: zmq.Frame, name: str) -> str:
    try:
        return str(frame.get(name))
    except (zmq.ZMQError, UnicodeDecodeError):
        return ""  # ipc:// peers have no address; connections without ZAP have no User-Id
