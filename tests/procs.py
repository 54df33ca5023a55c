"""Start and stop real processes on 127.0.0.1 for tests: the gateway, fake upstreams, workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import http

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no real provider keys or URLs leak into tests."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL")) and not k.startswith(("ABSTRACT", "ACORE_", "OLLAMA"))}
    env["PYTHONPATH"] = str(REPO)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def wait_http(url: str, process: subprocess.Popen[bytes] | None, timeout: float, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(f"process exited with {process.returncode} before answering {url}:\n{log[-4000:]}")
        try:
            if http.get(url, timeout=1).status < 500:
                return
        except OSError:  # refused, reset or timed out: not listening yet
            pass
        time.sleep(0.05)
    log = log_path.read_text(errors="replace") if log_path else ""
    raise TimeoutError(f"{url} did not answer within {timeout}s:\n{log[-4000:]}")


def start(
    args: Sequence[str],
    *,
    port: int,
    log_dir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
    timeout: float = 30.0,
    cwd: Path = REPO,
) -> Proc:
    """Run ``python ARGS`` in ``cwd`` (this checkout, or another one for a side-by-side benchmark)."""
    log_path = log_dir / f"{name}-{port}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=base_env(env), stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + ready_path, process, timeout, log_path)
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    return Proc(process, url, log_path)


def start_gateway(log_dir: Path, env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                  timeout: float = 30.0) -> Proc:
    port = free_port()
    # Debug logs (--debug, ABSTRACTCORE_DEBUG) go beside the process log, never into the checkout's logs/.
    env = {"ACORE_LOG_DIR": str(log_dir / f"gateway-{port}-logs"), **(env or {})}
    return start(["-m", "gateway", "--port", str(port), "--no-default-embeddings", *extra_args],
                 port=port, log_dir=log_dir, name="gateway", env=env, timeout=timeout)


def start_fake_openai(log_dir: Path) -> Proc:
    port = free_port()
    return start(["-m", "tests.fakes.openai_upstream", "--port", str(port)], port=port, log_dir=log_dir,
                 name="fake-openai", ready_path="/v1/models")


@dataclass
class Worker:
    """An ``acore-worker`` started by hand (not by a gateway), with its own log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_worker(log_dir: Path, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Worker:
    log_path = log_dir / f"worker-{name}-{free_port()}.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers", *args], cwd=REPO, env=base_env(env),
                                   stdout=handle, stderr=subprocess.STDOUT)
    return Worker(process, log_path)


@dataclass
class Relay:
    """tests/fakes/relay.py: a TCP relay the test pauses (partition), resumes and cuts."""

    proc: Proc
    address: str  # host:port it accepts on

    def _control(self, action: str) -> dict[str, object]:
        reply = http.post(f"{self.proc.url}/{action}")
        assert reply.status == 200, reply.text
        state: dict[str, object] = reply.json()
        return state

    def pause(self) -> dict[str, object]:
        return self._control("pause")

    def resume(self) -> dict[str, object]:
        return self._control("resume")

    def drop(self) -> dict[str, object]:
        return self._control("drop")

    def state(self) -> dict[str, object]:
        state: dict[str, object] = http.get_json(f"{self.proc.url}/state")
        return state

    def stop(self) -> None:
        self.proc.stop()


def start_relay(log_dir: Path, target_port: int, listen_host: str = "127.0.0.2") -> Relay:
    """A relay accepting on ``listen_host`` (127.0.0.2: "another host") and forwarding to 127.0.0.1:target_port."""
    port, control = free_port(), free_port()
    proc = start(["-m", "tests.fakes.relay", "--listen", f"{listen_host}:{port}", "--target",
                  f"127.0.0.1:{target_port}", "--control", str(control)], port=control, log_dir=log_dir,
                 name="relay", ready_path="/state")
    return Relay(proc, f"{listen_host}:{port}")
