"""The worker pool with real processes: a gateway supervising echo workers, driven with the openai SDK.

The echo backend (tests/fakes/echo_backend.py) streams "tok0 tok1 ..." with a
fixed per-token delay, so the fault tests (abort, kill -9, queue full) can
rely on timing without a real model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
import zmq

from protocol.endpoints import default_worker_endpoint
from tests import http
from tests.procs import REPO, Proc, base_env, start_gateway

TEST_ENV = {"ACORE_TEST_BACKENDS": "1"}
DELAY_S = 0.05  # per token: long answers (max_tokens=400) take ~20 s, so every fault test cuts them short
LONG = 400


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def echo_gw(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    config = tmp_path_factory.mktemp("pool") / "gateway.toml"
    config.write_text(
        '[limits]\nqueue_depth = 2\n\n'
        f'[[workers]]\nprovider = "echo"\nmodel = "delay={DELAY_S}"\nname = "slow"\nreplicas = 2\n'
    )
    proc = start_gateway(log_dir, TEST_ENV, ["--config", str(config)])
    try:
        wait_for(lambda: len(live_workers(proc, "slow")) == 2, 30, "two echo workers")
        yield proc
    finally:
        proc.stop()


def providers(gw: Proc) -> dict[str, Any]:
    return {p["name"]: p for p in http.get_json(gw.url + "/providers", timeout=5)["providers"]}


def live_workers(gw: Proc, model: str) -> list[dict[str, Any]]:
    entry = providers(gw).get("llamacpp", {})
    return [w for w in entry.get("workers", []) if w["alive"] and w["model"] == model]


def model_entry(gw: Proc, model_id: str) -> dict[str, Any] | None:
    data = http.get_json(gw.url + "/v1/models", timeout=5)["data"]
    return next((m for m in data if m["id"] == model_id), None)


def client(gw: Proc, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


def ask(gw: Proc, content: str = "hi", **kwargs: Any) -> Any:
    return client(gw).chat.completions.create(model="llamacpp/slow", messages=[{"role": "user", "content": content}],
                                              **kwargs)


def wait_idle(gw: Proc) -> None:
    """Every worker free (in this gateway) and the per-model queue empty."""
    wait_for(lambda: all(w["active"] == 0 for w in live_workers(gw, "slow"))
             and (model_entry(gw, "llamacpp/slow") or {}).get("waiting") == 0
             and len(live_workers(gw, "slow")) == 2, 30, "idle workers")


# ---------------------------------------------------------------------- basic traffic


def test_non_streaming_and_streaming(echo_gw: Proc) -> None:
    answer = ask(echo_gw, max_tokens=3)
    assert answer.choices[0].message.content == "tok0 tok1 tok2"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.model == "llamacpp/slow"

    stream = ask(echo_gw, max_tokens=4, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens_details is not None


def test_prompt_cache_key_reports_cached_tokens(echo_gw: Proc) -> None:
    answer = ask(echo_gw, max_tokens=1, extra_body={"prompt_cache_key": "k1"})
    assert answer.usage.prompt_tokens_details.cached_tokens == 1


def test_worker_errors_keep_their_status_and_the_worker_serves_on(echo_gw: Proc) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(echo_gw, "fail")
    assert "refuses" in refused.value.message
    with pytest.raises(openai.InternalServerError):
        ask(echo_gw, "crash")
    assert ask(echo_gw, max_tokens=2).choices[0].message.content == "tok0 tok1"


def test_unknown_local_model_is_404(echo_gw: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(echo_gw).chat.completions.create(model="llamacpp/nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"


def test_models_and_providers_list_workers_with_load(echo_gw: Proc) -> None:
    entry = model_entry(echo_gw, "llamacpp/slow")
    assert entry is not None and entry["workers"] == 2 and entry["type"] == "text-generation"
    llamacpp = providers(echo_gw)["llamacpp"]
    assert llamacpp["status"] == "available"
    assert "dropped_frames" in llamacpp
    for worker in llamacpp["workers"]:
        assert {"id", "model", "pid", "active", "queued", "max_concurrency", "alive"} <= set(worker)


def test_embeddings_through_a_worker(echo_gw: Proc) -> None:
    result = client(echo_gw).embeddings.create(model="llamacpp/slow", input=["a b", "c"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8


# ---------------------------------------------------------------------- cancellation and overload


def test_client_disconnect_aborts_and_frees_the_worker(echo_gw: Proc) -> None:
    wait_idle(echo_gw)
    # Occupy both workers with long streams, read a little, then hang up on both.
    streams = [ask(echo_gw, max_tokens=LONG, stream=True) for _ in range(2)]
    for stream in streams:
        for _chunk, _ in zip(stream, range(3), strict=False):
            pass
    for stream in streams:
        stream.close()
    started = time.monotonic()
    # Without the abort both workers would be busy for ~20 s more.
    assert ask(echo_gw, max_tokens=2).choices[0].message.content == "tok0 tok1"
    assert time.monotonic() - started < 3
    # The workers themselves report idle (heartbeat load), not just the gateway's bookkeeping.
    wait_for(lambda: all(w["worker_active"] == 0 and w["queued"] == 0 for w in live_workers(echo_gw, "slow")),
             5, "workers idle after abort")


def test_queue_full_is_429_with_retry_after(echo_gw: Proc) -> None:
    wait_idle(echo_gw)
    busy = [ask(echo_gw, max_tokens=LONG, stream=True) for _ in range(2)]
    for stream in busy:
        next(iter(stream))
    with ThreadPoolExecutor(2) as pool:
        waiting: list[Future[Any]] = [pool.submit(ask, echo_gw, max_tokens=2) for _ in range(2)]
        wait_for(lambda: (model_entry(echo_gw, "llamacpp/slow") or {}).get("waiting") == 2, 10, "two waiting")
        with pytest.raises(openai.RateLimitError) as full:
            ask(echo_gw, max_tokens=2)
        assert full.value.response.headers.get("retry-after")
        for stream in busy:
            stream.close()
        for future in waiting:
            assert future.result(timeout=15).choices[0].message.content == "tok0 tok1"


# ---------------------------------------------------------------------- worker death


def test_kill_9_mid_stream_ends_the_stream_and_the_worker_restarts(echo_gw: Proc) -> None:
    wait_idle(echo_gw)
    before = {w["pid"] for w in live_workers(echo_gw, "slow")}
    body = {"model": "llamacpp/slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": LONG,
            "stream": True}
    with ThreadPoolExecutor(1) as pool, http.stream_lines("POST", echo_gw.url + "/v1/chat/completions", body,
                                                         timeout=30) as lines:
        events = [line[6:] for line, _ in zip(lines, range(3), strict=False) if line.startswith("data: ")]
        # Ours is the only request so far: the busy worker is the victim.
        victim = wait_for(lambda: [w for w in live_workers(echo_gw, "slow") if w["active"]], 5, "the busy worker")
        pid = victim[0]["pid"]
        other = ask(echo_gw, max_tokens=LONG, stream=True)
        next(iter(other))  # the second worker is busy too
        # A request that has to wait: it must be served by another worker, not die with the victim.
        waiting = pool.submit(ask, echo_gw, max_tokens=2)
        wait_for(lambda: (model_entry(echo_gw, "llamacpp/slow") or {}).get("waiting") == 1, 10, "a waiting request")
        os.kill(pid, signal.SIGKILL)
        events += [line[6:] for line in lines if line.startswith("data: ")]
        errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
        assert len(errors) == 1, events[-3:]
        assert json.loads(errors[0])["error"]["code"] == "worker_dead"
        assert events[-2:] == [errors[0], "[DONE]"]
        other.close()
        assert waiting.result(timeout=20).choices[0].message.content == "tok0 tok1"

    def restarted() -> set[int] | None:
        pids = {w["pid"] for w in live_workers(echo_gw, "slow")}
        return pids if len(pids) == 2 else None

    after = wait_for(restarted, 20, "the supervisor to restart the worker")
    assert pid not in after and len(after & before) == 1


def test_a_request_not_yet_answered_fails_over_to_another_worker(echo_gw: Proc) -> None:
    wait_idle(echo_gw)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ask, echo_gw, "slow-start", max_tokens=2)
        victim = wait_for(lambda: [w for w in live_workers(echo_gw, "slow") if w["active"]], 5, "the busy worker")
        os.kill(victim[0]["pid"], signal.SIGKILL)
        # Nothing had reached the client: the gateway ran it again on the other worker.
        assert pending.result(timeout=20).choices[0].message.content == "tok0 tok1"
    wait_idle(echo_gw)  # and the supervisor brought the victim back


# ---------------------------------------------------------------------- membership and hostile peers


def test_worker_started_by_hand_joins_and_leaves(echo_gw: Proc, log_dir: Path) -> None:
    endpoint = default_worker_endpoint(int(echo_gw.url.rsplit(":", 1)[1]))
    log_path = log_dir / "hand-worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "--provider", "echo", "--model", "tokens=3", "--name", "handy",
             "--connect", endpoint], cwd=REPO, env=base_env(TEST_ENV), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: model_entry(echo_gw, "llamacpp/handy"), 20, "the hand-started worker")
        answer = client(echo_gw).chat.completions.create(model="llamacpp/handy",
                                                         messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].message.content == "tok0 tok1 tok2"
        # The seed's spelling reaches a llama.cpp worker of that name too.
        answer = client(echo_gw).chat.completions.create(model="huggingface/handy",
                                                         messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].finish_reason == "stop"
        log_text = log_path.read_text()
        assert "loading tokens=3" in log_text and "loaded handy in" in log_text
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    # A clean stop says Goodbye: dropped on that message, not after missed heartbeats.
    wait_for(lambda: model_entry(echo_gw, "llamacpp/handy") is None, 10, "the worker to be dropped")
    assert "(handy, pid" in echo_gw.log() and "is dead: it stopped" in echo_gw.log()


def test_a_silent_worker_is_dropped_after_missed_heartbeats(echo_gw: Proc, log_dir: Path) -> None:
    endpoint = default_worker_endpoint(int(echo_gw.url.rsplit(":", 1)[1]))
    with (log_dir / "silent-worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "--provider", "echo", "--model", "tokens=1", "--name", "silent",
             "--connect", endpoint], cwd=REPO, env=base_env(TEST_ENV), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: model_entry(echo_gw, "llamacpp/silent"), 20, "the hand-started worker")
    finally:
        worker.kill()  # no Goodbye: only the heartbeat timeout can notice
        worker.wait(10)
    wait_for(lambda: model_entry(echo_gw, "llamacpp/silent") is None, 15, "the silent worker to be dropped")
    assert "(silent, pid" in echo_gw.log() and "no message for" in echo_gw.log()


def test_one_worker_serves_two_gateways(echo_gw: Proc, log_dir: Path) -> None:
    second = start_gateway(log_dir, TEST_ENV)
    endpoints = [default_worker_endpoint(int(gw.url.rsplit(":", 1)[1])) for gw in (echo_gw, second)]
    with (log_dir / "shared-worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "--provider", "echo", "--model", "tokens=2", "--name", "shared",
             *(arg for endpoint in endpoints for arg in ("--connect", endpoint))],
            cwd=REPO, env=base_env(TEST_ENV), stdout=log, stderr=subprocess.STDOUT)
    try:
        for gw in (echo_gw, second):
            wait_for(lambda gw=gw: model_entry(gw, "llamacpp/shared"), 20, "the shared worker")
            answer = client(gw).chat.completions.create(model="llamacpp/shared",
                                                        messages=[{"role": "user", "content": "x"}])
            assert answer.choices[0].message.content == "tok0 tok1"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        second.stop()


def test_rogue_dealer_frames_are_dropped_and_counted(echo_gw: Proc) -> None:
    before = providers(echo_gw)["llamacpp"]["dropped_frames"]
    endpoint = default_worker_endpoint(int(echo_gw.url.rsplit(":", 1)[1]))
    ctx = zmq.Context()
    try:
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(endpoint)
        rogue.send(b"\xff\x00garbage")
        rogue.send(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.")  # pickle
        rogue.send(msgspec.msgpack.encode({"t": "gen", "request_id": 5}))  # wrong schema / direction
        rogue.send(msgspec.msgpack.encode({"t": "nope"}))
        rogue.send_multipart([b""])
        wait_for(lambda: providers(echo_gw)["llamacpp"]["dropped_frames"] >= before + 4, 10, "dropped frames")
        # Over MAXMSGSIZE: ZeroMQ drops the peer itself; the gateway keeps serving.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(endpoint)
        big.send(b"\x00" * (64 * 1024 * 1024 + 16))
        time.sleep(0.5)
        big.close()
        rogue.close()
    finally:
        ctx.term()
    assert ask(echo_gw, max_tokens=1).choices[0].message.content == "tok0"


# ---------------------------------------------------------------------- command lines


def test_worker_cli_help_and_missing_model() -> None:
    env = base_env()
    shown = subprocess.run([sys.executable, "-m", "workers", "--help"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=30)
    assert shown.returncode == 0 and "--connect" in shown.stdout and "--provider" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "workers", "--provider", "llamacpp", "--model",
                              "/nonexistent/model.gguf"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode == 2
    errors = [line for line in missing.stderr.splitlines() if "acore-worker:" in line]
    assert len(errors) == 1 and "/nonexistent/model.gguf" in errors[0]
    hidden = subprocess.run([sys.executable, "-m", "workers", "--provider", "echo", "--model", "x"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=30)
    assert hidden.returncode == 2  # test backends need ACORE_TEST_BACKENDS=1


def test_non_loopback_tcp_bind_is_refused() -> None:
    refused = subprocess.run([sys.executable, "-m", "gateway", "--port", "1", "--no-default-embeddings",
                              "--worker-bind", "tcp://0.0.0.0:5999"], cwd=REPO, env=base_env(),
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "tcp://0.0.0.0:5999" in refused.stderr and "CURVE" in refused.stderr


def test_a_worker_that_cannot_load_fails_fast(log_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    gw = start_gateway(log_dir, extra_args=["--worker", f"llamacpp:{missing}"])
    try:
        with ThreadPoolExecutor(1) as pool:
            # Sent while the worker is still starting: it waits, then fails once the worker cannot load.
            early = pool.submit(lambda: client(gw).chat.completions.create(
                model="llamacpp/missing", messages=[{"role": "user", "content": "x"}]))
            with pytest.raises(openai.APIStatusError) as waited:
                early.result(timeout=30)
        assert waited.value.status_code == 503 and "status 2" in waited.value.message
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failed:
            client(gw).chat.completions.create(model="llamacpp/missing", messages=[{"role": "user", "content": "x"}])
        assert failed.value.status_code == 503 and time.monotonic() - started < 2
        assert "model file not found" in gw.log()
    finally:
        gw.stop()
