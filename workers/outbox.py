"""Streamed output on its way out of a worker: tokens coalesced into Chunk frames, at most one per interval.

The model thread ``add``s each token's Delta; the IO thread sends what has gathered. Tokens
produced while a frame waits ride in it. A request may ask for a stream interval (Generate's
``stream_interval_ms``): after its first frame (sent at once: time to first token), the next
goes no sooner than the interval after the previous one. Every frame wakes the gateway (and its
ZeroMQ thread) once, which on a small VM costs ~100 µs of CPU: sending one frame per interval
instead of one per token is what keeps the gateway's cost per token low. A request's Final is
sent after whatever of its output still waits (``take`` before it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from protocol.messages import Chunk
from workers.backend import Delta


@dataclass(slots=True)
class _Stream:
    sock: int
    interval_s: float
    delta: Delta | None = None  # output gathered since the last frame
    last_sent: float = 0.0
    due: float = 0.0  # when the gathered output may go (0: a flush is not scheduled)
    signalled: bool = False  # the IO thread was told that output is waiting
    n_frames: int = field(default=0)


class Outbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}

    # ------------------------------------------------------------------ model thread

    def open(self, request_id: str, sock: int, interval_s: float) -> None:
        with self._lock:
            self._streams[request_id] = _Stream(sock, max(0.0, interval_s))

    def add(self, request_id: str, delta: Delta) -> bool:
        """Gather a token's output; True when the IO thread must be told (nothing was waiting)."""
        with self._lock:
            stream = self._streams.get(request_id)
            if stream is None:
                return False
            pending = stream.delta
            if pending is None:
                stream.delta = Delta(delta.text, delta.reasoning, delta.n_tokens, list(delta.tool_calls),
                                     delta.prompt_tokens, delta.cached_tokens)
            else:
                pending.text += delta.text
                pending.reasoning += delta.reasoning
                pending.n_tokens += delta.n_tokens
                pending.tool_calls.extend(delta.tool_calls)
                if delta.prompt_tokens:
                    pending.prompt_tokens, pending.cached_tokens = delta.prompt_tokens, delta.cached_tokens
            if stream.signalled:
                return False
            stream.signalled = True
            return True

    def close(self, request_id: str) -> None:
        """Forget a request (its output, if any, is dropped: an Error ends it)."""
        with self._lock:
            self._streams.pop(request_id, None)

    # ------------------------------------------------------------------ IO thread

    def ready(self, request_id: str, now: float) -> tuple[int, Chunk] | None:
        """The frame to send now for a signalled request, or None (deferred to its interval, or nothing)."""
        with self._lock:
            stream = self._streams.get(request_id)
            if stream is None or stream.delta is None:
                return None
            due = stream.last_sent + stream.interval_s if stream.n_frames else 0.0
            if due > now:
                stream.due = due
                return None
            return self._frame(request_id, stream, now)

    def due(self, now: float) -> list[tuple[int, Chunk]]:
        """Frames whose interval has passed."""
        with self._lock:
            return [self._frame(request_id, stream, now) for request_id, stream in list(self._streams.items())
                    if stream.due and stream.due <= now and stream.delta is not None]

    def next_due(self) -> float | None:
        with self._lock:
            dues = [s.due for s in self._streams.values() if s.due and s.delta is not None]
        return min(dues) if dues else None

    def take(self, request_id: str) -> tuple[int, Chunk] | None:
        """What still waits for a request about to end, and the request forgotten."""
        with self._lock:
            stream = self._streams.pop(request_id, None)
            if stream is None or stream.delta is None:
                return None
            return self._frame(request_id, stream, time.monotonic())

    @staticmethod
    def _frame(request_id: str, stream: _Stream, now: float) -> tuple[int, Chunk]:
        delta = stream.delta
        assert delta is not None
        stream.delta = None
        stream.signalled = False
        stream.due = 0.0
        stream.last_sent = now
        stream.n_frames += 1
        return stream.sock, Chunk(request_id=request_id, text=delta.text, reasoning=delta.reasoning,
                                  n_tokens=delta.n_tokens, tool_calls=delta.tool_calls,
                                  prompt_tokens=delta.prompt_tokens, cached_tokens=delta.cached_tokens)
