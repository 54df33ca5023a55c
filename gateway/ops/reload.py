"""SIGHUP: read the configuration again without dropping a connection; a bad file changes nothing.

What can change while serving changes at once: providers (URLs, keys), the gateway keys, the
base_url allowlist, default provider and model, worker keys written in the config file (the
authorized/ directory is re-read anyway) and model aliases and groups. What is bound at
start (host, port, processes, the worker socket, the supervised workers, limits, media roots)
keeps its value, and the log says which of those the new file would change.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig
from gateway.keys import CONFIG, HTTP_SESSION, PROVIDERS
from gateway.ops.logs import refresh_secrets
from protocol.curve import KeyFileError, parse_public

log = logging.getLogger("acore.gateway")

RELOAD: web.AppKey[Callable[[], GatewayConfig]] = web.AppKey("reload_config")
# Fields read once at start: a new value needs a restart.
BOUND_AT_START = ("host", "port", "processes", "worker_bind", "worker_keys", "workers", "default_embeddings",
                  "limits", "media", "cache_aware_routing", "redis_url")


def reload_config(app: web.Application) -> bool:
    """Apply the configuration ``app[RELOAD]`` builds now; False (and the old one kept) when it is bad."""
    build = app.get(RELOAD)
    if build is None:
        log.warning("SIGHUP: this server has no configuration to reload")
        return False
    old = app[CONFIG]
    try:
        new = build()
        app[PROVIDERS].check_groups(new)
        inline = [parse_public(text) for text in new.authorized_worker_keys]
    except (ConfigError, KeyFileError) as exc:
        log.error("SIGHUP: the configuration was not reloaded, the old one stays: %s", exc)
        return False
    restart = [name for name in BOUND_AT_START if getattr(old, name) != getattr(new, name)]
    with warnings.catch_warnings():
        # aiohttp warns when a started app's state changes; this key is read per request, by design.
        warnings.simplefilter("ignore", DeprecationWarning)
        app[CONFIG] = new
    app[PROVIDERS].reload(new, app[HTTP_SESSION])
    from gateway.pool import WORKER_AUTH  # the pool imports this module's package: import at use

    auth = app.get(WORKER_AUTH)
    if auth is not None:
        auth.ring.inline = {key: "config file" for key in inline}
        auth.ring.reload(force=True)
    refresh_secrets(new.secrets())
    log.info("SIGHUP: configuration reloaded (%d providers)%s", len(app[PROVIDERS].names()),
             f"; these take effect after a restart: {', '.join(restart)}" if restart else "")
    return True
