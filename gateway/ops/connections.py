"""Connection limits below the app: header deadline, connection cap, error objects for aiohttp's own answers.

aiohttp's server closes a slow or idle connection only at its keep-alive timeout, silently, even
while a byte trickles in every few seconds (slowloris), and answers a malformed request (a 64 KB
header, 200 headers, a duplicate Host) with plain text. ``GuardedRunner`` serves the app through a
``RequestHandler`` subclass that:

- gives every request ``header_timeout_s`` from its first byte (a fresh connection: from the
  accept) to finish its request line and headers, else answers 408 with an error object and closes;
  the body has its own total deadline where it is read (doors/http.read_json_body);
- refuses a connection past ``max_connections`` open ones at once (503 + Retry-After, closed), so
  the connections already established keep working and the process never runs out of descriptors;
- renders every error aiohttp answers itself as an OpenAI error object (an Anthropic one under
  /v1/messages), with 431 for header lines and header counts over the limits.

``raise_open_file_limit`` lifts the soft RLIMIT_NOFILE to the hard limit at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import LineTooLong

from gateway.errors import body_for_path

log = logging.getLogger("acore.gateway")

HEAD_KEPT = 512  # bytes of a request's head kept to know its path when its headers never complete
FD_RESERVE = 128  # descriptors kept for everything but client connections (workers, logs, files)


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft open-file limit to the hard one (each connection, and each upstream call, holds a
    descriptor; the usual soft 1,024 is spent by a thousand slow clients). Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def connection_cap(configured: int, open_files: int) -> int:
    """Client connections allowed at once: the configured cap, kept below the descriptors there are
    (a proxied request holds two: the client's and the upstream's)."""
    return max(16, min(configured, (open_files - FD_RESERVE) // 2))


def raw_error(status: int, path: str, message: str, code: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection, for use where no request exists."""
    body = orjson.dumps(body_for_path(path, status, message, code))
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def path_of(head: bytes) -> str:
    """The path in a request line (``POST /v1/messages HTTP/1.1``), or ``/`` when there is none yet."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) >= 2 and parts[1].startswith(b"/"):
        return parts[1].split(b"?", 1)[0].decode("latin-1")
    return "/"


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection protocol with a header deadline, the connection cap and JSON errors."""

    # RequestHandler has __slots__; a subclass without them would get a __dict__ per connection.
    __slots__ = ("_guard", "_head", "_header_handle", "_last_payload", "_refused")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head = b""
        self._header_handle: asyncio.TimerHandle | None = None
        self._last_payload: Any = None
        self._refused = False

    # ------------------------------------------------------------------ connection cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            self._refused = True
            guard.refused += 1
            guard.on_refused("max_connections")
            if guard.refused == 1 or guard.refused % 1000 == 0:
                log.warning("refusing new connections: %d open (the limit, max_connections); %d refused so far",
                            guard.open, guard.refused)
            message = f"The server has too many open connections ({guard.open}); try again shortly."
            cast(asyncio.WriteTransport, transport).write(
                raw_error(503, "/", message, "too_many_connections", {"Retry-After": "1"}))
            transport.close()
            return
        guard.open += 1
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._guard.open -= 1
        self._cancel_header_deadline()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ header deadline

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_handle is None and self._between_requests():
            self._arm_header_deadline()  # the first bytes of the next request on a kept-alive connection
        if self._header_handle is not None and len(self._head) < HEAD_KEPT:
            self._head += data[: HEAD_KEPT - len(self._head)]
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._cancel_header_deadline()  # its headers are complete
            if self._messages:
                self._last_payload = self._messages[-1][1]

    def _between_requests(self) -> bool:
        payload = self._last_payload
        return (not self._request_in_progress and self._current_request is None and not self._messages
                and (payload is None or payload.is_eof()))

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._head = b""
        self._header_handle = self._loop.call_later(self._guard.header_timeout_s, self._header_deadline)

    def _cancel_header_deadline(self) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None

    def _header_deadline(self) -> None:
        self._header_handle = None
        transport = self.transport
        if transport is None or transport.is_closing() or not self._between_requests():
            return
        if self._head:  # part of a request came: say why it is cut off (a silent connection just closes)
            self._guard.header_timeouts += 1
            self._guard.on_refused("header_timeout")
            cast(asyncio.WriteTransport, transport).write(raw_error(408, path_of(self._head),
                                      f"The request headers did not arrive within {self._guard.header_timeout_s:g} s.",
                                      "request_timeout"))
        self.force_close()

    # ------------------------------------------------------------------ aiohttp's own error answers

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.log_debug("Bad request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        path = request.path if request.path != "/" or not self._head else path_of(self._head)
        status, text, code = _describe(status, exc, message)
        response = web.Response(status=status, body=orjson.dumps(body_for_path(path, status, text, code)),
                                content_type="application/json")
        response.force_close()
        return response


def _describe(status: int, exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    """Status, message and code for an error aiohttp found; never the offending bytes themselves."""
    text = str(message or exc or "")
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit"
        return 431, f"A request line or header is longer than {limit} bytes.", "request_header_too_large"
    if "Too many headers" in text:
        return 431, "The request has too many header fields.", "request_header_too_large"
    if status == 500:
        return 500, "Internal server error.", "server_error"
    if status == 504:
        return 504, "The request handler timed out.", "timeout"
    return status, f"Malformed HTTP request: {text[:200]}" if text else "Malformed HTTP request.", "bad_request"


def _uncounted(reason: str) -> None:
    pass


class GuardedServer(web_server.Server):
    """aiohttp's connection factory, making ``GuardedHandler``s and counting them."""

    def __init__(self, *args: Any, header_timeout_s: float, max_connections: int,
                 on_refused: Callable[[str], None] = _uncounted, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.on_refused = on_refused  # by reason: max_connections, header_timeout (/metrics)
        self.open = 0
        self.refused = 0
        self.header_timeouts = 0

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a ``GuardedServer`` (same app, handler and keyword arguments)."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, max_connections: int,
                 on_refused: Callable[[str], None] = _uncounted, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._max_connections = max_connections
        self._on_refused = on_refused

    async def _make_server(self) -> web_server.Server:
        plain = await super()._make_server()
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                             header_timeout_s=self._header_timeout_s, max_connections=self._max_connections,
                             on_refused=self._on_refused, **plain._kwargs)

    def open_connections(self) -> int:
        server = self.server
        return server.open if isinstance(server, GuardedServer) else 0
