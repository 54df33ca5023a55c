"""What an operator sees: the access log, ``GET /metrics``, the Server-Timing header and the debug logs.

``setup(app)`` adds the /metrics route and a cleanup context that starts the log writer thread
(and, with debug on, the seed's log files under ``--log-dir``). The request bracket
(ops/logs.py) calls ``begin`` and ``finish`` around every request; ``finish`` reads the
request's RequestStats once and turns it into an access line, metric updates and, in debug
mode, a verbatim entry.

Switches (for the benchmark and for operators who ship logs elsewhere): ``--no-access-log`` /
``ACORE_ACCESS_LOG=0`` and ``--no-metrics`` / ``ACORE_METRICS=0`` (no /metrics route, nothing
recorded). Health probes (``/health*``) get no access line: a balancer polling every second
would bury the traffic; they are still counted in ``acore_requests_total``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.keys import CONFIG
from gateway.ops.auth import METRICS_PATH
from gateway.ops.debuglog import DebugLogs
from gateway.ops.limits import BUDGET
from gateway.ops.logs import RedactingJSONFormatter, mask_key_shapes, might_hold_key
from gateway.ops.metrics import CONTENT_TYPE, LiveCollector, LiveState, RequestMetrics
from gateway.ops.redact import RedactingTextFormatter, Redactor, text_line
from gateway.ops.stats import OBSERVER, RequestStats
from gateway.ops.writer import FileSink, LogWriter, Sink, StreamSink
from gateway.pipeline.routing import ROUTER
from gateway.pool import POOL

log = logging.getLogger("acore.gateway")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_ACCESS_LEAD = ("request_id", "method", "path", "status")


def known_secrets(config: GatewayConfig) -> list[str]:
    """Every key the configuration holds (gateway, metrics and provider keys): masked wherever they appear."""
    secrets = [*config.auth_keys, config.metrics_key or ""]
    for settings in config.providers.values():
        secrets.append(settings.api_key or "")
        secrets.append(config.env_value(settings.api_key_env) or "")
    return [s for s in secrets if s]


def route_of(request: web.Request) -> str:
    """The router's pattern ("/v1/responses/{response_id}"), never the raw path: a bounded label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


class AccessRecord:
    """One finished request, as handed to the writer thread (nothing in it changes any more)."""

    __slots__ = ("client", "fields", "method", "now", "path", "request_id", "stats", "status", "wall")

    def __init__(self, request_id: str | None, method: str, path: str, status: int, fields: dict[str, Any],
                 stats: RequestStats, now: float, wall: float, client: str | None) -> None:
        self.request_id, self.method, self.path, self.status = request_id, method, path, status
        self.fields, self.stats, self.now, self.wall, self.client = fields, stats, now, wall, client

    def entry(self) -> dict[str, Any]:
        stats = self.stats
        entry: dict[str, Any] = {
            "ts": round(self.wall, 3),
            "level": "info",
            "logger": "acore.access",
            "msg": "request",
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            **self.fields,
            "tokens_in": stats.input_tokens,
            "tokens_out": stats.output_tokens,
            "tokens_cached": stats.cached_tokens,
            "ttft_ms": _ms(stats.first_token - stats.started) if stats.first_token is not None else None,
            "duration_ms": _ms(self.now - stats.started),
            "upstream_ms": _ms(stats.upstream_s),
            "client": self.client,
        }
        if stats.retries:
            entry["retries"] = len(stats.retries)
        if stats.error_kind is not None:
            entry["upstream_error"] = stats.error_kind
        return entry

    def client_text(self) -> str:
        """Everything in the line that a client or an upstream chose."""
        parts = [self.request_id or "", self.path]
        for value in self.fields.values():
            if isinstance(value, str):
                parts.append(value)
        return "\n".join(parts)


class Observer:
    """The per-app observability state, behind OBSERVER."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.redactor = Redactor(known_secrets(config))
        self.writer = LogWriter()
        self.multiprocess = bool(config.env.get(MULTIPROC_ENV))
        self.metrics = RequestMetrics(self.multiprocess) if config.metrics else None
        self.access: Sink | None = None
        if config.access_log:
            render = self._render_text if config.log_format == "text" else self._render_json
            sink: Sink = (FileSink(render, Path(config.log_file).expanduser(), config.log_max_bytes)
                          if config.log_file else StreamSink(render))
            self.access = self.writer.add(sink)
        self.debug: DebugLogs | None = None
        if config.debug:
            self.debug = DebugLogs(self.writer, Path(config.log_dir).expanduser().absolute(), self.redactor,
                                   config.log_max_bytes, self.multiprocess)
        self.in_flight = 0
        self.app: web.Application | None = None
        self.open_connections: Callable[[], int] | None = None  # set by the server that serves the app (cli/serve.py)

    def refused(self, reason: str) -> None:
        """A connection or request refused before any handler ran (acore_refused_total)."""
        if self.metrics is not None:
            self.metrics.refused.labels(reason).inc()

    # ------------------------------------------------------------------ rendering (in the writer thread)

    def _render_json(self, record: AccessRecord) -> bytes:
        return (self._mask(orjson.dumps(record.entry(), default=str).decode(), record) + "\n").encode()

    def _render_text(self, record: AccessRecord) -> bytes:
        return (self._mask(text_line(record.entry(), _ACCESS_LEAD), record) + "\n").encode()

    def _mask(self, line: str, record: AccessRecord) -> str:
        """Redaction of an access line: configured keys anywhere; key shapes searched for only when the
        parts a client or an upstream wrote (id, path, model, error...) could hold one."""
        probe = record.client_text().lower()
        if might_hold_key(probe):
            line = mask_key_shapes(line, lower=line.lower())
        return self.redactor.known(line)

    # ------------------------------------------------------------------ per request (event loop)

    def begin(self, request: web.Request, stats: RequestStats) -> None:
        self.in_flight += 1
        gauge = self.metrics.in_flight_gauge if self.metrics is not None else None
        if gauge is not None:
            gauge.inc()
        if self.debug is not None:
            stats.capture = self.debug.capture(request)

    def payload(self, request: web.Request, raw: bytes, stats: RequestStats) -> None:
        """A request body as read (doors/http.read_json_body), for the debug payload log."""
        if self.debug is not None:
            self.debug.payload(request, raw, stats)

    def finish(self, request: web.Request, status: int, stats: RequestStats, now: float) -> None:
        self.in_flight -= 1
        config = request.app[CONFIG]
        if config is not self.config:  # reloaded (SIGHUP): its keys are masked too from now on
            self.config = config
            self.redactor.add_secrets(known_secrets(config))
        log_fields: dict[str, Any] = request.get("log") or {}
        if stats.served_by is not None:  # an alias or fallback list: the target that answered is counted
            log_fields = {**log_fields, "provider": stats.served_by[0], "model": stats.served_by[1]}
        metrics = self.metrics
        if metrics is not None:
            if metrics.in_flight_gauge is not None:
                metrics.in_flight_gauge.dec()
            metrics.record(route_of(request), log_fields.get("provider") or "", log_fields.get("model") or "",
                           status, stats, now)
        path = request.path
        if (self.access is None and self.debug is None) or path.startswith("/health"):
            return
        # Only what is at hand is taken here; the line is built, rounded and redacted in the writer thread.
        record = AccessRecord(request.get("request_id"), request.method, path, status, log_fields, stats, now,
                              time.time(), request.remote)
        if self.access is not None:
            self.writer.put(self.access, record)
        debug = self.debug
        if debug is not None and stats.capture is not None:
            debug.event(record, stats.capture.secrets)
            debug.model_call(request, log_fields, stats, status, now)

    # ------------------------------------------------------------------ scrape

    def live_state(self) -> LiveState:
        workers: list[Any] = []
        restarts: int | None = None
        dropped = 0
        state = self.app.get(POOL) if self.app is not None else None
        if state is not None:
            workers = list(state.pool.scheduler.workers.values())
            restarts = state.restarts()
            dropped = state.pool.dropped_frames
        groups: list[dict[str, Any]] = []
        router = self.app.get(ROUTER) if self.app is not None else None
        if router is not None and self.app is not None and self.app[CONFIG].models:
            groups = router.view(self.app[CONFIG].models)
        own = not self.multiprocess  # several fronts: a gauge of this process alone would mislead
        budget = self.app.get(BUDGET) if self.app is not None else None
        return LiveState(workers, restarts, dropped, self.writer.dropped, self.in_flight if own else None, groups,
                         self.open_connections() if own and self.open_connections is not None else None,
                         budget.held if own and budget is not None else None)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[OBSERVER].metrics
    assert metrics is not None  # the route exists only with metrics on
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


def _swap_formatters(observer: Observer) -> list[tuple[logging.Handler, logging.Formatter | None]]:
    """The stderr handler setup_logging made: the chosen format, and every configured secret masked
    (the metrics key included). Returns what to restore."""
    restore: list[tuple[logging.Handler, logging.Formatter | None]] = []
    config = observer.config
    for handler in logging.getLogger("acore").handlers:
        if isinstance(handler.formatter, RedactingJSONFormatter):
            restore.append((handler, handler.formatter))
            kind = RedactingTextFormatter if config.log_format == "text" else RedactingJSONFormatter
            handler.setFormatter(kind(observer.redactor.secrets))
    return restore


async def observe_ctx(app: web.Application) -> AsyncIterator[None]:
    observer = app[OBSERVER]
    observer.app = app
    restore = _swap_formatters(observer)
    if observer.debug is not None:
        observer.debug.start()
        log.info("debug logs in %s", observer.debug.directory)
    observer.writer.start()
    try:
        yield
    finally:
        if observer.debug is not None:
            observer.debug.stop()
        observer.writer.stop()
        for handler, formatter in restore:
            handler.setFormatter(formatter)


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    observer = Observer(config)
    app[OBSERVER] = observer
    if observer.metrics is not None:
        observer.metrics.attach(LiveCollector(observer.live_state))
        app.router.add_get(METRICS_PATH, metrics_handler)
    app.cleanup_ctx.append(observe_ctx)
