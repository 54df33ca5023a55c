"""Tell the gateways what a worker is doing before its Ready: downloading or loading its model.

The worker loop (workers/loop.py) starts only once the model is loaded; until then this beacon holds
its own DEALER sockets (same identity, so the gateway later sees the Ready on the same connection)
and, once the worker has been busy for a second (a model that loads at once goes straight to its
Ready), sends a ``Loading`` message on each: at once when the state changes, otherwise once a
heartbeat interval, so a gateway forgets a worker that died while downloading. ZeroMQ sockets are
not thread-safe: only the beacon's thread touches them; ``update`` just swaps the message.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import zmq

from protocol.codec import encode
from protocol.curve import CurveKeys
from protocol.local import HEARTBEAT_INTERVAL_S
from protocol.messages import Loading
from workers.sockets import connect_dealer

# Progress goes out no more often than this (a fast download reports many times a second).
MIN_INTERVAL_S = 0.25
# Nothing is announced before this: a model that loads at once goes straight to its Ready.
FIRST_AFTER_S = 1.0


class LoadingBeacon:
    def __init__(self, endpoints: list[str], worker_id: str, provider: str, model: str,
                 curve: CurveKeys | None = None) -> None:
        self._endpoints = endpoints
        self._curve = curve
        self._worker_id = worker_id
        self._base = Loading(worker_id=worker_id, provider=provider, model=model, state="loading",
                             pid=os.getpid(), host=socket.gethostname())
        self._message = self._base
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, state: str, *, source: str = "", done_bytes: int = 0, total_bytes: int = 0,
               rate_bytes_per_s: float = 0.0) -> None:
        """The current state; sent within MIN_INTERVAL_S (callable from any thread)."""
        base = self._base
        self._message = Loading(worker_id=base.worker_id, provider=base.provider, model=base.model, state=state,
                                source=source, done_bytes=done_bytes, total_bytes=total_bytes,
                                rate_bytes_per_s=rate_bytes_per_s, pid=base.pid, host=base.host)
        self._changed.set()

    def start(self) -> LoadingBeacon:
        self._thread = threading.Thread(target=self._run, name="loading-beacon", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> LoadingBeacon:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        if self._stop.wait(FIRST_AFTER_S):
            return
        sockets = [connect_dealer(ctx, endpoint, self._worker_id, self._curve) for endpoint in self._endpoints]
        try:
            while not self._stop.is_set():
                self._changed.clear()
                frames = encode(self._message)
                for sock in sockets:
                    try:
                        # the gateway may not be up yet: never block a download on it
                        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        pass
                self._stop.wait(MIN_INTERVAL_S)
                self._changed.wait(HEARTBEAT_INTERVAL_S - MIN_INTERVAL_S)
        finally:
            for sock in sockets:
                sock.close(linger=200)  # the last Loading may still be on its way; the Ready follows anyway
