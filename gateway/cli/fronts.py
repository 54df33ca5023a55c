"""``acore-gateway --processes N``: N HTTP front processes on one port, and one owner of the workers.

This process (the parent) serves no HTTP. It checks what can be checked before anything starts
(the port is free, Redis answers), starts N fronts (``python -m gateway`` again, told their index
by ``ACORE_FRONT_INDEX``), waits until each listens (SO_REUSEPORT: the kernel spreads connections
over them), then starts the configured workers, each connected to every front's worker socket,
so every front schedules over every worker. A front that dies is started again. SIGTERM/SIGINT
drain the fronts (each finishes its requests up to --shutdown-timeout), then stop the workers,
then exit 0; SIGHUP is passed on (each front re-reads the configuration). Prometheus metrics of
the fronts meet in one PROMETHEUS_MULTIPROC_DIR, emptied at start and removed at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig
from gateway.ops.store import StoreUnavailable, open_store
from gateway.pool import front_endpoints, supervised_specs, supervisor_for, worker_auth
from gateway.pool.board import FailureBoard, board_path
from protocol.endpoints import remove_runtime_dir, runtime_dir
from protocol.local import SUPERVISOR_ENV

log = logging.getLogger("acore.gateway")

FRONT_START_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


def check_port(config: GatewayConfig) -> None:
    """A port already in use is one clear line now, before any front or worker starts."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


async def check_store(config: GatewayConfig) -> None:
    try:
        store = await open_store(config.redis_url, config.env)
    except StoreUnavailable as exc:
        raise ConfigError(f"the state store is not reachable: {exc}") from None
    await store.close()


class Fronts:
    def __init__(self, config: GatewayConfig, argv: list[str]) -> None:
        self.config = config
        self.argv = argv
        self.runtime = runtime_dir(config.port)
        self.metrics_dir = self.runtime / f"metrics-{os.getpid()}"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts: dict[int, int] = {}

    def _env(self, index: int) -> dict[str, str]:
        env = dict(self.config.env)
        env.update({"ACORE_FRONT_INDEX": str(index), SUPERVISOR_ENV: str(os.getpid()),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)})
        root = str(Path(__file__).resolve().parents[2])  # our packages, also from a source checkout
        env["PYTHONPATH"] = root if not env.get("PYTHONPATH") else f"{root}{os.pathsep}{env['PYTHONPATH']}"
        return env

    def start(self, index: int) -> subprocess.Popen[bytes]:
        (self.runtime / f"front-{index}.started").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *self.argv], env=self._env(index),
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[index] = proc
        return proc

    async def wait_started(self, indexes: list[int]) -> None:
        """Until each front listens; a front that exits first fails the start (its own line says why)."""
        deadline = time.monotonic() + FRONT_START_TIMEOUT_S
        waiting = set(indexes)
        while waiting:
            for index in list(waiting):
                if (self.runtime / f"front-{index}.started").exists():
                    waiting.discard(index)
                elif self.procs[index].poll() is not None:
                    raise ConfigError(f"front {index} exited with status {self.procs[index].returncode} while "
                                      "starting (see the line above)")
            if time.monotonic() > deadline:
                raise ConfigError(f"front(s) {sorted(waiting)} did not start within {FRONT_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)

    def signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def wait_all(self, timeout: float) -> None:  # noqa: ASYNC109 - the whole drain's deadline
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs.values()):
            if time.monotonic() > deadline:
                for proc in self.procs.values():
                    if proc.poll() is None:
                        log.warning("front pid %d did not stop in %.0f s: killing it", proc.pid, timeout)
                        proc.kill()
                break
            await asyncio.sleep(0.05)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    async def watch(self) -> None:
        """Start again a front that died (with backoff), so the port keeps serving."""
        while not self.stopping:
            await asyncio.sleep(0.2)
            for index, proc in list(self.procs.items()):
                if self.stopping or proc.poll() is None:
                    continue
                count = self.restarts.get(index, 0)
                self.restarts[index] = count + 1
                delay = RESTART_BACKOFF_S[min(count, len(RESTART_BACKOFF_S) - 1)]
                log.warning("front %d (pid %d) exited with status %s; starting it again in %.1f s", index, proc.pid,
                            proc.returncode, delay)
                _forget_metrics_of(proc.pid)
                await asyncio.sleep(delay)
                if not self.stopping:
                    self.start(index)


def _forget_metrics_of(pid: int) -> None:
    """A dead front's live gauges must not count any more (prometheus-client's multiprocess mode)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid)


async def run_fronts(config: GatewayConfig, argv: list[str]) -> None:
    check_port(config)
    await check_store(config)
    fronts = Fronts(config, argv)
    shutil.rmtree(fronts.metrics_dir, ignore_errors=True)
    fronts.metrics_dir.mkdir(mode=0o700)
    # Worker keys: made here for the supervised workers; the fronts authorise them.
    auth = worker_auth(config, front_endpoints(config)[0], bool(supervised_specs(config)), True)
    board = FailureBoard(board_path(fronts.runtime))
    board.write({})
    supervisor = supervisor_for(config, auth, lambda _pid: None, lambda _name, _why: None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = {"count": 0}

    def on_stop() -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            fronts.signal_all(signal.SIGTERM)  # again: the fronts hurry
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: fronts.signal_all(signal.SIGHUP))
    watcher: asyncio.Task[None] | None = None
    try:
        for index in range(config.processes):
            fronts.start(index)
        await fronts.wait_started(list(range(config.processes)))
        log.info("acore-gateway: %d front processes on http://%s:%d; worker sockets %s", config.processes,
                 config.host, config.port, ", ".join(front_endpoints(config)))
        supervisor.start()
        watcher = loop.create_task(fronts.watch())
        posted: tuple[dict[str, str], int] = ({}, 0)
        while not stop.is_set():
            now = (supervisor.failures, supervisor.restarts)
            if now != posted:  # why a worker cannot load (for the fronts to answer fast), restarts
                posted = (dict(supervisor.failures), supervisor.restarts)
                board.write(*posted)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        fronts.stopping = True
        if watcher is not None:
            watcher.cancel()
        fronts.signal_all(signal.SIGTERM)  # each front drains its requests
        await fronts.wait_all(config.limits.shutdown_timeout_s + 10)
        await supervisor.stop(config.limits.shutdown_timeout_s)  # workers last
        shutil.rmtree(fronts.metrics_dir, ignore_errors=True)
        board.path.unlink(missing_ok=True)
        for index in range(config.processes):
            (fronts.runtime / f"front-{index}.started").unlink(missing_ok=True)
        remove_runtime_dir(fronts.runtime)  # the fronts removed their worker sockets; nothing is left
