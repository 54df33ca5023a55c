"""How both command lines run an app built by create_app: event loop, secrets for the log, run_app."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig
from gateway.ops.connections import GuardedRunner, connection_cap, raise_open_file_limit
from gateway.ops.drain import HURRY
from gateway.ops.logs import setup_logging
from gateway.ops.reload import RELOAD, reload_config
from gateway.ops.stats import OBSERVER
from protocol.endpoints import runtime_dir


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
    return config.secrets()


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """The logging and metrics flags acore-gateway and acore-endpoint share (read by ``log_overrides``)."""
    parser.add_argument("--debug", action="store_true", default=None,
                        help="debug log lines, and the debug logs in --log-dir: every request and model call "
                             "(acore_TIMESTAMP.log, YYYYMMDD-payloads.jsonl, verbatim_TIMESTAMP.jsonl; secrets "
                             "redacted); also ABSTRACTCORE_DEBUG=1")
    parser.add_argument("--log-format", choices=("json", "text"), default=None,
                        help="access log and log lines as JSON objects (default) or text; also ACORE_LOG_FORMAT")
    parser.add_argument("--log-file", metavar="FILE",
                        help="write the access log to FILE (rotated by size) instead of stderr; also ACORE_LOG_FILE")
    parser.add_argument("--log-dir", metavar="DIR",
                        help="with --debug: where acore_TIMESTAMP.log, YYYYMMDD-payloads.jsonl and "
                             "verbatim_TIMESTAMP.jsonl go (default logs/); also ACORE_LOG_DIR")
    parser.add_argument("--no-access-log", action="store_true",
                        help="no access line per request (on by default); also ACORE_ACCESS_LOG=0")
    parser.add_argument("--no-metrics", action="store_true",
                        help="no GET /metrics and nothing recorded for it; also ACORE_METRICS=0")


def log_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from ``add_log_flags``' flags (None: the config file or environment decides)."""
    return {"debug": args.debug, "log_format": args.log_format, "log_file": args.log_file, "log_dir": args.log_dir,
            "access_log": False if args.no_access_log else None, "metrics": False if args.no_metrics else None}


# A request allocates a few hundred container objects: at CPython's default (700) the youngest
# generation is collected every two or three requests. Measured in docs/benchmarks.md.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once the start-up is done: its objects (modules, the app, the config, the providers) move to the
    permanent generation, never scanned again, and the youngest generation is collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, max(middle, 20), max(old, 20))


def front_started(config: GatewayConfig) -> None:
    (runtime_dir(config.port) / f"front-{config.front_index}.started").write_text(str(os.getpid()))


def serve(app: web.Application, config: GatewayConfig, reload: Callable[[], object] | None = None) -> None:
    """Run an app built by create_app until SIGTERM/SIGINT, then stop it gracefully (ops/drain.py).

    Not aiohttp's run_app: the stop drains first, SIGHUP reloads the configuration, a port in use
    is a ConfigError (one line, exit 2) after the start-up already done is undone, and several
    processes may share the port (SO_REUSEPORT, --processes N)."""
    asyncio.run(_serve(app, config, reload))


async def _serve(app: web.Application, config: GatewayConfig, reload: Callable[[], object] | None) -> None:
    loop = asyncio.get_running_loop()
    limits = config.limits
    before, open_files = raise_open_file_limit()
    max_connections = connection_cap(limits.max_connections, open_files)
    # Our own drain waits for in-flight requests; aiohttp then only waits a moment for stragglers.
    observer = app[OBSERVER]  # create_app sets it up first
    runner = GuardedRunner(app, header_timeout_s=limits.header_timeout_s, max_connections=max_connections,
                           on_refused=observer.refused,
                           handler_cancellation=True, access_log=None, shutdown_timeout=1.0,
                           keepalive_timeout=limits.keepalive_timeout_s)
    try:
        await runner.setup()  # start-up: the cleanup contexts (HTTP session, state store, worker pool, ...)
        site = web.TCPSite(runner, config.host, config.port, reuse_port=config.processes > 1, backlog=1024)
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # undo what the start-up did (workers started, sockets bound)
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    except BaseException:
        await runner.cleanup()
        raise
    logging.getLogger("acore.gateway").info(
        "open-file limit %s; up to %d client connections, request headers within %g s, idle keep-alive %g s",
        f"raised from {before} to {open_files}" if open_files > before else f"{open_files}", max_connections,
        limits.header_timeout_s, limits.keepalive_timeout_s)
    observer.open_connections = runner.open_connections
    tune_gc()
    if config.front_index is not None:
        front_started(config)  # tell the parent of a --processes N gateway this front listens
    stop = asyncio.Event()
    signals = {"count": 0}

    def on_stop() -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            app[HURRY]["now"] = True  # a second signal: end open streams without waiting
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # a signal during the drain still means "hurry"
        loop.add_signal_handler(signal.SIGTERM, on_stop)
        loop.add_signal_handler(signal.SIGINT, on_stop)
        await runner.cleanup()


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
    app[RELOAD] = build_config
    try:
        serve(app, config, lambda: reload_config(app))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
