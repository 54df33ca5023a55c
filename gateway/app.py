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

from gateway.auth import auth_middleware
from gateway.chat import CALL_HOOKS
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, error_middleware
from gateway.keys import CONFIG, EXTRAS, HTTP_SESSION, MEDIA_BACKENDS, PROVIDERS, STREAMS
from gateway.logs import request_context_middleware
from gateway.plugins import MEDIA_ROUTES, MediaBackends, media_route
from gateway.providers.registry import ProviderRegistry
from gateway.routes import chat, docs, models
from gateway.sse import StreamTracker

# Subsystems that add routes, hooks and cleanup contexts of their own: each module
# has ``setup(app)``. Order matters where one needs another (the pool before routes using it).
SUBSYSTEMS: list[str] = [
    "gateway.pool",
    "gateway.routes.prompt_cache",
    "gateway.routes.embeddings",
    "gateway.base_url_policy",
    "gateway.attachments",
    "gateway.unload",
    "gateway.responses",
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


async def close_streams(app: web.Application) -> None:
    """On shutdown, end open streams at once instead of waiting for the drain timeout."""
    await app[STREAMS].close_all()


async def websocket_responses(request: web.Request) -> web.Response:
    """Codex's built-in provider first tries a WebSocket; answer at once so it falls back to HTTP."""
    raise GatewayError(426, "WebSocket transport is not supported here: POST /v1/responses instead.",
                       code="websocket_not_supported", headers={"Upgrade": "websocket"})


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=[request_context_middleware, error_middleware, auth_middleware],
    )
    app[CONFIG] = config
    app[STREAMS] = StreamTracker()
    app[MEDIA_BACKENDS] = MediaBackends()
    app[CALL_HOOKS] = []
    app[EXTRAS] = {}
    app.cleanup_ctx.append(http_session_ctx)
    app.on_shutdown.append(close_streams)

    app.add_routes(models.routes)
    app.add_routes(chat.routes)
    app.add_routes(docs.routes)
    docs.add_static(app)
    for path in MEDIA_ROUTES:
        app.router.add_post(path, media_route(path))
    app.router.add_get("/v1/responses", websocket_responses)

    for module in SUBSYSTEMS:
        importlib.import_module(module).setup(app)
    return app
