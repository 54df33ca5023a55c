"""The worker loop: sockets on one thread, the model on another.

The IO thread (the main thread, so signals reach it) owns every ZeroMQ socket:
one DEALER per gateway endpoint plus the receiving end of an inproc pipe that
the model thread writes to. ZeroMQ sockets are not thread-safe, so the model
thread never touches a DEALER: it hands frames to the IO thread over the pipe.
Heartbeats and aborts therefore keep flowing while a generation runs.

Streamed output is coalesced: ``emit`` appends to a per-request buffer and
only schedules a flush when none is pending, so tokens produced while the IO
thread is still busy sending the previous frame ride in the next one.

Batching: Embed requests arriving within a short window go to the backend together. A backend
that can decode several chats at once (``BackendInfo.max_batch`` > 1) gets, with a Generate,
the Generate requests already waiting behind it (never a wait for more); each keeps its own
stream, abort and reply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import zmq

from protocol.codec import MalformedFrame, encode, vectors_to_frame, worker_side_decoder
from protocol.curve import CurveKeys
from protocol.endpoints import dialable
from protocol.local import HEARTBEAT_INTERVAL_S, HEARTBEAT_TIMEOUT_S
from protocol.messages import (
    Abort,
    AnyMessage,
    CacheOp,
    Embed,
    Error,
    ErrorCode,
    Final,
    FinishReason,
    Fronts,
    Generate,
    Goodbye,
    Heartbeat,
    Probe,
    Ready,
    Tokenize,
    Unload,
    Usage,
)
from workers.backend import Backend, Delta, GenerationJob, GenerationResult, WorkerError
from workers.media_serving import MEDIA_REQUESTS, serve_media
from workers.outbox import Outbox
from workers.sockets import HandshakeWatch, connect_dealer

log = logging.getLogger("acore.worker")

POLL_MS = 100

# Pipe frame kinds (model thread -> IO thread).
_SEND = b"S"  # [kind, socket index, request id, *frames]: send the request's waiting output, then these frames
_FLUSH = b"F"  # [kind, request id]: output waits for this request (sent now, or when its interval has passed)

# How long closing a socket may wait to deliver the Goodbye to a gateway that is still there.
GOODBYE_LINGER_MS = 1000
# The sliding batch window never stays open longer than this many batch waits in total.
MAX_BATCH_WINDOW_FACTOR = 5


@dataclass(slots=True)
class _Work:
    sock: int
    message: AnyMessage
    frames: list[Any] = field(default_factory=list)  # raw frames after the header (uploaded media)


class WorkerLoop:
    def __init__(
        self,
        backend: Backend,
        endpoints: list[str],
        worker_id: str,
        *,
        max_batch: int = 64,
        batch_wait_ms: float = 3.0,
        parent_pid: int | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.backend = backend
        self.curve = curve
        self.endpoints = endpoints
        self.worker_id = worker_id
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = max(0.0, batch_wait_ms) / 1000.0
        self.parent_pid = parent_pid
        self.dropped_frames = 0
        self._stop = threading.Event()
        self._work: queue.Queue[_Work | None] = queue.Queue()
        self._held: deque[_Work] = deque()  # items taken while batching embeds, served next in order
        self._lock = threading.Lock()
        self._aborted: set[str] = set()
        self._known: dict[str, int] = {}  # request id -> socket index, for queued and running requests
        self._outbox = Outbox()
        self._dialled: list[str] = []  # endpoint of each socket, by index
        self._to_dial: list[str] = []  # advertised by a gateway (Fronts), not dialled yet
        self._active = 0  # requests the model thread is serving now (a batch counts each)
        self._chat_batch = max(1, backend.info().max_batch)  # most Generates decoded together
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._pipe_addr = f"inproc://acore-worker-pipe-{id(self)}"
        self._decoder = worker_side_decoder()

    # ------------------------------------------------------------------ thread-safe helpers

    def aborted(self, request_id: str) -> bool:
        return self._stop.is_set() or request_id in self._aborted

    def stop(self) -> None:
        self._stop.set()

    def ready_message(self) -> Ready:
        info = self.backend.info()
        return Ready(
            worker_id=self.worker_id,
            provider=self.backend.provider,
            model=self.backend.name,
            aliases=list(info.aliases),
            capabilities=info.capabilities,
            context_length=info.context_length,
            max_concurrency=info.max_concurrency,
            embedding_dimensions=info.embedding_dimensions,
            pid=os.getpid(),
            host=socket.gethostname(),
        )

    # ------------------------------------------------------------------ IO thread

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, the parent's death, or stop(); returns the exit status."""
        pipe_in = self._ctx.socket(zmq.PULL)
        pipe_in.bind(self._pipe_addr)
        sockets: list[zmq.Socket[bytes]] = []
        watches: list[HandshakeWatch] = []
        last_seen: list[float] = []
        self._sockets = sockets
        poller = zmq.Poller()
        poller.register(pipe_in, zmq.POLLIN)

        def dial(endpoint: str) -> None:
            sock = connect_dealer(self._ctx, endpoint, self.worker_id, self.curve)
            sockets.append(sock)
            self._dialled.append(endpoint)
            last_seen.append(time.monotonic())
            poller.register(sock, zmq.POLLIN)
            if endpoint.startswith("tcp://"):
                watch = HandshakeWatch(sock, endpoint)
                watches.append(watch)
                poller.register(watch.monitor, zmq.POLLIN)
            self._send(sock, encode(self.ready_message()))

        for endpoint in self.endpoints:
            dial(endpoint)
        model_thread = threading.Thread(target=self._model_thread, name="model", daemon=True)
        model_thread.start()
        next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
        try:
            while not self._stop.is_set():
                while self._to_dial:  # other fronts of a gateway we reached (Fronts)
                    endpoint = self._to_dial.pop(0)
                    log.info("joining another front of the gateway at %s", endpoint)
                    dial(endpoint)
                due = self._outbox.next_due()
                wait_ms = POLL_MS if due is None else max(0, min(POLL_MS, int((due - time.monotonic()) * 1000) + 1))
                events = dict(poller.poll(wait_ms))
                if pipe_in in events:
                    self._drain_pipe(pipe_in)
                if due is not None:
                    for index, chunk in self._outbox.due(time.monotonic()):
                        self._send(self._sockets[index], encode(chunk))
                for index, sock in enumerate(sockets):
                    if sock in events:
                        last_seen[index] = time.monotonic()
                        self._drain_socket(index, sock)
                now = time.monotonic()
                for watch in watches:
                    if watch.monitor in events:
                        watch.drain()
                    watch.tick(now)
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_INTERVAL_S
                    beat = encode(Heartbeat(sender=self.worker_id, active=self._active, queued=self._queued()))
                    for index, sock in enumerate(sockets):
                        self._send(sock, beat)
                        if now - last_seen[index] > HEARTBEAT_TIMEOUT_S:
                            self._abort_socket(index)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("the supervising gateway (pid %d) is gone: stopping", self.parent_pid)
                    break
        finally:
            self._stop.set()
            self._work.put(None)
            model_thread.join(timeout=5.0)
            for watch in watches:
                watch.close()
            goodbye = encode(Goodbye(sender=self.worker_id))
            for sock in sockets:
                self._send(sock, goodbye)
                sock.close(linger=GOODBYE_LINGER_MS)  # long enough for the goodbye, never a hang
            pipe_in.close(linger=0)
            self._deliver_pending()
        return 0

    def _deliver_pending(self) -> None:
        """Let ZeroMQ's IO thread send what is still queued (the Goodbyes) before the process exits.

        close() only marks a socket for closing; the queued frames go out in the background until
        the context terminates, and acore-worker ends with os._exit, which would drop them. term()
        waits for that (bounded by each socket's linger), in a thread so that a model thread that
        never stopped (and so never closed its pipe socket) cannot hang the exit."""
        waiter = threading.Thread(target=self._ctx.term, name="zmq-term", daemon=True)
        waiter.start()
        waiter.join(GOODBYE_LINGER_MS / 1000 + 0.5)

    def _queued(self) -> int:
        return self._work.qsize() + len(self._held)

    def _send(self, sock: zmq.Socket[bytes], frames: list[Any]) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # The gateway is gone or not reading: never block the IO thread (heartbeats, aborts) on it.
            pass

    def _drain_pipe(self, pipe_in: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frames = pipe_in.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            kind = frames[0].bytes
            if kind == _SEND:
                request_id = frames[2].bytes.decode()
                waiting = self._outbox.take(request_id) if request_id else None
                if waiting is not None:  # a request's last tokens go out before its Final
                    self._send(self._sockets[waiting[0]], encode(waiting[1]))
                self._send(self._sockets[int(frames[1].bytes)], frames[3:])
            elif kind == _FLUSH:
                ready = self._outbox.ready(frames[1].bytes.decode(), time.monotonic())
                if ready is not None:
                    self._send(self._sockets[ready[0]], encode(ready[1]))

    def _drain_socket(self, index: int, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message, binary = self._decoder.decode(frames)
            except MalformedFrame as exc:
                self.dropped_frames += 1
                log.warning("dropped a malformed frame (%d so far): %s", self.dropped_frames, str(exc)[:200])
                continue
            self._handle(index, sock, message, binary)

    def _handle(self, index: int, sock: zmq.Socket[bytes], message: AnyMessage, binary: list[Any] | None = None) -> None:
        if isinstance(message, Heartbeat):
            # last-seen is already updated; a numbered beat is answered at once (the gateway's round-trip time)
            if message.seq:
                self._send(sock, encode(Heartbeat(sender=self.worker_id, active=self._active, queued=self._queued(),
                                                  echo=message.seq)))
            return
        if isinstance(message, Probe):
            self._send(sock, encode(self.ready_message()))
            return
        if isinstance(message, Fronts):
            dialled = self._dialled[index]
            for endpoint in message.endpoints:
                target = dialable(endpoint, dialled)
                if target not in self._dialled and target not in self._to_dial:
                    self._to_dial.append(target)
            return
        if isinstance(message, Abort):
            # Set at once, from this thread: the model thread polls it between tokens.
            with self._lock:
                if message.request_id in self._known:
                    self._aborted.add(message.request_id)
            return
        if isinstance(message, Generate | Embed | CacheOp | Unload | Tokenize) or isinstance(message, MEDIA_REQUESTS):
            if message.request_id:
                with self._lock:
                    self._known[message.request_id] = index
            self._work.put(_Work(index, message, binary or []))
            return
        self.dropped_frames += 1  # a well-formed message of the wrong direction

    def _abort_socket(self, index: int) -> None:
        """The gateway behind this socket went silent: nobody will read its requests' output."""
        with self._lock:
            for request_id, sock in self._known.items():
                if sock == index:
                    self._aborted.add(request_id)

    # ------------------------------------------------------------------ model thread

    def _model_thread(self) -> None:
        pipe_out = self._ctx.socket(zmq.PUSH)
        pipe_out.connect(self._pipe_addr)
        self._pipe_out = pipe_out
        try:
            while not self._stop.is_set():
                item = self._next(timeout=0.2)
                if item is None:
                    continue
                self._active = 1
                try:
                    self._serve(item)
                finally:
                    self._active = 0
        finally:
            pipe_out.close(linger=1000)

    def _next(self, timeout: float) -> _Work | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._work.get(timeout=timeout)
        except queue.Empty:
            return None

    def _reply(self, sock: int, message: AnyMessage, *binary: Any) -> None:
        request_id = getattr(message, "request_id", "")
        self._pipe_out.send_multipart([_SEND, str(sock).encode(), request_id.encode(), *encode(message, *binary)],
                                      copy=False)

    def _finish(self, request_id: str) -> None:
        with self._lock:
            self._known.pop(request_id, None)
            self._aborted.discard(request_id)

    def _ensure_loaded(self) -> None:
        if not self.backend.loaded:
            started = time.monotonic()
            log.info("reloading %s ...", self.backend.model)
            self.backend.load()
            log.info("reloaded %s in %.2f s", self.backend.name, time.monotonic() - started)

    def _serve(self, item: _Work) -> None:
        message = item.message
        if isinstance(message, Embed):
            self._serve_embeds(self._collect_embeds(item))
            return
        if isinstance(message, Generate) and self._chat_batch > 1:
            batch = self._collect_generates(item)
            if len(batch) > 1:
                self._serve_generates(batch)
                return
        request_id = getattr(message, "request_id", "")
        try:
            if isinstance(message, Unload):
                if self.backend.loaded:
                    self.backend.unload()
                    log.info("unloaded %s", self.backend.name)
                if request_id:
                    self._reply(item.sock, Final(request_id=request_id))
                return
            if self.aborted(request_id):
                self._reply(item.sock, Final(request_id=request_id, finish_reason=FinishReason.ABORTED))
                return
            self._ensure_loaded()
            if isinstance(message, Generate):
                self._generate(item.sock, message)
            elif isinstance(message, CacheOp):
                result = self.backend.cache_op(message)
                self._reply(item.sock, Final(request_id=request_id, result=result))
            elif isinstance(message, Tokenize):
                count = self.backend.count_tokens(message)
                self._reply(item.sock, Final(request_id=request_id, usage=Usage(prompt_tokens=count)))
            elif isinstance(message, MEDIA_REQUESTS):
                serve_media(self.backend, message, item.frames, partial(self._reply, item.sock),
                            partial(self.aborted, request_id))
        except Exception as exc:
            if not isinstance(exc, WorkerError):
                traceback.print_exc(file=sys.stderr)
            self._flush_marker(request_id)
            self._reply(item.sock, _error(request_id, exc))
        finally:
            self._finish(request_id)

    def _flush_marker(self, request_id: str) -> None:
        """Drop buffered output of a failed request (its Error ends the stream)."""
        self._outbox.close(request_id)

    def _generate(self, sock: int, request: Generate) -> None:
        job = self._open_stream(sock, request)
        job.reply(self.backend.generate(request, job.emit, job.cancelled))

    def _open_stream(self, sock: int, request: Generate, unanswered: set[str] | None = None) -> GenerationJob:
        """The request's outbox stream and the callbacks its generation streams through, polls and
        ends with. In a batch, ``unanswered`` holds the ids not answered yet: each is answered once."""
        request_id = request.request_id
        pipe_out = self._pipe_out
        flush_msg = [_FLUSH, request_id.encode()]
        outbox = self._outbox
        outbox.open(request_id, sock, request.stream_interval_ms / 1000)

        def emit(delta: Delta) -> None:
            if outbox.add(request_id, delta):
                pipe_out.send_multipart(flush_msg)  # output waits: the IO thread sends it when it may

        def cancelled() -> bool:
            return self.aborted(request_id)

        def reply(outcome: GenerationResult | Exception) -> None:
            if unanswered is not None:
                if request_id not in unanswered:
                    return
                unanswered.discard(request_id)
                self._active = len(unanswered)
            if isinstance(outcome, Exception):
                self._flush_marker(request_id)
                self._reply(sock, _error(request_id, outcome))
                return
            finish = FinishReason.ABORTED if cancelled() else outcome.finish_reason
            # The IO thread sends what still waits for this request before this Final.
            self._reply(sock, Final(request_id=request_id, finish_reason=finish, usage=outcome.usage,
                                    stop_sequence=outcome.stop_sequence))

        return GenerationJob(request, emit, cancelled, reply)

    def _collect_generates(self, first: _Work) -> list[_Work]:
        """The first Generate plus the Generates already waiting right behind it (in arrival order, up
        to the backend's max_batch). Nothing waits for more: a lone request starts at once."""
        batch = [first]
        while len(batch) < self._chat_batch:
            if self._held:
                item: _Work | None = self._held.popleft()
            else:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                self._work.put(None)
                break
            if not isinstance(item.message, Generate):
                self._held.appendleft(item)  # keep arrival order: it runs right after this batch
                break
            batch.append(item)
        return batch

    def _serve_generates(self, batch: list[_Work]) -> None:
        """Several Generates decoded together: each still gets its own stream and its own Final or Error,
        sent as soon as that request ends."""
        jobs: list[GenerationJob] = []
        unanswered: set[str] = set()
        for item in batch:
            request: Generate = item.message  # type: ignore[assignment]
            if self.aborted(request.request_id):
                self._reply(item.sock, Final(request_id=request.request_id, finish_reason=FinishReason.ABORTED))
                self._finish(request.request_id)
            else:
                unanswered.add(request.request_id)
                jobs.append(self._open_stream(item.sock, request, unanswered))
        if not jobs:
            return
        self._active = len(jobs)
        log.info("generating %d requests in one batch: %s", len(jobs), ", ".join(j.request.request_id for j in jobs))
        failure: Exception = RuntimeError("the backend ended the batch without answering this request")
        try:
            self._ensure_loaded()
            self.backend.generate_batch(jobs)
        except Exception as exc:
            if not isinstance(exc, WorkerError):
                traceback.print_exc(file=sys.stderr)
            failure = exc
        finally:
            for job in jobs:
                job.reply(failure)  # only a request not answered yet gets it
                self._finish(job.request.request_id)

    def _collect_embeds(self, first: _Work) -> list[_Work]:
        """The first Embed plus those already queued or arriving within batch_wait of the previous one,
        up to max_batch inputs. The window slides while requests keep arriving (a burst of concurrent
        clients lands over several ms), capped at MAX_BATCH_WINDOW_FACTOR x batch_wait in total."""
        batch = [first]
        total = len(first.message.texts)  # type: ignore[union-attr]
        started = time.monotonic()
        hard_deadline = started + self.batch_wait_s * MAX_BATCH_WINDOW_FACTOR
        deadline = started + self.batch_wait_s
        while total < self.max_batch:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._work.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                self._work.put(None)
                break
            message = item.message
            if not isinstance(message, Embed) or total + len(message.texts) > self.max_batch:
                self._held.append(item)  # keep arrival order: it runs right after this batch
                break
            batch.append(item)
            total += len(message.texts)
            deadline = min(hard_deadline, time.monotonic() + self.batch_wait_s)
        return batch

    def _serve_embeds(self, batch: list[_Work]) -> None:
        live = []
        for item in batch:
            request_id = item.message.request_id  # type: ignore[union-attr]
            if self.aborted(request_id):
                self._reply(item.sock, Final(request_id=request_id, finish_reason=FinishReason.ABORTED))
                self._finish(request_id)
            else:
                live.append(item)
        if not live:
            return
        try:
            self._ensure_loaded()
            outcomes = self.backend.embed([item.message for item in live])  # type: ignore[misc]
            if len(outcomes) != len(live):
                raise RuntimeError(f"backend returned {len(outcomes)} results for {len(live)} requests")
            for item, outcome in zip(live, outcomes, strict=True):
                request_id = item.message.request_id  # type: ignore[union-attr]
                if outcome.error is not None:
                    err = outcome.error
                    self._reply(item.sock, Error(request_id=request_id, code=err.code, message=err.message,
                                                 param=err.param))
                elif outcome.vectors is None:
                    self._reply(item.sock, Error(request_id=request_id, code=ErrorCode.INTERNAL,
                                                 message="backend returned no vectors"))
                else:
                    count, dims = outcome.vectors.shape
                    final = Final(request_id=request_id, count=int(count), dims=int(dims),
                                  token_counts=list(outcome.token_counts),
                                  usage=_embed_usage(outcome.token_counts))
                    self._reply(item.sock, final, vectors_to_frame(outcome.vectors))
        except WorkerError as exc:
            for item in live:
                self._reply(item.sock, Error(request_id=item.message.request_id,  # type: ignore[union-attr]
                                             code=exc.code, message=exc.message, param=exc.param))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            for item in live:
                self._reply(item.sock, Error(request_id=item.message.request_id,  # type: ignore[union-attr]
                                             code=ErrorCode.INTERNAL,
                                             message=f"worker error: {type(exc).__name__}: {exc}"[:2000]))
        finally:
            for item in live:
                self._finish(item.message.request_id)  # type: ignore[union-attr]


def _error(request_id: str, exc: Exception) -> Error:
    """The Error reply of a failed request: a WorkerError's own code, anything else internal."""
    if isinstance(exc, WorkerError):
        return Error(request_id=request_id, code=exc.code, message=exc.message, param=exc.param)
    return Error(request_id=request_id, code=ErrorCode.INTERNAL,
                 message=f"worker error: {type(exc).__name__}: {exc}"[:2000])


def _embed_usage(token_counts: list[int]) -> Usage:
    return Usage(prompt_tokens=sum(token_counts))


def install_signal_handlers(loop: WorkerLoop) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        loop.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread (tests): no handlers
            signal.signal(signum, handler)
