"""The worker's sockets to its gateways: how each DEALER is set up, and what its handshakes say.

Over tcp:// a DEALER redials a gateway that went away with backoff (0.1 s doubling to 5 s),
keeps the link alive with libzmq's heartbeats, and with keys is a CURVE client of the gateway's
public key. A handshake the gateway refuses (wrong gateway key, a key it has not authorised,
no keys at all) is logged once per change of state, with what to check; libzmq then either
gives up on the endpoint or hammers it every 100 ms, so the worker disconnects and dials again
itself, 1 s doubling to 10 s apart (a key authorised meanwhile lets it in on the next try).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

import zmq

from protocol.codec import MAX_MESSAGE_BYTES
from protocol.curve import CurveKeys

log = logging.getLogger("acore.worker")

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
ZMQ_HEARTBEAT_IVL_MS = 1000
ZMQ_HEARTBEAT_TIMEOUT_MS = 5000
REDIAL_START_S = 1.0
REDIAL_MAX_S = 10.0
_WATCHED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED)


def connect_dealer(ctx: zmq.Context[Any], endpoint: str, identity: str, curve: CurveKeys | None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode()[:255])
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("tcp://"):
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        if curve is not None:
            sock.curve_serverkey = curve.gateway
            sock.curve_publickey = curve.own.public
            sock.curve_secretkey = curve.own.secret
    sock.connect(endpoint)
    return sock


class HandshakeWatch:
    """Reads one tcp:// DEALER's monitor events in the IO thread's poll loop."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        self.endpoint = endpoint
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(_WATCHED)
        self._sock = sock
        self._state = ""
        self._redial_at: float | None = None
        self._backoff = REDIAL_START_S

    def tick(self, now: float) -> None:
        """Dial again once the backoff after a refused handshake has passed."""
        if self._redial_at is not None and now >= self._redial_at:
            self._redial_at = None
            try:
                self._sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                log.warning("cannot dial %s again: %s", self.endpoint, exc)

    def drain(self) -> None:
        while True:
            try:
                frames = self.monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=hi", frames[0])
            self._note(event, value)

    def _refused(self) -> None:
        if self._redial_at is not None:
            return
        try:
            self._sock.disconnect(self.endpoint)
        except zmq.ZMQError:
            pass
        self._redial_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, REDIAL_MAX_S)

    def _note(self, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._backoff = REDIAL_START_S
            state, message = "up", "connected to the gateway at %s"
        elif event == zmq.EVENT_DISCONNECTED:
            state, message = "down", "lost the gateway at %s: redialling"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            state, message = "refused", ("the gateway at %s refused this worker's key: put its public .key file into "
                                         "the gateway's authorized/ directory")
        else:
            state, message = "failed", ("the handshake with the gateway at %s failed: check --gateway-key (it must be "
                                        "that gateway's gateway.key) and that the gateway uses --worker-keys")
        if state in ("refused", "failed"):
            self._refused()
        if state != self._state:
            (log.info if state in ("up", "down") else log.warning)(message, self.endpoint)
            self._state = state

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
