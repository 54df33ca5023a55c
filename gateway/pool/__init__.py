"""The local worker pool: ZeroMQ client, scheduler, supervisor and the local providers.

``setup(app)`` checks the worker endpoint (so a bad --worker-bind fails before the server
starts) and adds a cleanup context that binds the socket, starts the supervised workers and
registers the llamacpp/, mlx/ and huggingface/ providers. The context runs after
http_session_ctx, which creates app[PROVIDERS].

With ``--processes N`` every HTTP front binds a worker socket of its own (``front_endpoint``)
and schedules over every worker; the workers are started by the fronts' parent
(gateway/cli/fronts.py), which connects each to every front and posts load failures on a
``FailureBoard``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig, WorkerSpec
from gateway.keys import CONFIG, PROVIDERS
from gateway.pool.auth import WorkerAuth
from gateway.pool.board import FailureBoard, board_path
from gateway.pool.client import WorkerPool, check_bind
from gateway.pool.defaults import default_worker_specs
from gateway.pool.provider import LocalProvider, progress
from gateway.pool.supervisor import Supervisor
from protocol.curve import KeyFileError, parse_public
from protocol.endpoints import default_worker_endpoint, front_endpoint, runtime_dir
from protocol.local import LISTED_UNDER, LOCAL_PROVIDERS, default_name, provider_serves, resolve_engine

log = logging.getLogger("acore.gateway")


@dataclass(slots=True)
class PoolState:
    pool: WorkerPool
    supervisor: Supervisor | None  # None in the fronts of a --processes N gateway
    expected: set[tuple[str, str]]  # (engine, name) of every configured worker
    failure: Callable[[str], str | None]  # why a configured model's worker cannot load, if it cannot
    restarts: Callable[[], int]  # how often the owner of the workers restarted one


POOL: web.AppKey[PoolState] = web.AppKey("worker_pool", PoolState)
WORKER_AUTH: web.AppKey[WorkerAuth | None] = web.AppKey("worker_auth")


def base_endpoint(config: GatewayConfig) -> str:
    return config.worker_bind or default_worker_endpoint(config.port)


def front_endpoints(config: GatewayConfig) -> list[str]:
    """The worker socket of every HTTP front (one unless --processes N)."""
    return [front_endpoint(base_endpoint(config), index) for index in range(config.processes)]


def worker_endpoint(config: GatewayConfig) -> str:
    """This process's worker socket."""
    return front_endpoint(base_endpoint(config), config.front_index or 0)


def supervised_specs(config: GatewayConfig) -> list[WorkerSpec]:
    return [*config.workers, *default_worker_specs(config)]


def expected_models(specs: list[WorkerSpec]) -> set[tuple[str, str]]:
    """(engine, name) of every supervised worker: requests for these wait while they (re)start."""
    return {(resolve_engine(s.provider, s.model), s.name or default_name(s.provider, s.model)) for s in specs}


def worker_auth(config: GatewayConfig, endpoint: str, supervised: bool, make_supervised_key: bool) -> WorkerAuth | None:
    """CURVE for a tcp:// worker socket when keys are configured (a bad key setup fails the start)."""
    if not config.worker_keys or not endpoint.startswith("tcp://"):
        return None
    try:
        inline = [parse_public(text) for text in config.authorized_worker_keys]
    except KeyFileError as exc:
        raise ConfigError(f"[server] authorized_worker_keys: {exc}") from None
    runtime = runtime_dir(config.port) if supervised else None
    return WorkerAuth(Path(config.worker_keys).expanduser(), inline, runtime, make_supervised_key)


def supervisor_for(config: GatewayConfig, auth: WorkerAuth | None, on_exit: Callable[[int], None],
                   on_failure: Callable[[str, str], None]) -> Supervisor:
    """The supervisor of the configured workers, connecting each to every front's socket."""
    keys = (auth.gateway_public_file, auth.supervised_key_file) if auth and auth.supervised_key_file else None
    return Supervisor(supervised_specs(config), front_endpoints(config), config.env, on_exit, on_failure, keys)


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    endpoint = worker_endpoint(config)
    # The process that starts the workers makes their key; fronts of a --processes gateway read it.
    auth = worker_auth(config, endpoint, bool(supervised_specs(config)), config.supervises_workers)
    check_bind(endpoint, curve=auth is not None)
    app[WORKER_AUTH] = auth
    app.cleanup_ctx.append(pool_ctx)


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    endpoint = worker_endpoint(config)
    expected = expected_models(supervised_specs(config))
    auth = app[WORKER_AUTH]

    def is_expected(provider: str, model: str) -> bool:
        # Test and future backends may announce any provider: match those by name only.
        return any(name == model and (provider_serves(provider, kind) or kind not in LISTED_UNDER)
                   for kind, name in expected)

    supervisor: Supervisor | None = None
    failure: Callable[[str], str | None]
    restarts: Callable[[], int]
    if config.supervises_workers:
        # The callbacks reach the pool created just below (the pool needs the supervisor's failures).
        supervisor = supervisor_for(config, auth, lambda pid: pool.mark_dead_pid(pid),
                                    lambda name, why: pool.scheduler.fail_waiting(name, why))
        failure = supervisor.failures.get
        restarts = supervisor.restart_count
    else:
        board = FailureBoard(board_path(runtime_dir(config.port)))
        failure, restarts = board.get, board.restarts
    pool = WorkerPool(endpoint, config.limits.queue_depth, is_expected, failure, auth, front_endpoints(config))
    pool.expected_models = expected
    await pool.start()
    join = f" (CurveZMQ: workers need --gateway-key {auth.gateway_public_file})" if auth else ""
    print(f"acore-gateway: worker endpoint {endpoint}{join}", file=sys.stderr, flush=True)
    app[POOL] = PoolState(pool, supervisor, expected, failure, restarts)
    registry = app[PROVIDERS]
    for name in LOCAL_PROVIDERS:
        registry.register(LocalProvider(name, pool, config))
    if supervisor is not None:
        supervisor.start()
    try:
        yield
    finally:
        if supervisor is not None:
            await supervisor.stop(config.limits.shutdown_timeout_s)
        await pool.close()


def health(app: web.Application) -> dict[str, Any]:
    """What the pool knows for /health and /health/ready: each configured model's state."""
    state = app.get(POOL)
    if state is None:
        return {"ready": True, "models": []}
    workers = list(state.pool.scheduler.workers.values())
    models = []
    for engine, name in sorted(state.expected):
        listed = LISTED_UNDER.get(engine, engine)
        alive = [w for w in workers if w.alive and w.ready.model == name
                 and (provider_serves(listed, w.ready.provider) or engine not in LISTED_UNDER)]
        failed = state.failure(name)
        status = "ready" if alive else ("failed" if failed else "loading")
        entry: dict[str, Any] = {"model": f"{listed}/{name}", "state": status,
                                 "workers": len(alive)}
        if failed and not alive:
            entry["error"] = failed
        announced = [m for m, _ in state.pool.loading.values() if m.model == name] if not alive else []
        if announced:  # its worker is downloading or loading the model: say which, and how far
            entry["phase"], entry["progress"] = announced[-1].state, progress(announced[-1])
        models.append(entry)
    return {"ready": all(m["state"] == "ready" for m in models), "models": models,
            "workers_alive": sum(1 for w in workers if w.alive)}
