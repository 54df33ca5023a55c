"""Workers on other hosts: CurveZMQ over tcp://, joining, refusals, and network faults.

The gateway binds its worker socket on tcp://127.0.0.1 with keys; workers reach it through
tests/fakes/relay.py accepting on 127.0.0.2 ("another host": Linux routes all of 127/8 on
loopback), so the gateway sees them at 127.0.0.2 and the test can pause, resume and cut the
link. Every process is real; the echo backend makes token timing predictable.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import zmq

from protocol.codec import encode
from protocol.curve import load_pair, load_public
from protocol.messages import Ready
from tests import http
from tests.procs import REPO, Proc, Relay, Worker, base_env, free_port, start_gateway, start_relay, start_worker

TEST_ENV = {"ACORE_TEST_BACKENDS": "1"}
DELAY_S = 0.05


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=base_env(TEST_ENV), capture_output=True,
                          text=True, timeout=60)


def local(gw: Proc) -> dict[str, Any]:
    entry: dict[str, Any] = next(p for p in http.get_json(gw.url + "/providers")["providers"] if p["name"] == "llamacpp")
    return entry


def alive(gw: Proc, model: str) -> list[dict[str, Any]]:
    return [w for w in local(gw).get("workers", []) if w["alive"] and w["model"] == model]


def client(gw: Proc, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The gateway's keys (with w1 authorised) and three worker keys: w1, w2 (not authorised), w3."""
    gateway_dir = tmp_path_factory.mktemp("gateway-keys")
    worker_dir = tmp_path_factory.mktemp("worker-keys")
    assert keygen("-m", "gateway", "keygen", str(gateway_dir)).returncode == 0
    for name in ("w1", "w2", "w3"):
        result = keygen("-m", "workers", "keygen", str(worker_dir), "--name", name)
        assert result.returncode == 0, result.stderr
    shutil.copy(worker_dir / "w1.key", gateway_dir / "authorized" / "w1.key")
    return {"gateway": gateway_dir, "workers": worker_dir}


@pytest.fixture(scope="module")
def curve_gw(log_dir: Path, keys: dict[str, Path]) -> Iterator[Proc]:
    port = free_port()
    proc = start_gateway(log_dir, TEST_ENV, ["--worker-bind", f"tcp://127.0.0.1:{port}",
                                             "--worker-keys", str(keys["gateway"])])
    proc.worker_port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def relay(log_dir: Path, curve_gw: Proc) -> Iterator[Relay]:
    relay = start_relay(log_dir, curve_gw.worker_port)  # type: ignore[attr-defined]
    yield relay
    relay.stop()


def remote_worker(log_dir: Path, keys: dict[str, Path], address: str, name: str, key: str = "w1",
                  gateway_key: Path | None = None, model: str | None = None) -> Worker:
    return start_worker(log_dir, name, [
        "--provider", "echo", "--model", model or f"delay={DELAY_S}", "--name", name, "--connect", f"tcp://{address}",
        "--gateway-key", str(gateway_key or keys["gateway"] / "gateway.key"),
        "--key", str(keys["workers"] / f"{key}.key_secret")], TEST_ENV)


@pytest.fixture
def joined(log_dir: Path, keys: dict[str, Path], curve_gw: Proc, relay: Relay) -> Iterator[Worker]:
    relay.resume()
    worker = remote_worker(log_dir, keys, relay.address, "far")
    try:
        wait_for(lambda: alive(curve_gw, "far"), 30, "the remote worker to join")
        yield worker
    finally:
        worker.stop()
        wait_for(lambda: not alive(curve_gw, "far"), 15, "the remote worker to leave")


# ---------------------------------------------------------------- keys and binds


def test_keygen_writes_z85_key_files_with_private_secrets(keys: dict[str, Path]) -> None:
    gateway = keys["gateway"]
    assert stat.S_IMODE(os.stat(gateway / "gateway.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys["workers"] / "w1.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gateway / "gateway.key").st_mode) == 0o644
    assert len(load_public(gateway / "gateway.key")) == 40 and len(load_pair(gateway / "gateway.key_secret").secret) == 40
    again = keygen("-m", "gateway", "keygen", str(gateway))
    assert again.returncode == 0 and "kept the existing" in again.stdout  # never replaces a gateway's key
    clash = keygen("-m", "workers", "keygen", str(keys["workers"]), "--name", "w1")
    assert clash.returncode == 2 and "exists" in clash.stderr


def test_non_loopback_bind_without_keys_is_refused(log_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "--port", str(free_port()), "--no-default-embeddings",
                             "--worker-bind", f"tcp://0.0.0.0:{free_port()}"], cwd=REPO, env=base_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs CURVE keys" in result.stderr and "--worker-keys" in result.stderr


def test_worker_refuses_a_remote_endpoint_without_keys(log_dir: Path) -> None:
    worker = start_worker(log_dir, "nokeys", ["--provider", "echo", "--model", "tokens=1", "--connect",
                                              "tcp://192.0.2.1:5555"], TEST_ENV)
    assert worker.process.wait(30) == 2
    assert "--gateway-key" in worker.log()


# ---------------------------------------------------------------- joining and refusals


def test_a_worker_joins_from_another_host_and_serves(curve_gw: Proc, joined: Worker, keys: dict[str, Path]) -> None:
    (entry,) = alive(curve_gw, "far")
    assert entry["address"] == "127.0.0.2"  # the peer the gateway sees: the other host
    assert entry["key_id"] == load_public(keys["workers"] / "w1.key")[:8].decode()
    assert entry["host"]
    wait_for(lambda: alive(curve_gw, "far")[0]["heartbeat_rtt_ms"] is not None, 10, "a heartbeat round trip")
    assert 0 < alive(curve_gw, "far")[0]["heartbeat_rtt_ms"] < 1000
    answer = client(curve_gw).chat.completions.create(model="llamacpp/far", max_tokens=3,
                                                      messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "tok0 tok1 tok2"
    info = local(curve_gw)
    assert info["curve"] is True and info["authorized_keys"] >= 1
    assert "connected to the gateway" in joined.log()


def refused(gw: Proc) -> dict[str, int]:
    counts: dict[str, int] = local(gw).get("refused", {})
    return counts


def test_an_unknown_key_is_refused_logged_and_counted(log_dir: Path, keys: dict[str, Path], curve_gw: Proc,
                                                      relay: Relay) -> None:
    before = refused(curve_gw).get("unknown_key", 0)
    worker = remote_worker(log_dir, keys, relay.address, "stranger", key="w2")
    try:
        wait_for(lambda: refused(curve_gw).get("unknown_key", 0) > before, 20, "the refusal")
        assert not alive(curve_gw, "stranger")
        assert "refused a worker connection from 127.0.0.2" in curve_gw.log()
        assert "its key is not authorised" in curve_gw.log()
        wait_for(lambda: "refused this worker's key" in worker.log(), 10, "the worker to say why")
    finally:
        worker.stop()


def test_a_plaintext_peer_is_refused(log_dir: Path, curve_gw: Proc) -> None:
    before = refused(curve_gw).get("plaintext", 0)
    port = curve_gw.worker_port  # type: ignore[attr-defined]
    worker = start_worker(log_dir, "plain", ["--provider", "echo", "--model", "tokens=1", "--name", "plain",
                                             "--connect", f"tcp://127.0.0.1:{port}"], TEST_ENV)
    try:
        wait_for(lambda: refused(curve_gw).get("plaintext", 0) > before, 20, "the plaintext refusal")
        assert not alive(curve_gw, "plain")
        assert "it does not speak CURVE" in curve_gw.log()
    finally:
        worker.stop()


def test_a_wrong_gateway_key_is_refused(log_dir: Path, keys: dict[str, Path], curve_gw: Proc, relay: Relay,
                                        tmp_path: Path) -> None:
    assert keygen("-m", "gateway", "keygen", str(tmp_path / "other")).returncode == 0
    before = refused(curve_gw).get("wrong_gateway_key", 0)
    worker = remote_worker(log_dir, keys, relay.address, "lost", gateway_key=tmp_path / "other" / "gateway.key")
    try:
        wait_for(lambda: refused(curve_gw).get("wrong_gateway_key", 0) > before, 20, "the refusal")
        assert not alive(curve_gw, "lost")
        assert "it used another gateway key" in curve_gw.log()
        wait_for(lambda: "check --gateway-key" in worker.log(), 10, "the worker to say what to check")
    finally:
        worker.stop()


def test_a_key_added_at_runtime_lets_the_worker_in(log_dir: Path, keys: dict[str, Path], curve_gw: Proc,
                                                   relay: Relay) -> None:
    authorized = keys["gateway"] / "authorized" / "w3.key"
    worker = remote_worker(log_dir, keys, relay.address, "latecomer", key="w3")
    try:
        wait_for(lambda: "refused this worker's key" in worker.log(), 20, "the first refusal")
        shutil.copy(keys["workers"] / "w3.key", authorized)
        # re-read within 2 s; the worker redials every 5 s at most
        wait_for(lambda: alive(curve_gw, "latecomer"), 15, "the worker to join once its key is authorised")
        authorized.unlink()
        wait_for(lambda: "no longer authorised" in curve_gw.log(), 10, "the key's removal to take effect")
    finally:
        authorized.unlink(missing_ok=True)
        worker.stop()


def test_garbage_from_an_authenticated_peer_is_dropped_and_counted(keys: dict[str, Path], curve_gw: Proc) -> None:
    before = local(curve_gw)["dropped_frames"]
    pair = load_pair(keys["workers"] / "w1.key_secret")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey = load_public(keys["gateway"] / "gateway.key")
    sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{curve_gw.worker_port}")  # type: ignore[attr-defined]
    try:
        sock.send_multipart([b"\xc1garbage"])
        sock.send_multipart([encode(Ready(worker_id="rogue", provider="llamacpp", model="rogue"))[0][:5]])
        sock.send_multipart([json.dumps({"t": "ready"}).encode()])
        wait_for(lambda: local(curve_gw)["dropped_frames"] >= before + 3, 10, "three dropped frames")
    finally:
        sock.close()
        ctx.term()
    answer = client(curve_gw).models.list()
    assert answer.data is not None  # still serving


# ---------------------------------------------------------------- network faults


def test_partition_mid_stream_ends_the_stream_and_the_worker_rejoins_once(curve_gw: Proc, joined: Worker,
                                                                          relay: Relay) -> None:
    body = {"model": "llamacpp/far", "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": "x"}]}
    (before,) = alive(curve_gw, "far")
    events: list[str] = []
    with http.stream_lines("POST", curve_gw.url + "/v1/chat/completions", body, timeout=60) as lines:
        for line in lines:
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 5:
                relay.pause()  # the link goes silent mid-stream
    relay.resume()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "worker_dead" and "no message" in error["message"]
    # the link healed: the worker is back, once
    wait_for(lambda: alive(curve_gw, "far"), 20, "the worker to rejoin")
    time.sleep(1.5)
    entries = [w for w in local(curve_gw)["workers"] if w["id"] == before["id"]]
    assert len(entries) == 1 and entries[0]["alive"]  # the same worker back, not a duplicate entry
    assert len(alive(curve_gw, "far")) == 1
    answer = client(curve_gw).chat.completions.create(model="llamacpp/far", max_tokens=2,
                                                      messages=[{"role": "user", "content": "again"}])
    assert answer.choices[0].message.content == "tok0 tok1"


def test_partition_before_the_first_token_retries_on_another_worker(log_dir: Path, keys: dict[str, Path],
                                                                    curve_gw: Proc, relay: Relay) -> None:
    relay.resume()
    far = remote_worker(log_dir, keys, relay.address, "pair", model="delay=0.01")
    near = None
    try:
        wait_for(lambda: alive(curve_gw, "pair"), 30, "the remote worker")
        with ThreadPoolExecutor(1) as pool:
            # "slow-start" waits 1.5 s before its first token: the partition comes before any token
            future = pool.submit(lambda: client(curve_gw).chat.completions.create(
                model="llamacpp/pair", max_tokens=3, messages=[{"role": "user", "content": "slow-start"}]))
            wait_for(lambda: alive(curve_gw, "pair")[0]["active"] == 1, 10, "the request to reach the worker")
            relay.pause()
            near = start_worker(log_dir, "pair-near", [  # a second worker, on this host, joins meanwhile
                "--provider", "echo", "--model", "delay=0.01", "--name", "pair",
                "--connect", f"tcp://127.0.0.1:{curve_gw.worker_port}",  # type: ignore[attr-defined]
                "--gateway-key", str(keys["gateway"] / "gateway.key"),
                "--key", str(keys["workers"] / "w1.key_secret")], TEST_ENV)
            answer = future.result(timeout=40)
        assert answer.choices[0].message.content == "tok0 tok1 tok2"  # served whole, by the other worker
        assert "is dead: no message" in curve_gw.log()
    finally:
        relay.resume()
        far.stop()
        if near is not None:
            near.stop()


def test_a_dropped_link_redials_and_a_gateway_restart_is_rejoined(log_dir: Path, keys: dict[str, Path],
                                                                  relay: Relay) -> None:
    port = free_port()
    extra = ["--worker-bind", f"tcp://127.0.0.1:{port}", "--worker-keys", str(keys["gateway"])]
    own_relay = start_relay(log_dir, port)
    gw = start_gateway(log_dir, TEST_ENV, extra)
    worker = remote_worker(log_dir, keys, own_relay.address, "phoenix", model="tokens=2")
    try:
        wait_for(lambda: alive(gw, "phoenix"), 30, "the worker to join")
        own_relay.drop()  # connections reset: the worker redials through the relay
        wait_for(lambda: own_relay.state()["accepted"] >= 2, 20, "the worker to redial")
        assert client(gw).chat.completions.create(model="llamacpp/phoenix", messages=[
            {"role": "user", "content": "x"}]).choices[0].message.content == "tok0 tok1"
        gw.stop()
        gw = start_gateway(log_dir, TEST_ENV, extra)  # a new gateway on the same bind and keys
        wait_for(lambda: alive(gw, "phoenix"), 30, "the worker to rejoin the restarted gateway")
        assert client(gw).chat.completions.create(model="llamacpp/phoenix", messages=[
            {"role": "user", "content": "x"}]).choices[0].message.content == "tok0 tok1"
    finally:
        worker.stop()
        gw.stop()
        own_relay.stop()


def test_supervised_workers_join_a_curve_socket_with_their_own_key(log_dir: Path, keys: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[workers]]\nprovider = "echo"\nmodel = "tokens=2"\nname = "inhouse"\n')
    gw = start_gateway(log_dir, TEST_ENV, ["--worker-bind", f"tcp://127.0.0.1:{free_port()}", "--worker-keys",
                                           str(keys["gateway"]), "--config", str(config)])
    try:
        wait_for(lambda: alive(gw, "inhouse"), 30, "the supervised worker")
        assert alive(gw, "inhouse")[0]["key_id"]
        answer = client(gw).chat.completions.create(model="llamacpp/inhouse", messages=[
            {"role": "user", "content": "x"}])
        assert answer.choices[0].message.content == "tok0 tok1"
    finally:
        gw.stop()
