"""Client disconnects and graceful shutdown, with real processes.

The fake upstream's GET /_stats counts streaming responses it started, finished and saw
aborted (the gateway closed the upstream connection), which proves cancellation end to end.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import http
from tests.procs import Proc, start_fake_openai, start_gateway


def stats(fake: Proc) -> dict[str, int]:
    return dict(http.get_json(fake.url + "/_stats", timeout=10))


def port_of(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def open_stream(proc: Proc, model: str = "openai/stall-mid") -> socket.socket:
    """Start a streaming request and return the socket once the first SSE event arrived
    (what arrived so far is kept in RECEIVED under the socket's fd)."""
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "a b c"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", port_of(proc)), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    received = b""
    while b"data: " not in received:
        piece = sock.recv(65536)
        assert piece, received
        received += piece
    RECEIVED[sock.fileno()] = received
    return sock


RECEIVED: dict[int, bytes] = {}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def upstream_connections(gateway: Proc, fake: Proc) -> int:
    """The gateway's TCP connections to the fake upstream (pooled keep-alives included)."""
    conns = psutil.Process(gateway.process.pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port_of(fake) and c.status == psutil.CONN_ESTABLISHED)


@pytest.fixture
def own_pair(tmp_path: Path) -> Any:
    """A private fake upstream and gateway, so counts are not shared with other tests."""
    fake = start_fake_openai(tmp_path)
    gateway = start_gateway(tmp_path, {"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-test-123456789"})
    yield gateway, fake
    gateway.stop()
    fake.stop()


def test_client_disconnect_cancels_upstream(own_pair: tuple[Proc, Proc]) -> None:
    gateway, fake = own_pair
    process = psutil.Process(gateway.process.pid)
    # warm up (imports, pooled session) before taking the baseline
    open_stream(gateway, "openai/echo").close()
    wait_for(lambda: stats(fake)["open"] == 0, 5, "the warm-up stream to end")
    baseline_fds = process.num_fds()

    rounds = 20
    for index in range(rounds):
        sock = open_stream(gateway)
        assert stats(fake)["open"] == 1
        sock.close()
        # the upstream sees its connection closed promptly (the B5 row asks for < 1 s; allow slack
        # for a loaded machine)
        wait_for(lambda: stats(fake)["open"] == 0, 5, "the upstream stream to be aborted")
        assert stats(fake)["aborted"] == index + 1
    wait_for(lambda: upstream_connections(gateway, fake) <= 1, 5, "aborted upstream connections to close")
    # no connection or socket left behind: fds back to the baseline (+ a pooled keep-alive)
    wait_for(lambda: process.num_fds() <= baseline_fds + 1, 5, "fds to return to the baseline")
    # and the gateway still serves streams to the end
    finished = stats(fake)["finished"]
    sock = open_stream(gateway, "openai/echo")
    received = RECEIVED.pop(sock.fileno())
    while not received.endswith(b"0\r\n\r\n"):  # the chunked body's terminator
        piece = sock.recv(65536)
        assert piece, received
        received += piece
    sock.close()
    assert b"data: [DONE]" in received and b'"error"' not in received
    assert stats(fake)["finished"] == finished + 1


def test_sigint_ends_open_streams_and_exits(own_pair: tuple[Proc, Proc]) -> None:
    gateway, fake = own_pair
    streams = [open_stream(gateway) for _ in range(3)]
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGINT)
    tails = []
    for sock in streams:
        sock.settimeout(10)
        tail = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            tail += piece
        tails.append(tail)
        sock.close()
    code = gateway.process.wait(10)
    elapsed = time.monotonic() - started
    assert code == 0, gateway.log()[-2000:]
    assert elapsed < 8, f"shutdown took {elapsed:.1f}s"
    for tail in tails:
        # each open stream is told why it ends, then closed
        assert b"shutting down" in tail and b"data: [DONE]" in tail, tail
    wait_for(lambda: stats(fake)["open"] == 0, 3, "upstream streams to be closed")
    assert "Traceback" not in gateway.log()
