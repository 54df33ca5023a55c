"""How both command lines run an app built by create_app: event loop, secrets for the log, run_app."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Callable

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig
from gateway.ops.logs import setup_logging


def install_event_loop(choice: str) -> str:
    """Use uvloop when available: its C transports halve the gateway's CPU per request and per
    streamed chunk (see docs/benchmarks.md). ``--loop asyncio`` keeps the standard loop."""
    if choice == "asyncio" or (choice == "auto" and importlib.util.find_spec("uvloop") is None):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        print("acore-gateway: --loop uvloop needs the uvloop package (pip install uvloop)", file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def config_secrets(config: GatewayConfig) -> list[str]:
    """Every key the configuration holds: the log formatter masks them wherever they appear."""
    secrets = [*config.auth_keys]
    for settings in config.providers.values():
        secrets.append(settings.api_key or "")
        secrets.append(config.env_value(settings.api_key_env) or "")
    return secrets


def serve(app: web.Application, config: GatewayConfig) -> None:
    """Run an app built by create_app with the gateway's shutdown and cancellation settings."""
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        shutdown_timeout=config.limits.shutdown_timeout_s,
        handler_cancellation=True,  # a client that goes away cancels its upstream work at once
        access_log=None,
        print=lambda text: print(text, file=sys.stderr, flush=True),
    )


def run(prog: str, loop: str, build_config: Callable[[], GatewayConfig],
        build_app: Callable[[GatewayConfig], web.Application], banner: Callable[[GatewayConfig, str], str]) -> None:
    """A command line's life: event loop, configuration (a ConfigError is one line and exit 2), logging, serve."""
    loop_name = install_event_loop(loop)
    try:
        config = build_config()
        setup_logging(config.debug, config_secrets(config))
        app = build_app(config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger("acore.gateway").info("%s", banner(config, loop_name))
    serve(app, config)
