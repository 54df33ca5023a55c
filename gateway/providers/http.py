"""Shared HTTP plumbing for providers: one request helper, error mapping, stream readers.

Every upstream call goes through ``open_upstream``: no redirects (a redirect could
carry a key elsewhere), bounded time to the first byte, one retry only when the
request certainly never left (a pooled connection found closing before a byte was
written; a POST the upstream may have read is never sent twice: double billing), and
upstream failures mapped to OpenAI errors that name the provider. An error body from
a client-chosen URL is shown only when it is a structured API error: anything else
(a loopback service's error page) could carry that service's secrets to the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import orjson

from gateway.config import Limits
from gateway.errors import GatewayError, error_type
from gateway.ops.stats import current, note_retry
from gateway.providers.base import ProviderState, ProviderStatus
from gateway.providers.upstream import Upstream, UpstreamSettings, probe

# A provider's own reading of an HTTP error (Anthropic's 529, Ollama's 404); None: the generic one.
ErrorMapper = Callable[[int, bytes, Mapping[str, str]], "GatewayError | None"]


def upstream_error(provider: str, status: int, payload: bytes, headers: Mapping[str, str]) -> GatewayError:
    """Map an upstream HTTP error to the client's error, keeping 4xx status and message."""
    message, err_type, param, code = parse_error_payload(payload)
    keep = {k: headers[k] for k in ("Retry-After", "retry-after-ms") if k in headers}
    if status in (429, 503):
        keep.setdefault("Retry-After", "1")
    if 400 <= status < 500:
        return GatewayError(
            status,
            message or f"{provider} rejected the request (HTTP {status}).",
            type=err_type or error_type(status),
            param=param,
            code=code,
            headers=keep,
        )
    if status == 503:
        return GatewayError(503, f"{provider} is unavailable: {message or 'HTTP 503'}", type="server_error", code=code, headers=keep)
    return GatewayError(502, f"{provider} upstream error (HTTP {status}): {message or 'no detail'}", type="server_error", code=code, headers=keep)


def parse_error_payload(payload: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = payload.decode("utf-8", "replace").strip()
        return (text[:500] or None), None, None, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message")
            if message is None and error.get("detail") is not None:  # FastAPI/pydantic's 4xx
                detail = error["detail"]
                message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()[:500]
            code = error.get("code")
            return (
                str(message) if message is not None else None,
                str(error["type"]) if isinstance(error.get("type"), str) else None,
                str(error["param"]) if isinstance(error.get("param"), str) else None,
                str(code) if code is not None else None,
            )
        if isinstance(error, str):
            return error, None, None, None
    return None, None, None, None


def structured_error_only(payload: bytes) -> bytes:
    """The payload when it is an API error object (OpenAI's ``{"error": {"message": ...}}`` or
    Anthropic's ``{"type": "error", "error": {...}}``), else nothing: what a client-chosen URL may show."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return b""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str):
        return payload
    return b""


def not_openai_compatible(provider: str, status: int, headers: Mapping[str, str]) -> GatewayError:
    """A client-chosen URL answered an error without an API error object: its status, never its body."""
    mapped = upstream_error(provider, status, b"", headers)
    mapped.message = (f"The upstream at the client's base_url answered HTTP {status} without an API error object: "
                      "it is not OpenAI-compatible (its body is not shown).")
    mapped.args = (mapped.message,)
    return mapped


# Methods an upstream may receive twice without harm.
_SAFE_TO_RESEND = frozenset({"GET", "HEAD", "OPTIONS"})


def never_sent(exc: BaseException) -> bool:
    """aiohttp found the pooled connection closing when it went to write: no byte of this request left,
    so sending it again cannot make the upstream see it twice."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, aiohttp.ClientConnectionResetError) and "closing transport" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connection_error(provider: str, url: str, exc: BaseException) -> GatewayError:
    return GatewayError(
        502,
        f"Cannot reach provider {provider} at {url}: {type(exc).__name__}. Is it running and is its base URL right?",
        type="server_error",
        code="upstream_unreachable",
    )


def timeout_error(provider: str, what: str) -> GatewayError:
    return GatewayError(504, f"Provider {provider} timed out ({what}).", type="server_error", code="upstream_timeout")


@asynccontextmanager
async def open_upstream(
    session: aiohttp.ClientSession,
    provider: str,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    json_body: Any = None,
    first_byte_timeout_s: float,
    read_timeout_s: float,
    map_error: ErrorMapper | None = None,
    body: bytes | None = None,
    content_type: str | None = None,
    client_chosen: bool = False,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request and yield the response once its headers arrived with a 2xx status.

    The body is ``json_body`` encoded, or ``body`` as given (bytes, so a retry sends it again) with
    ``content_type`` (multipart uploads)."""
    data = orjson.dumps(json_body) if json_body is not None else body
    send_headers = dict(headers)
    if data is not None:
        send_headers["Content-Type"] = "application/json" if json_body is not None else (
            content_type or "application/octet-stream")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=first_byte_timeout_s, sock_read=read_timeout_s)
    response: aiohttp.ClientResponse | None = None
    stats = current()
    started = time.perf_counter()
    for attempt in (0, 1):
        try:
            # asyncio.timeout, not wait_for: wait_for runs the request in an extra task (3.11)
            async with asyncio.timeout(first_byte_timeout_s):
                response = await session.request(
                    method, url, data=data, headers=send_headers, allow_redirects=False, timeout=timeout
                )
            break
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # A pooled keep-alive connection the server already closed: send again on a fresh one, but
            # only when the upstream cannot have read the first attempt (or reading it twice is harmless).
            if (attempt == 0 and not isinstance(exc, aiohttp.ClientConnectorError)
                    and (method.upper() in _SAFE_TO_RESEND or never_sent(exc))):
                note_retry("stale_connection")
                continue
            raise connection_error(provider, url, exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise connection_error(provider, url, exc) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise timeout_error(provider, "no response headers") from None
        except aiohttp.ClientError as exc:
            raise connection_error(provider, url, exc) from None
        finally:
            if stats is not None:  # connecting, sending and waiting for the headers: the upstream's time
                stats.upstream_s += time.perf_counter() - started
                started = time.perf_counter()
    assert response is not None
    try:
        if response.status >= 300:
            if 300 <= response.status < 400:
                raise GatewayError(
                    502,
                    f"Provider {provider} answered with a redirect (HTTP {response.status}); redirects are not followed.",
                    type="server_error",
                    code="upstream_redirect",
                )
            payload = await _read_limited(response, 1 << 20)
            if client_chosen:  # the client's base_url: only an API error object is shown
                payload = structured_error_only(payload)
                if not payload:
                    raise not_openai_compatible(provider, response.status, response.headers)
            mapped = map_error(response.status, payload, response.headers) if map_error is not None else None
            raise mapped or upstream_error(provider, response.status, payload, response.headers)
        yield response
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise timeout_error(provider, "stalled while reading the response") from None
    except aiohttp.ClientPayloadError as exc:
        raise GatewayError(502, f"Provider {provider} broke off its response: {exc}", type="server_error") from None
    except aiohttp.ClientError as exc:
        raise connection_error(provider, url, exc) from None
    finally:
        response.release()


def open_call(session: aiohttp.ClientSession, provider: str, method: str, upstream: Upstream, path: str, *,
              json_body: Any = None, headers: Mapping[str, str] | None = None,
              map_error: ErrorMapper | None = None, body: bytes | None = None,
              content_type: str | None = None) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """``open_upstream`` for a resolved call: its URL, headers (plus ``headers``) and timeouts."""
    return open_upstream(session, provider, method, upstream.base_url + path,
                         headers={**upstream.headers, **(headers or {})}, json_body=json_body,
                         first_byte_timeout_s=upstream.first_byte_timeout_s, read_timeout_s=upstream.read_timeout_s,
                         map_error=map_error, body=body, content_type=content_type,
                         client_chosen=upstream.client_chosen)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    try:
        return await response.content.read(limit)
    except (aiohttp.ClientError, TimeoutError):
        return b""


async def read_json(response: aiohttp.ClientResponse, provider: str, limit: int = 64 << 20) -> Any:
    # content.read(n) returns only what is buffered: collect chunks up to the limit.
    payload = bytearray()
    stats = current()
    started = time.perf_counter()
    async for chunk in response.content.iter_any():
        payload += chunk
        if len(payload) > limit:
            raise GatewayError(502, f"Provider {provider} sent a response over {limit} bytes.", type="server_error")
    if stats is not None:  # receiving the body is waiting on the upstream; decoding it below is ours
        stats.upstream_s += time.perf_counter() - started
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise GatewayError(502, f"Provider {provider} sent invalid JSON.", type="server_error") from None


MAX_EVENT_LINE = 8 << 20


async def sse_data(response: aiohttp.ClientResponse, provider: str) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield ``(event, data)`` for each SSE event; ends at ``[DONE]`` or end of body."""
    reader = response.content
    # Bulk path: take everything buffered at once and split it here. aiohttp keeps each HTTP
    # chunk (one per upstream event) as its own buffer entry, and readuntil() per line costs
    # several Python calls per entry: this is the gateway's hottest loop when streaming.
    event: str | None = None
    data_lines: list[bytes] = []
    rest = b""
    stats = current()
    clock = time.perf_counter
    while True:
        started = clock()
        try:
            block = await reader.readany()
        except ValueError:
            raise GatewayError(502, f"Provider {provider} sent an SSE line over the size limit.", type="server_error") from None
        finally:
            if stats is not None:  # only the wait for bytes is the upstream's; splitting them is ours
                stats.upstream_s += clock() - started
        if not block:
            lines = [rest] if rest else []
            rest = b""
        else:
            buffer = rest + block if rest else block
            lines = buffer.split(b"\n")
            rest = lines.pop()
            if len(rest) > MAX_EVENT_LINE:
                raise GatewayError(502, f"Provider {provider} sent an SSE line over the size limit.", type="server_error")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if data_lines:
                    data = b"\n".join(data_lines)
                    data_lines = []
                    if data == b"[DONE]":
                        return
                    yield event, data
                event = None
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
            # comments (":") and unknown fields are ignored, as the SSE spec says
        if not block:
            break
    if data_lines:
        data = b"\n".join(data_lines)
        if data != b"[DONE]":
            yield event, data


async def ndjson_lines(response: aiohttp.ClientResponse, provider: str) -> AsyncIterator[Any]:
    """Yield one decoded JSON value per non-empty line (Ollama's streaming format)."""
    reader = response.content
    stats = current()
    clock = time.perf_counter
    while True:
        started = clock()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial
            if not line:
                return
        except ValueError:
            raise GatewayError(502, f"Provider {provider} sent a line over the size limit.", type="server_error") from None
        finally:
            if stats is not None:
                stats.upstream_s += clock() - started
        if not line:
            return  # end of body (readuntil returns b"" there)
        line = line.strip()
        if not line:
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            raise GatewayError(502, f"Provider {provider} sent an invalid JSON line.", type="server_error") from None


async def fetch_listing(session: aiohttp.ClientSession, settings: UpstreamSettings, limits: Limits,
                        path: str) -> tuple[Any, ProviderStatus | None]:
    """GET a model listing at the configured endpoint: (decoded JSON, None), or (None, the failed status)."""
    upstream = probe(settings, limits)
    try:
        async with open_call(session, settings.provider, "GET", upstream, path) as response:
            return await asyncio.wait_for(read_json(response, settings.provider), upstream.read_timeout_s), None
    except GatewayError as exc:
        state = ProviderState.NO_API_KEY if exc.status in (401, 403) else ProviderState.UNREACHABLE
        return None, ProviderStatus(state, detail=exc.message)
    except TimeoutError:
        return None, ProviderStatus(ProviderState.UNREACHABLE, detail="timed out listing models")
