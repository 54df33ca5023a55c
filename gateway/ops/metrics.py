"""Prometheus metrics: what each request did (recorded when it ends) and the worker pool (read at scrape time).

Request metrics are prometheus-client counters and histograms. With PROMETHEUS_MULTIPROC_DIR set
(several front processes, ``--processes N``) prometheus-client keeps them in mmap files in that
directory and /metrics serves the sum over every process (``MultiProcessCollector``); the
in-flight gauge is then summed over live processes (``livesum``). Worker gauges are not stored:
a collector reads the pool when /metrics is scraped, so a worker that is gone leaves no stale
series. In multiprocess mode they are the pool as the process answering the scrape sees it
(every front sees every worker; ``acore_worker_requests`` counts that process's own requests).

Label values are bounded so that no client can create series at will: routes are the router's
patterns ("other" for unknown paths); providers are registered ones (an unknown provider is a
404 before any label is made); a model becomes a label value only once its provider has
answered a request for it, and at most MAX_MODELS_PER_PROVIDER per provider; every other model
(an attacker's random names, an upstream's 404s) is "other".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.ops.stats import RequestStats
from protocol.local import listed_under

OTHER = "other"
MAX_MODELS_PER_PROVIDER = 50
# The classic text format (0.0.4): every Prometheus version and agent reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

# Counters get no _created series: it would double the series count for a timestamp nobody graphs.
prometheus_client.disable_created_metrics()


class ModelLabels:
    """The label value of a (provider, model): the model once its provider served it, else "other"."""

    def __init__(self, limit: int = MAX_MODELS_PER_PROVIDER) -> None:
        self.limit = limit
        self._known: dict[str, set[str]] = {}

    def label(self, provider: str, model: str, served: bool) -> str:
        known = self._known.get(provider)
        if known is not None and model in known:
            return model
        if not served or not model:
            return OTHER if model else ""
        if known is None:
            known = self._known[provider] = set()
        if len(known) >= self.limit:
            return OTHER
        known.add(model)
        return model


class _Route:
    """The children of one (route, provider, model, status): one dict lookup per request, not six."""

    __slots__ = ("duration", "overhead", "requests")

    def __init__(self, metrics: RequestMetrics, route: str, provider: str, model: str, status: str) -> None:
        self.requests = metrics.requests.labels(route, provider, model, status)
        self.duration = metrics.duration.labels(route, provider, model)
        self.overhead = metrics.overhead.labels(route)


class _Model:
    """The children of one (provider, model), each made on first use (a series appears only once it has
    something to say: no empty time-to-first-token histogram for an embeddings model)."""

    __slots__ = ("_children", "_metrics", "_model", "_provider", "input", "output")

    def __init__(self, metrics: RequestMetrics, provider: str, model: str) -> None:
        self._metrics, self._provider, self._model = metrics, provider, model
        self._children: dict[str, Any] = {}
        # every request that reaches a model has these two: bound once, not looked up each time
        self.input = metrics.tokens.labels(provider, model, "input")
        self.output = metrics.tokens.labels(provider, model, "output")

    def child(self, name: str) -> Any:
        child = self._children.get(name)
        if child is None:
            metrics, provider, model = self._metrics, self._provider, self._model
            if name == "cached":
                child = metrics.tokens.labels(provider, model, name)
            else:
                child = getattr(metrics, name).labels(provider, model)
            self._children[name] = child
        return child


class RequestMetrics:
    """The request-side metrics and how one finished request updates them."""

    def __init__(self, multiprocess: bool) -> None:
        self.multiprocess = multiprocess
        # Single process: our own registry (several apps may live in one test process). Multiprocess:
        # the values live in the mmap files, and a fresh registry reads them at each scrape.
        registry = None if multiprocess else CollectorRegistry(auto_describe=False)
        self.registry = registry
        self.requests = Counter("acore_requests", "HTTP requests by route, provider, model and status.",
                                ["route", "provider", "model", "status"], registry=registry)
        self.duration = Histogram("acore_request_duration_seconds", "Total request time (a stream: until it ends).",
                                  ["route", "provider", "model"], buckets=DURATION_BUCKETS, registry=registry)
        self.ttft = Histogram("acore_time_to_first_token_seconds",
                              "Streams: time from the request to the first content, reasoning or tool-call delta.",
                              ["provider", "model"], buckets=TTFT_BUCKETS, registry=registry)
        self.overhead = Histogram("acore_gateway_overhead_seconds",
                                  "Request time not spent waiting on the upstream or worker: the gateway's own.",
                                  ["route"], buckets=OVERHEAD_BUCKETS, registry=registry)
        self.tokens = Counter("acore_tokens", "Tokens by provider, model and kind (input, output, cached input).",
                              ["provider", "model", "kind"], registry=registry)
        self.errors = Counter("acore_upstream_errors", "Failures of the upstream or worker call, by kind.",
                              ["provider", "kind"], registry=registry)
        self.retries = Counter("acore_retries", "Upstream calls sent again: a stale keep-alive connection, or "
                               "a worker that died before answering (worker_failover).",
                               ["provider", "reason"], registry=registry)
        self.cache_hits = Counter("acore_prompt_cache_hits", "Requests whose prompt was partly served from a cache.",
                                  ["provider", "model"], registry=registry)
        self.cache_saved = Counter("acore_prompt_cache_tokens_saved", "Input tokens served from a prompt cache.",
                                   ["provider", "model"], registry=registry)
        self.refused = Counter("acore_refused", "Connections and requests refused before a handler ran, by reason: "
                               "max_connections (503 at accept), header_timeout (408), memory_budget (503).",
                               ["reason"], registry=registry)
        self.batch = Histogram("acore_embedding_batch_size", "Inputs per embeddings request.",
                               ["provider", "model"], buckets=BATCH_BUCKETS, registry=registry)
        # Multiprocess: a gauge in the mmap files, summed over live processes. One process: the
        # collector reads the request bracket's own counter (no lock per request).
        self.in_flight_gauge = (Gauge("acore_in_flight_requests", "Requests being handled.",
                                      multiprocess_mode="livesum", registry=None) if multiprocess else None)
        self.models = ModelLabels()
        self.live: LiveCollector | None = None
        self._routes: dict[tuple[str, str, str, int], _Route] = {}
        self._models: dict[tuple[str, str], _Model] = {}

    def attach(self, live: LiveCollector) -> None:
        """The scrape-time collector; in one process it joins our registry for good."""
        self.live = live
        if self.registry is not None:
            self.registry.register(live)

    def exposition(self) -> bytes:
        assert self.live is not None
        return exposition(self, self.live)

    def record(self, route: str, provider: str, model: str, status: int, stats: RequestStats, now: float) -> None:
        label = self.models.label(provider, model, status < 400) if provider else ""
        key = (route, provider, label, status)
        series = self._routes.get(key)
        if series is None:
            series = self._routes[key] = _Route(self, route, provider, label, str(status))
        elapsed = now - stats.started
        series.requests.inc()
        series.duration.observe(elapsed)
        series.overhead.observe(max(0.0, elapsed - stats.upstream_s))
        if not provider:
            return
        if stats.error_kind is not None:
            self.errors.labels(provider, stats.error_kind).inc()
        if stats.retries:
            for reason in stats.retries:
                self.retries.labels(provider, reason).inc()
        if (stats.input_tokens is None and stats.output_tokens is None and stats.first_token is None
                and not stats.embed_inputs):
            return
        per_model = self._models.get((provider, label))
        if per_model is None:
            per_model = self._models[(provider, label)] = _Model(self, provider, label)
        if stats.input_tokens:
            per_model.input.inc(stats.input_tokens)
        if stats.output_tokens:
            per_model.output.inc(stats.output_tokens)
        if stats.cached_tokens:
            per_model.child("cached").inc(stats.cached_tokens)
            per_model.child("cache_hits").inc()
            per_model.child("cache_saved").inc(stats.cached_tokens)
        if stats.first_token is not None:
            per_model.child("ttft").observe(stats.first_token - stats.started)
        if stats.embed_inputs:
            per_model.child("batch").observe(stats.embed_inputs)


class LiveCollector(Collector):
    """Read at scrape time: the worker pool, the in-flight count and the log writer's drops."""

    def __init__(self, read: Callable[[], LiveState]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        labels = ["worker", "provider", "model"]
        up = GaugeMetricFamily("acore_worker_up", "1 while the worker is connected and answering heartbeats.",
                               labels=labels)
        active = GaugeMetricFamily("acore_worker_active", "Generations running in the worker (its own report, "
                                   "every heartbeat).", labels=labels)
        queued = GaugeMetricFamily("acore_worker_queued", "Requests queued inside the worker (its own report).",
                                   labels=labels)
        requests = GaugeMetricFamily("acore_worker_requests", "This gateway process's requests on the worker.",
                                     labels=labels)
        rtt = GaugeMetricFamily("acore_worker_heartbeat_rtt_seconds", "Last heartbeat round trip to the worker.",
                                labels=labels)
        for worker in state.workers:
            values = [worker.id, listed_under(worker.ready.provider), worker.ready.model]
            up.add_metric(values, 1.0 if worker.alive else 0.0)
            active.add_metric(values, float(worker.reported_active))
            queued.add_metric(values, float(worker.reported_queued))
            requests.add_metric(values, float(len(worker.requests)))
            if worker.rtt_ms is not None:
                rtt.add_metric(values, worker.rtt_ms / 1000)
        yield from (up, active, queued, requests, rtt)
        if state.restarts is not None:
            yield CounterMetricFamily("acore_worker_restarts", "Supervised worker processes restarted.",
                                      value=state.restarts)
        yield CounterMetricFamily("acore_worker_dropped_frames", "Worker messages dropped as malformed.",
                                  value=state.dropped_frames)
        yield CounterMetricFamily("acore_log_dropped", "Log records dropped because the log writer fell behind.",
                                  value=state.log_dropped)
        if state.in_flight is not None:
            yield GaugeMetricFamily("acore_in_flight_requests", "Requests being handled.", value=state.in_flight)
        if state.open_connections is not None:
            yield GaugeMetricFamily("acore_open_connections", "Client connections open now.",
                                    value=state.open_connections)
        if state.inflight_bytes is not None:
            yield GaugeMetricFamily("acore_inflight_request_bytes", "Request bytes held now, against the memory "
                                    "budget (max_inflight_bytes).", value=state.inflight_bytes)
        if state.groups:
            circuit = GaugeMetricFamily("acore_route_circuit_open", "1 while a group target's circuit breaker "
                                        "is open (skipped), 0.5 while half-open (one probe may go).",
                                        labels=["group", "target"])
            failures = GaugeMetricFamily("acore_route_consecutive_failures", "A group target's failures since "
                                         "its last success.", labels=["group", "target"])
            for group in state.groups:
                for target in group["targets"]:
                    values = [group["name"], target["target"]]
                    circuit.add_metric(values, {"open": 1.0, "half-open": 0.5}.get(target["circuit"], 0.0))
                    failures.add_metric(values, float(target["consecutive_failures"]))
            yield from (circuit, failures)


class LiveState:
    """What LiveCollector shows; made by the observer at each scrape."""

    __slots__ = ("dropped_frames", "groups", "in_flight", "inflight_bytes", "log_dropped", "open_connections",
                 "restarts", "workers")

    def __init__(self, workers: list[Any], restarts: int | None, dropped_frames: int, log_dropped: int,
                 in_flight: int | None, groups: list[dict[str, Any]] | None = None,
                 open_connections: int | None = None, inflight_bytes: int | None = None) -> None:
        # None where the value is this process's own and several fronts answer scrapes (--processes N)
        self.open_connections = open_connections
        self.inflight_bytes = inflight_bytes
        self.groups = groups or []  # Router.view(): each alias's targets and their circuits
        self.workers = workers
        self.restarts = restarts
        self.dropped_frames = dropped_frames
        self.log_dropped = log_dropped
        self.in_flight = in_flight


def exposition(metrics: RequestMetrics, live: LiveCollector) -> bytes:
    """The Prometheus text format of every metric (summed over processes in multiprocess mode)."""
    if metrics.registry is not None:
        return prometheus_client.generate_latest(metrics.registry)
    # Multiprocess: a fresh registry per scrape reads every process's files (prometheus-client's recipe).
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    registry.register(live)
    return prometheus_client.generate_latest(registry)
