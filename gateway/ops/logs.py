"""Structured JSON request logs with secrets redacted at the sink."""

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

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)(\"?(?:api[_-]?key|x-api-key|authorization)\"?\s*[:=]\s*\"?)[^\s\",}]{4,}"),
]


class RedactingJSONFormatter(logging.Formatter):
    """One JSON object per line; known secrets and key-shaped strings are masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
        return text

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


access_log = logging.getLogger("acore.access")


def new_request_id(headers: Any) -> str:
    """The client's x-request-id when it is a sane one, else a fresh id."""
    given = headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return "req_" + secrets.token_hex(12)


@web.middleware
async def request_context_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Gives every request an id (echoed as x-request-id) and logs one line when it ends."""
    request_id = new_request_id(request.headers)
    request["request_id"] = request_id
    request["log"] = {}
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["x-request-id"] = request_id
        return response
    except asyncio.CancelledError:
        # the client went away (handler cancellation) or the server is stopping: nginx's 499,
        # not a 500 that would read as a gateway fault
        status = 499
        raise
    finally:
        if access_log.isEnabledFor(logging.DEBUG) and request.path != "/health":
            fields = {
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                **request["log"],
            }
            access_log.debug("request", extra={"fields": fields})
