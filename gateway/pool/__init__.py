"""The local worker pool: ZeroMQ client, scheduler, supervisor and the local providers.

``setup(app)`` checks the worker endpoint (so a bad --worker-bind fails before
the server starts) and adds a cleanup context that binds the socket, starts
the supervised workers and registers the llamacpp/, mlx/ and huggingface/
providers. The context runs after http_session_ctx, which creates
app[PROVIDERS].
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig, WorkerSpec
from gateway.keys import CONFIG, PROVIDERS
from gateway.pool.auth import WorkerAuth
from gateway.pool.client import WorkerPool, check_bind
from gateway.pool.defaults import default_worker_specs
from gateway.pool.provider import LocalProvider
from gateway.pool.supervisor import Supervisor
from protocol.curve import KeyFileError, parse_public
from protocol.endpoints import default_worker_endpoint, runtime_dir
from protocol.local import LISTED_UNDER, LOCAL_PROVIDERS, default_name, provider_serves, resolve_engine

log = logging.getLogger("acore.gateway")


@dataclass(slots=True)
class PoolState:
    pool: WorkerPool
    supervisor: Supervisor


POOL: web.AppKey[PoolState] = web.AppKey("worker_pool", PoolState)


def worker_endpoint(config: GatewayConfig) -> str:
    return config.worker_bind or default_worker_endpoint(config.port)


def supervised_specs(config: GatewayConfig) -> list[WorkerSpec]:
    return [*config.workers, *default_worker_specs(config)]


def expected_models(specs: list[WorkerSpec]) -> set[tuple[str, str]]:
    """(engine, name) of every supervised worker: requests for these wait while they (re)start."""
    return {(resolve_engine(s.provider, s.model), s.name or default_name(s.provider, s.model)) for s in specs}


WORKER_AUTH: web.AppKey[WorkerAuth | None] = web.AppKey("worker_auth")


def worker_auth(config: GatewayConfig, endpoint: str, supervised: bool) -> WorkerAuth | None:
    """CURVE for a tcp:// worker socket when keys are configured (a bad key setup fails the start)."""
    if not config.worker_keys or not endpoint.startswith("tcp://"):
        return None
    try:
        inline = [parse_public(text) for text in config.authorized_worker_keys]
    except KeyFileError as exc:
        raise ConfigError(f"[server] authorized_worker_keys: {exc}") from None
    runtime = runtime_dir(config.port) if supervised else None
    return WorkerAuth(Path(config.worker_keys).expanduser(), inline, runtime)


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    endpoint = worker_endpoint(config)
    auth = worker_auth(config, endpoint, bool(supervised_specs(config)))
    check_bind(endpoint, curve=auth is not None)
    app[WORKER_AUTH] = auth
    app.cleanup_ctx.append(pool_ctx)


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    endpoint = worker_endpoint(config)
    specs = supervised_specs(config)
    expected = expected_models(specs)
    auth = app[WORKER_AUTH]
    keys = (auth.gateway_public_file, auth.supervised_key_file) if auth and auth.supervised_key_file else None

    def is_expected(provider: str, model: str) -> bool:
        # Test and future backends may announce any provider: match those by name only.
        return any(name == model and (provider_serves(provider, kind) or kind not in LISTED_UNDER)
                   for kind, name in expected)

    # The callbacks reach the pool created just below (the pool needs the supervisor's failures).
    supervisor = Supervisor(specs, endpoint, config.env, lambda pid: pool.mark_dead_pid(pid),
                            lambda name, why: pool.scheduler.fail_waiting(name, why), keys)
    pool = WorkerPool(endpoint, config.limits.queue_depth, is_expected, supervisor.failures.get, auth)
    await pool.start()
    join = f" (CurveZMQ: workers need --gateway-key {auth.gateway_public_file})" if auth else ""
    print(f"acore-gateway: worker endpoint {endpoint}{join}", file=sys.stderr, flush=True)
    app[POOL] = PoolState(pool, supervisor)
    registry = app[PROVIDERS]
    for name in LOCAL_PROVIDERS:
        registry.register(LocalProvider(name, pool, config))
    supervisor.start()
    try:
        yield
    finally:
        await supervisor.stop(config.limits.shutdown_timeout_s)
        await pool.close()
