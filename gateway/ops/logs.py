"""Log lines as JSON with secrets redacted at the sink, and the request bracket (id, stats, access line)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from gateway.ops.stats import OBSERVER, RequestStats, activate, deactivate

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)(\"?(?:api[_-]?key|x-api-key|x-provider-api-key|authorization|access[_-]?token)\"?\s*[:=]\s*\"?)"
               r"[^\s\",}&]{4,}"),
    # vendor token shapes the sk- rule misses: Google, GitHub, Hugging Face, Slack, AWS access key ids
    re.compile(r"\b(AIza)[0-9A-Za-z_-]{30,}"),
    re.compile(r"\b(gh[pousr]_)[A-Za-z0-9]{30,}"),
    re.compile(r"\b(hf_)[A-Za-z0-9]{30,}"),
    re.compile(r"\b(xox[abprs]-)[A-Za-z0-9-]{10,}"),
    re.compile(r"\b(AKIA)[0-9A-Z]{16}\b"),
]
# What each pattern cannot match without (searched in the lower-cased text where the pattern ignores
# case): a substring test costs ~0.1 µs, a regex scan of an access line 7-50 µs, and most lines hold
# no key at all.
_GUARDS: list[tuple[bool, tuple[str, ...]]] = [
    (True, ("bearer",)),
    (False, ("sk-",)),
    (True, ("api_key", "api-key", "apikey", "authorization", "access_token", "access-token", "accesstoken")),
    (False, ("AIza",)),
    (False, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    (False, ("hf_",)),
    (False, ("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-")),
    (False, ("AKIA",)),
]


_SHAPES = list(zip(_SECRET_PATTERNS, *zip(*_GUARDS, strict=True), strict=True))


# At least one of these is in the lower-cased text of anything a pattern matches: one pass over
# these ten decides that most lines need no pattern at all.
_ANY_SHAPE = ("bearer", "sk-", "api", "authorization", "access", "aiza", "gh", "hf_", "xox", "akia")


def might_hold_key(lower: str) -> bool:
    """False when no _SECRET_PATTERNS can match ``lower`` (a lower-cased text)."""
    for needle in _ANY_SHAPE:
        if needle in lower:
            return True
    return False


def mask_key_shapes(text: str, mask: str = "[REDACTED]", lower: str | None = None) -> str:
    """Mask every key-shaped string (_SECRET_PATTERNS), scanning only for the shapes that can occur.
    Plain loops: this runs for every access line, where generator expressions cost more than the tests."""
    if lower is None:
        lower = text.lower()
        if not might_hold_key(lower):
            return text
    for pattern, folded, needles in _SHAPES:
        haystack = lower if folded else text
        for needle in needles:
            if needle in haystack:
                text = pattern.sub(lambda m: m.group(1) + mask, text)
                break
    return text


class RedactingJSONFormatter(logging.Formatter):
    """One JSON object per line; known secrets and key-shaped strings are masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these too from now on (keys from a reloaded configuration); known ones stay masked."""
        self._secrets = sorted({*self._secrets, *(s for s in secrets if s and len(s) >= 4)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return mask_key_shapes(text)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact(orjson.dumps(entry, default=str).decode())


def setup_logging(debug: bool, secrets: Iterable[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingJSONFormatter(secrets))
    root = logging.getLogger("acore")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def refresh_secrets(secrets: Iterable[str]) -> None:
    """A reloaded configuration's keys are masked by every acore log handler as well."""
    wanted = list(secrets)
    for handler in logging.getLogger("acore").handlers:
        formatter = handler.formatter
        if isinstance(formatter, RedactingJSONFormatter):
            formatter.add_secrets(wanted)


def new_request_id(headers: Any) -> str:
    """The client's x-request-id when it is a sane one, else a fresh id."""
    given = headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return "req_" + secrets.token_hex(12)


@web.middleware
async def request_context_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every request's bracket: an id (echoed as x-request-id), its RequestStats (the task's current
    ones while it runs), a Server-Timing header, and when it ends one access line and its metrics
    (ops/observe.py)."""
    request_id = new_request_id(request.headers)
    request["request_id"] = request_id
    request["log"] = {}
    stats = RequestStats(time.perf_counter())
    token = activate(stats)
    observer = request.app.get(OBSERVER)
    if observer is not None:
        observer.begin(request, stats)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            headers = response.headers
            headers["x-request-id"] = request_id
            if "Server-Timing" not in headers:
                headers["Server-Timing"] = server_timing(stats, time.perf_counter())
        return response
    except asyncio.CancelledError:
        # the client went away (handler cancellation) or the server is stopping: nginx's 499,
        # not a 500 that would read as a gateway fault
        status = 499
        raise
    finally:
        deactivate(token)
        if observer is not None:
            try:
                observer.finish(request, status, stats, time.perf_counter())
            except Exception:  # accounting must never fail a request that was served
                logging.getLogger("acore.gateway").exception("recording request %s failed", request_id)


def server_timing(stats: RequestStats, now: float) -> str:
    """``upstream;dur=MS, gateway;dur=MS`` so far: time waiting on the upstream or worker, and the rest."""
    upstream = stats.upstream_s * 1000
    gateway = max(0.0, (now - stats.started) * 1000 - upstream)
    return f"upstream;dur={upstream:.1f}, gateway;dur={gateway:.1f}"
