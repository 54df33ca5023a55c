"""Gateway authentication: a key (Bearer or x-api-key) on every route but /health when one is configured.

/metrics also takes ACORE_METRICS_KEY, and needs it when no gateway key is set."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import CONFIG

OPEN_PATHS = frozenset({"/health", "/health/ready"})
METRICS_PATH = "/metrics"


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    config = request.app[CONFIG]
    keys = config.auth_keys
    if config.metrics_key and request.path == METRICS_PATH:
        keys = (*keys, config.metrics_key)  # a scraper may hold a key of its own (ACORE_METRICS_KEY)
    if keys and request.path not in OPEN_PATHS and request.method != "OPTIONS":
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        tokens = [token.strip()] if scheme.lower() == "bearer" else []
        # Anthropic's clients (Claude Code, the SDKs) send their key as x-api-key: the same gateway key.
        if "x-api-key" in request.headers:
            tokens.append(request.headers["x-api-key"].strip())
        # compare_digest against every configured key, without stopping early
        valid = False
        for candidate in tokens:
            for key in keys:
                valid |= hmac.compare_digest(candidate.encode(), key.encode())
        if not valid:
            raise GatewayError(
                401,
                "Invalid or missing gateway API key: send Authorization: Bearer <ACORE_API_KEY> (or x-api-key).",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)
