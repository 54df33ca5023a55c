"""What one request did, in one small object: tokens, time to first token, time spent waiting upstream.

The request bracket (ops/logs.py) makes a RequestStats per request and makes it the task's
current one; the pipeline, the providers' I/O helpers and the doors fill it in, and when the
request ends the access log and the metrics read it. A context variable rather than an argument,
because the places that know (an upstream read, a worker failover) sit several calls below any
door, and every request runs in its own task. Outside a request ``current()`` is None and
nothing is recorded.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.ops.observe import Observer

# Here rather than in ops/observe.py: the request bracket (ops/logs.py) needs it, and observe
# imports the log formatters from there.
OBSERVER: web.AppKey[Observer] = web.AppKey("observer")

_CURRENT: ContextVar[RequestStats | None] = ContextVar("acore_request_stats", default=None)

# Our own error codes, each its own kind; an upstream's codes are its own (unbounded), so those
# are classed by status only.
_KINDS = {
    "upstream_timeout": "timeout",
    "upstream_unreachable": "unreachable",
    "upstream_redirect": "redirect",
    "worker_dead": "worker_dead",
    "worker_unavailable": "worker_unavailable",
    "queue_full": "queue_full",
    "no_worker_available": "no_worker",
}


def error_kind(error: GatewayError) -> str:
    """A bounded name for an upstream or worker failure (a metric label)."""
    kind = _KINDS.get(error.code or "")
    if kind is not None:
        return kind
    if error.status == 429:
        return "rate_limited"
    if error.status < 500:
        return "rejected"  # the upstream refused the request (its 4xx, kept for the client)
    return "server_error"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Capture:
    """Debug mode only: what the verbatim log needs of one model call (ops/debuglog.py)."""

    __slots__ = ("chunks", "request", "response", "secrets")

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets  # this request's own keys (Authorization, X-Provider-API-Key): masked in its lines
        self.request: Any = None  # the body sent to the model (the canonical chat request, or a Responses body)
        self.response: Any = None  # the answer, or None for a stream (then ``chunks``)
        self.chunks: list[dict[str, Any]] | None = None  # a stream's chunks, as the door received them


class RequestStats:
    """Filled while a request runs; read once when it ends. Times are ``time.perf_counter()`` values."""

    __slots__ = ("cached_tokens", "capture", "embed_inputs", "error_kind", "first_token", "input_tokens",
                 "output_tokens", "retries", "served_by", "started", "upstream_s")

    def __init__(self, started: float) -> None:
        self.started = started
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.first_token: float | None = None  # when the first content, reasoning or tool-call delta came
        self.upstream_s = 0.0  # waiting on the upstream or the worker (connect, headers, every read)
        self.retries: list[str] | None = None  # reasons, in order (a stale connection, a worker failover)
        self.error_kind: str | None = None  # the upstream's or worker's failure, if any (error_kind())
        self.embed_inputs = 0  # inputs of an embeddings request
        self.capture: Capture | None = None  # debug mode: the verbatim log's material
        self.served_by: tuple[str, str] | None = None  # (provider, model) that answered an alias or fallback list

    def set_usage(self, usage: Any) -> None:
        """Take an OpenAI (prompt/completion_tokens) or Responses (input/output_tokens) usage object.
        The last one seen wins, so a stream's tokens are counted once however often usage repeats."""
        if not isinstance(usage, dict):
            return
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            self.input_tokens = _count(usage.get("prompt_tokens"))
            self.output_tokens = _count(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
        else:
            self.input_tokens = _count(usage.get("input_tokens"))
            self.output_tokens = _count(usage.get("output_tokens"))
            details = usage.get("input_tokens_details")
        self.cached_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else None

    def retried(self, reason: str) -> None:
        if self.retries is None:
            self.retries = []
        self.retries.append(reason)


def current() -> RequestStats | None:
    return _CURRENT.get()


def activate(stats: RequestStats) -> Any:
    """Make ``stats`` the running task's current stats; returns the token for ``deactivate``."""
    return _CURRENT.set(stats)


def deactivate(token: Any) -> None:
    _CURRENT.reset(token)


def note_retry(reason: str) -> None:
    stats = _CURRENT.get()
    if stats is not None:
        stats.retried(reason)


def note_upstream_error(error: GatewayError) -> None:
    """An error raised by the upstream or worker call (not by our own checks before it)."""
    stats = _CURRENT.get()
    if stats is not None and stats.error_kind is None:
        stats.error_kind = error_kind(error)
