"""Every piece of application state, as typed AppKeys (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.plugins import MediaBackends
    from gateway.providers.registry import ProviderRegistry
    from gateway.sse import StreamTracker

CONFIG: web.AppKey[GatewayConfig] = web.AppKey("config")
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
PROVIDERS: web.AppKey[ProviderRegistry] = web.AppKey("providers")
STREAMS: web.AppKey[StreamTracker] = web.AppKey("streams")
MEDIA_BACKENDS: web.AppKey[MediaBackends] = web.AppKey("media_backends")
# Extension slots filled by later subsystems (worker pool, response store, ...).
EXTRAS = web.AppKey("extras", dict[str, Any])
