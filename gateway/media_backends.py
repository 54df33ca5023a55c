"""Third-party media backends: the ``acore.media_backends`` entry point group.

A package that serves a media route itself (as the seed's abstractvision / abstractvoice do)
declares, in its own pyproject.toml::

    [project.entry-points."acore.media_backends"]
    myvoice = "myvoice.acore:register"

where ``register(backends, config)`` calls ``backends.register("/v1/audio/speech", handler)`` with
an aiohttp handler, for the routes it serves (``gateway.doors.media.MEDIA_ROUTES``). A registered
handler takes its route over the providers. A backend that fails to load is logged and skipped:
it must not keep the gateway from starting.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.keys import CONFIG, MEDIA_BACKENDS

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.doors.media import MediaBackends

log = logging.getLogger("acore.gateway")

GROUP = "acore.media_backends"


def register_entry_point(entry: EntryPoint, backends: MediaBackends, config: GatewayConfig) -> bool:
    """Load one entry point and let it register its handlers; False (logged) if it fails."""
    try:
        register = entry.load()
        register(backends, config)
    except Exception as exc:  # a broken plugin: skipped, never fatal
        log.warning("media backend %s (%s) failed to load: %s: %s", entry.name, entry.value, type(exc).__name__, exc)
        return False
    log.info("media backend %s registered: %s", entry.name, ", ".join(sorted(backends.handlers)) or "no routes")
    return True


def load_entry_points(app: web.Application) -> int:
    """Register every installed ``acore.media_backends`` entry point; returns how many loaded."""
    backends, config = app[MEDIA_BACKENDS], app[CONFIG]
    return sum(register_entry_point(entry, backends, config) for entry in entry_points(group=GROUP))
