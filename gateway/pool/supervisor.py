"""Start, restart and stop the gateway's own worker processes.

Each configured worker × replica is one task that runs ``python -m workers``
and restarts it when it exits, with exponential backoff (0.5 s doubling to
30 s, reset once a run lasted 60 s). Workers get ACORE_SUPERVISED_BY=<our
pid>, so they die with the gateway even if it is SIGKILLed (no orphans), and
on shutdown every worker gets SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.config import WorkerSpec
from protocol.local import EXIT_LOAD_FAILED, SUPERVISOR_ENV, default_name

log = logging.getLogger("acore.gateway")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


def worker_command(spec: WorkerSpec, endpoints: list[str], keys: tuple[Path, Path] | None = None) -> list[str]:
    args = [sys.executable, "-m", "workers", "--provider", spec.provider, "--model", spec.model]
    for endpoint in endpoints:  # every front of a --processes N gateway
        args += ["--connect", endpoint]
    if keys is not None:  # a CURVE socket: our own workers authenticate like any other
        args += ["--gateway-key", str(keys[0]), "--key", str(keys[1])]
    if spec.name:
        args += ["--name", spec.name]
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    if spec.n_ctx:
        args += ["--n-ctx", str(spec.n_ctx)]
    if spec.prompt_cache_bytes:
        args += ["--prompt-cache-bytes", str(spec.prompt_cache_bytes)]
    if spec.tool_parser:
        args += ["--tool-parser", spec.tool_parser]
    return args


async def _relay_stderr(proc: asyncio.subprocess.Process) -> str:
    """Pass a worker's stderr on to ours, line by line, until it closes; return its last non-empty line."""
    last = ""
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        if not line:
            return last
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
        text = line.decode("utf-8", "replace").strip()
        if text:
            last = text


class Supervisor:
    def __init__(self, specs: list[WorkerSpec], endpoints: list[str], env: Mapping[str, str],
                 on_exit: Callable[[int], None], on_failure: Callable[[str, str], None],
                 keys: tuple[Path, Path] | None = None) -> None:
        self.specs = specs
        self.endpoints = endpoints
        self.keys = keys
        self._env = {**env, SUPERVISOR_ENV: str(os.getpid())}
        # The worker must import our packages even when the gateway runs from a source checkout.
        root = str(Path(__file__).resolve().parents[2])
        path = self._env.get("PYTHONPATH")
        self._env["PYTHONPATH"] = root if not path else f"{root}{os.pathsep}{path}"
        self._on_exit = on_exit
        self._on_failure = on_failure
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0
        self.failures: dict[str, str] = {}  # model name -> why its worker last failed to load

    def start(self) -> None:
        for spec in self.specs:
            for replica in range(max(1, spec.replicas)):
                self._tasks.append(asyncio.create_task(self._run(spec, replica),
                                                       name=f"worker-{spec.provider}-{replica}"))

    def restart_count(self) -> int:
        return self.restarts

    def pids(self) -> list[int]:
        return list(self._procs)

    async def _run(self, spec: WorkerSpec, replica: int) -> None:
        backoff = BACKOFF_START_S
        label = f"{spec.provider}:{spec.model}#{replica}"
        name = spec.name or default_name(spec.provider, spec.model)
        while not self._stopping:
            started = time.monotonic()
            try:
                # start_new_session: a Ctrl-C in the terminal reaches the gateway only; it stops workers itself.
                proc = await asyncio.create_subprocess_exec(
                    *worker_command(spec, self.endpoints, self.keys), env=self._env, stdin=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True,
                )
            except OSError as exc:
                log.error("cannot start worker %s: %s", label, exc)
                proc = None
            if proc is not None:
                self._procs[proc.pid] = proc
                log.info("started worker %s (pid %d)", label, proc.pid)
                last_line = await _relay_stderr(proc)
                code = await proc.wait()
                self._procs.pop(proc.pid, None)
                self._on_exit(proc.pid)
                if self._stopping:
                    return
                if code == EXIT_LOAD_FAILED:
                    # the worker's own last line says why (acore-worker: model file not found: ...)
                    why = last_line.removeprefix("acore-worker: ") if last_line else f"cannot load {spec.model}"
                    self.failures[name] = f"{why} (the worker exited with status {code})"
                    self._on_failure(name, self.failures[name])
                else:
                    self.failures.pop(name, None)
                if time.monotonic() - started >= HEALTHY_AFTER_S:
                    backoff = BACKOFF_START_S
                log.warning("worker %s (pid %d) exited with status %s; restarting in %.1f s",
                            label, proc.pid, code, backoff)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            _done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace_s)
            if pending:
                for proc in procs:
                    if proc.returncode is None:
                        log.warning("worker pid %d did not stop in %.0f s: killing it", proc.pid, grace_s)
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.wait(pending, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
