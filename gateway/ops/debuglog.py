"""The seed's debug logs, under ``--log-dir`` (default ``logs/``) when debug is on.

- ``acore_TIMESTAMP.log``: structured events, one JSON object a line: every ``acore.*`` log record
  at DEBUG and an access entry per request (the seed's ``abstractcore_TIMESTAMP.log``);
- ``YYYYMMDD-payloads.jsonl``: every request body as it arrived, with method, path, query and
  headers (a file per day);
- ``verbatim_TIMESTAMP.jsonl``: each model call's input and output: the request sent to the
  model, the response (a stream: assembled from the chunks the client was sent) and
  ``metadata.tokens.input/output``, so ``jq '.metadata.tokens | .input + .output'`` sums them.

Everything goes through the shared LogWriter (rendered and written in its thread), every file
rotates by size, and every line is redacted twice over (ops/redact.py), with the request's own
keys masked too. In multiprocess mode each process writes files of its own (``_PID`` suffix).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.ops.logs import RedactingJSONFormatter
from gateway.ops.redact import Redactor, redacted_headers
from gateway.ops.stats import Capture, RequestStats
from gateway.ops.writer import FileSink, LogWriter, Sink
from gateway.providers.collect import ChunkCollector


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


class _QueueHandler(logging.Handler):
    """Formats a record where it is logged (its arguments may change later) and queues the line."""

    def __init__(self, writer: LogWriter, sink: Sink, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.writer = writer
        self.sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.put(self.sink, self.format(record))
        except Exception:
            self.handleError(record)


class DebugLogs:
    def __init__(self, writer: LogWriter, directory: Path, redactor: Redactor, max_bytes: int,
                 per_process: bool) -> None:
        self.writer = writer
        self.directory = directory
        self.redactor = redactor
        suffix = f"_{os.getpid()}" if per_process else ""
        stamp = time.strftime("%Y%m%d_%H%M%S")
        self.events = writer.add(FileSink(self._render_event, directory / f"acore_{stamp}{suffix}.log", max_bytes))
        self.verbatim = writer.add(FileSink(self._render, directory / f"verbatim_{stamp}{suffix}.jsonl", max_bytes))
        self.payloads = writer.add(FileSink(
            self._render, lambda: directory / f"{time.strftime('%Y%m%d')}-payloads{suffix}.jsonl", max_bytes))
        self.handler = _QueueHandler(writer, self.events, RedactingJSONFormatter(redactor.secrets))

    def _render(self, record: tuple[dict[str, Any], list[str]]) -> bytes:
        entry, secrets = record
        return self.redactor.json_line(entry, secrets)

    def _render_event(self, record: str | tuple[Any, list[str]]) -> bytes:
        if isinstance(record, str):  # a log record, formatted (and redacted) where it was logged
            return (record + "\n").encode()
        access, secrets = record  # an AccessRecord (ops/observe.py)
        return (self.redactor.text(orjson.dumps(access.entry(), default=str).decode(), secrets) + "\n").encode()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Route every acore.* record at DEBUG into the events file, besides stderr."""
        root = logging.getLogger("acore")
        root.addHandler(self.handler)
        if root.level > logging.DEBUG or root.level == logging.NOTSET:
            root.setLevel(logging.DEBUG)

    def stop(self) -> None:
        logging.getLogger("acore").removeHandler(self.handler)

    # ------------------------------------------------------------------ per request

    def capture(self, request: web.Request) -> Capture:
        """The request's own keys, masked in every line written for it (the patterns miss odd shapes)."""
        secrets = []
        _scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if token.strip():
            secrets.append(token.strip())
        for name in ("X-Provider-API-Key", "x-api-key"):
            if request.headers.get(name):
                secrets.append(request.headers[name])
        return Capture(secrets)

    def payload(self, request: web.Request, raw: bytes, stats: RequestStats) -> None:
        """The body as it arrived, logged as soon as it is read (a request that hangs is still there)."""
        capture = stats.capture
        secrets = capture.secrets if capture is not None else []
        try:
            body: Any = orjson.loads(raw)
        except ValueError:
            body = raw[:100_000].decode("utf-8", "replace")
        if isinstance(body, dict) and isinstance(body.get("api_key"), str) and capture is not None:
            capture.secrets.append(body["api_key"])
        entry = {
            "timestamp": _iso(time.time()),
            "request_id": request.get("request_id"),
            "method": request.method,
            "path": request.path,
            "query": {str(k): str(v) for k, v in request.query.items()} or None,
            "headers": redacted_headers(request.headers),
            "client": request.remote,
            "payload": body,
        }
        self.writer.put(self.payloads, (entry, list(secrets)))

    def event(self, access: Any, secrets: list[str]) -> None:
        """A finished request's access entry (an AccessRecord), into the events file."""
        self.writer.put(self.events, (access, secrets))

    def model_call(self, request: web.Request, log: dict[str, Any], stats: RequestStats, status: int,
                   now: float) -> None:
        """One verbatim line for a request that reached a model (the pipeline filled ``stats.capture``)."""
        capture = stats.capture
        if capture is None or capture.request is None:
            return
        response = capture.response
        if response is None and capture.chunks is not None:
            collector = ChunkCollector()
            for chunk in capture.chunks:
                collector.add(chunk)
            response = collector.result()
        error = log.get("stream_error")
        entry = {
            "timestamp": _iso(time.time()),
            "request_id": request.get("request_id"),
            "endpoint": request.path,
            "provider": log.get("provider"),
            "model": log.get("model"),
            "stream": bool(log.get("stream")),
            "request": capture.request,
            "response": response,
            "metadata": {
                "tokens": {"input": stats.input_tokens or 0, "output": stats.output_tokens or 0,
                           "cached": stats.cached_tokens or 0},
                "latency_ms": round((now - stats.started) * 1000, 2),
                "ttft_ms": round((stats.first_token - stats.started) * 1000, 2) if stats.first_token else None,
                "status": status,
                "success": status < 400 and not error and stats.error_kind is None,
                "error": error or stats.error_kind,
            },
        }
        self.writer.put(self.verbatim, (entry, capture.secrets))

