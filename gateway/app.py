"""The application factory: ``create_app(config)``.

All state lives in typed AppKeys; every resource (the pooled HTTP session, the
provider registry, the worker pool, ...) is owned by a cleanup context, so it
is created on start-up and released on shutdown, in order.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.doors.sse import StreamTracker
from gateway.errors import error_middleware
from gateway.keys import CONFIG, HTTP_SESSION, PROVIDERS, STREAMS
from gateway.ops.auth import auth_middleware
from gateway.ops.drain import inflight_middleware
from gateway.ops.limits import budget_middleware
from gateway.ops.logs import request_context_middleware
from gateway.pipeline.hooks import CALL_HOOKS
from gateway.providers.registry import ProviderRegistry

# Each module has ``setup(app)``: routes, hooks and cleanup contexts of its own. Order matters:
# the pool before the doors that use it, and the hooks run in the order they are set up here.
SUBSYSTEMS: list[str] = [
    "gateway.ops.observe",  # first: its log writer starts before the others and stops after them; GET /metrics
    "gateway.ops.drain",  # a graceful stop: in-flight requests finish first
    "gateway.ops.limits",  # the in-flight byte budget (its middleware is in create_app's list)
    "gateway.ops.store",  # state between requests (memory or Redis): a Redis that does not answer stops the start
    "gateway.pool",  # registers the local providers (llamacpp/, mlx/, huggingface/)
    "gateway.pipeline.routing",  # aliases and groups: target order, circuit breakers
    "gateway.pipeline.base_url",  # hooks: the base_url policy first, then attachments, then unload_after
    "gateway.pipeline.audio",  # audio clips and file_id parts, before the attachments see the messages
    "gateway.pipeline.attachments",
    "gateway.pipeline.unload",
    "gateway.ops.health",
    "gateway.doors.models",
    "gateway.doors.chat",
    "gateway.doors.responses",
    "gateway.doors.messages",  # the Anthropic Messages API (/v1/messages, count_tokens)
    "gateway.doors.embeddings",
    "gateway.doors.prompt_cache",
    "gateway.doors.media",
    "gateway.doors.files",  # /v1/files; file_id in chat and Responses parts reads through its store
    "gateway.doors.docs",
]


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled ClientSession for every upstream call (keep-alive, no per-request clients)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=1 << 20,  # streamed lines up to 2 MiB (long tool-call arguments)
        auto_decompress=True,
        trust_env=False,
    )
    app[HTTP_SESSION] = session
    app[PROVIDERS] = ProviderRegistry.build(app[CONFIG], session)
    yield
    await session.close()


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=[inflight_middleware, request_context_middleware, error_middleware, auth_middleware,
                     budget_middleware],
    )
    app[CONFIG] = config
    app[STREAMS] = StreamTracker()
    app[CALL_HOOKS] = []
    app.cleanup_ctx.append(http_session_ctx)
    for module in SUBSYSTEMS:
        importlib.import_module(module).setup(app)
    return app
