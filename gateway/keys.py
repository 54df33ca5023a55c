"""The application state every part shares, as typed AppKeys (no module globals).

Subsystems keep their own keys beside their code (the worker pool's ``POOL``, the
state store's ``STATE_STORE``, the hooks' ``CALL_HOOKS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.doors.files import FileStore
    from gateway.doors.media import MediaBackends
    from gateway.doors.sse import StreamTracker
    from gateway.providers.registry import ProviderRegistry

CONFIG: web.AppKey[GatewayConfig] = web.AppKey("config")
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
PROVIDERS: web.AppKey[ProviderRegistry] = web.AppKey("providers")
STREAMS: web.AppKey[StreamTracker] = web.AppKey("streams")
MEDIA_BACKENDS: web.AppKey[MediaBackends] = web.AppKey("media_backends")
FILE_STORE: web.AppKey[FileStore] = web.AppKey("file_store")  # the Files API's store (gateway/doors/files.py)
