"""A real worker process driven over its socket by a bare ROUTER standing in for the gateway.

Checks the worker side of docs/worker-protocol.md directly: Ready, Probe,
coalesced chunks, Embed batching with vector frames, CacheOp, Unload and lazy
reload, Abort, malformed frames, and dying with its supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from protocol.codec import MAX_MESSAGE_BYTES, encode, frame_to_vectors, gateway_side_decoder
from protocol.messages import (
    Abort,
    CacheOp,
    Chunk,
    Embed,
    Final,
    FinishReason,
    Generate,
    Heartbeat,
    Loading,
    Probe,
    Ready,
    SamplingParams,
    Unload,
)
from tests.procs import REPO, base_env

TEST_ENV = {"ACORE_TEST_BACKENDS": "1"}


class FakeGateway:
    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.decoder = gateway_side_decoder()
        self.identity = b""

    def recv(self, timeout: float = 10.0, skip_heartbeats: bool = True) -> tuple[Any, list[Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError("no message from the worker")
            frames = self.sock.recv_multipart()
            self.identity = frames[0]
            message, binary = self.decoder.decode(frames[1:])
            if skip_heartbeats and isinstance(message, Heartbeat | Loading):  # Loading: before its Ready
                continue
            return message, binary

    def send(self, message: Any, identity: bytes | None = None) -> None:
        self.sock.send_multipart([identity or self.identity, *encode(message)])

    def until_final(self, request_id: str, timeout: float = 10.0) -> tuple[list[Chunk], Any, list[Any]]:
        chunks = []
        while True:
            message, binary = self.recv(timeout)
            if getattr(message, "request_id", None) != request_id:
                continue
            if isinstance(message, Chunk):
                chunks.append(message)
            else:
                return chunks, message, binary

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def start_worker(endpoint: str, model: str, log_dir: Path, name: str = "w",
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with (log_dir / f"proto-{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "workers", "--provider", "echo", "--model", model, "--name", name,
             "--connect", endpoint, "--batch-wait-ms", "50"],
            cwd=REPO, env=base_env({**TEST_ENV, **(env or {})}), stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[tuple[FakeGateway, Ready]]:
    endpoint = f"ipc://{tmp_path_factory.mktemp('proto')}/w.sock"
    gateway = FakeGateway(endpoint)
    worker = start_worker(endpoint, "tokens=4", log_dir)
    try:
        ready, _ = gateway.recv(20)
        assert isinstance(ready, Ready)
        yield gateway, ready
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        gateway.close()


def test_ready_and_probe(wired: tuple[FakeGateway, Ready]) -> None:
    gateway, ready = wired
    assert ready.model == "w" and ready.capabilities.chat and ready.pid > 0
    assert gateway.identity == ready.worker_id.encode()
    gateway.send(Probe(session="s"))
    again, _ = gateway.recv()
    assert isinstance(again, Ready) and again.worker_id == ready.worker_id
    beat, _ = gateway.recv(3, skip_heartbeats=False)
    while not isinstance(beat, Heartbeat):
        beat, _ = gateway.recv(3, skip_heartbeats=False)
    assert beat.sender == ready.worker_id


def test_fast_tokens_are_coalesced(wired: tuple[FakeGateway, Ready]) -> None:
    gateway, _ = wired
    gateway.send(Generate(request_id="fast", messages=[{"role": "user", "content": "x"}],
                          params=SamplingParams(max_tokens=3000)))
    chunks, final, _ = gateway.until_final("fast", 30)
    assert isinstance(final, Final) and final.usage.completion_tokens == 3000
    text = "".join(c.text for c in chunks)
    assert text.split() == [f"tok{i}" for i in range(3000)]
    assert sum(c.n_tokens for c in chunks) == 3000
    assert len(chunks) < 3000  # several tokens per frame when they come faster than the socket


def test_embed_requests_are_batched_into_vector_frames(wired: tuple[FakeGateway, Ready]) -> None:
    gateway, _ = wired
    for index in range(3):
        gateway.send(Embed(request_id=f"e{index}", texts=["a b", "c" * (index + 1)]))
    results = {}
    for _ in range(3):
        final, binary = gateway.recv()
        assert isinstance(final, Final) and final.count == 2 and final.dims == 8
        results[final.request_id] = frame_to_vectors(binary[0], final.count, final.dims)
        assert final.token_counts == [2, 1]
    assert set(results) == {"e0", "e1", "e2"}
    assert results["e0"].dtype == np.float32 and results["e0"].shape == (2, 8)


def test_cache_op_unload_and_lazy_reload(wired: tuple[FakeGateway, Ready]) -> None:
    gateway, _ = wired
    gateway.send(CacheOp(request_id="c1", op="stats"))
    _, final, _ = gateway.until_final("c1")
    assert isinstance(final, Final) and final.result.get("supported") is False
    gateway.send(Unload(request_id="u1"))
    _, final, _ = gateway.until_final("u1")
    assert isinstance(final, Final)
    gateway.send(Generate(request_id="after", messages=[{"role": "user", "content": "x"}],
                          params=SamplingParams(max_tokens=2)))
    chunks, final, _ = gateway.until_final("after")
    assert "".join(c.text for c in chunks) == "tok0 tok1"


def test_abort_and_malformed_frames(wired: tuple[FakeGateway, Ready], tmp_path: Path) -> None:
    gateway, _ = wired
    gateway.sock.send_multipart([gateway.identity, b"\xc1garbage"])
    gateway.sock.send_multipart([gateway.identity, b"\x80\x04K\x01."])  # a pickle
    gateway.send(Generate(request_id="slow", messages=[{"role": "user", "content": "x"}],
                          params=SamplingParams(max_tokens=100000)))
    first, _ = gateway.recv()
    assert isinstance(first, Chunk)
    gateway.send(Abort(request_id="slow"))
    _, final, _ = gateway.until_final("slow")
    assert isinstance(final, Final) and final.finish_reason == FinishReason.ABORTED
    gateway.send(Abort(request_id="slow"))  # idempotent
    gateway.send(Generate(request_id="next", messages=[{"role": "user", "content": "x"}],
                          params=SamplingParams(max_tokens=1)))
    _, final, _ = gateway.until_final("next")
    assert isinstance(final, Final) and final.finish_reason == FinishReason.LENGTH


def test_requests_of_a_silent_gateway_are_aborted(tmp_path: Path, log_dir: Path) -> None:
    """A gateway that sends nothing for 5 s is presumed gone: its running request is aborted."""
    endpoint = f"ipc://{tmp_path}/silent.sock"
    gateway = FakeGateway(endpoint)
    worker = start_worker(endpoint, "delay=0.01", log_dir, name="silent")
    try:
        ready, _ = gateway.recv(20)
        assert isinstance(ready, Ready)
        started = time.monotonic()
        gateway.send(Generate(request_id="long", messages=[{"role": "user", "content": "x"}],
                              params=SamplingParams(max_tokens=100000)))
        _, final, _ = gateway.until_final("long", 15)
        assert isinstance(final, Final) and final.finish_reason == FinishReason.ABORTED
        assert 4.5 < time.monotonic() - started < 9
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        gateway.close()


def test_worker_dies_with_its_supervisor(tmp_path: Path, log_dir: Path) -> None:
    """ACORE_SUPERVISED_BY: a worker whose gateway is SIGKILLed exits instead of lingering."""
    endpoint = f"ipc://{tmp_path}/orphan.sock"
    code = (
        "import subprocess, sys, os, time\n"
        "p = subprocess.Popen(sys.argv[1:], env={**os.environ, 'ACORE_SUPERVISED_BY': str(os.getpid())})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, sys.executable, "-m", "workers", "--provider", "echo", "--model", "x",
         "--connect", endpoint], cwd=REPO, env=base_env(TEST_ENV), stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # let it load and connect
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # A zombie until reaped by init: check its state too.
            try:
                if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the worker outlived its supervisor")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
