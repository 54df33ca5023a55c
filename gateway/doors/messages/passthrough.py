"""``anthropic/…`` (``capabilities.native_messages``): the Messages API passed through, byte for byte.

The body goes upstream as the client sent it; it is re-encoded only when its ``model`` has to
change (``anthropic/claude-x`` or an alias names ``claude-x`` upstream) or it carries acore's own
extension fields (``api_key``, ``base_url``, …: Anthropic refuses fields it does not know).
``anthropic-version`` and ``anthropic-beta`` are the client's. Answers and events come back as
the upstream sent them; the door reads only their usage for the access log and /metrics.
The key and URL rules are the provider's (providers/upstream.py), as for a translated call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import orjson
from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import PROVIDERS
from gateway.ops.stats import RequestStats, current, note_upstream_error
from gateway.pipeline.hooks import HooksAround
from gateway.providers.anthropic import API_VERSION
from gateway.providers.base import ChatCall, MessagesProvider
from gateway.providers.http import sse_data
from protocol.chat import EXTENSION_FIELDS

FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
# acore's fields that never go upstream; ``thinking`` is Anthropic's own field here.
OWN_FIELDS = EXTENSION_FIELDS - {"thinking"}
MAX_ANSWER_BYTES = 64 << 20


def upstream_body(raw: bytes, body: Mapping[str, Any], model: str) -> bytes:
    """The bytes to send: the client's own when nothing has to change."""
    ours = [key for key in body if key in OWN_FIELDS]
    if body.get("model") == model and not ours:
        return raw
    out = {key: value for key, value in body.items() if key not in OWN_FIELDS}
    out["model"] = model
    return orjson.dumps(out)


def forwarded_headers(headers: Mapping[str, str], stream: bool) -> dict[str, str]:
    out = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    out.setdefault("anthropic-version", API_VERSION)
    out["accept"] = "text/event-stream" if stream else "application/json"
    return out


def openai_usage(message_usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage as the OpenAI usage the access log and /metrics count (cached input included)."""
    fresh = int(message_usage.get("input_tokens") or 0)
    read = int(message_usage.get("cache_read_input_tokens") or 0)
    written = int(message_usage.get("cache_creation_input_tokens") or 0)
    output = int(message_usage.get("output_tokens") or 0)
    return {"prompt_tokens": fresh + read + written, "completion_tokens": output,
            "total_tokens": fresh + read + written + output, "prompt_tokens_details": {"cached_tokens": read}}


class Passthrough:
    """One request to a provider's own Messages API; the ChatCall carries key, URL and timeout for the
    hooks (base_url policy) and the provider's upstream resolver."""

    def __init__(self, app: web.Application, call: ChatCall, raw: bytes, body: Mapping[str, Any],
                 headers: Mapping[str, str], path: str) -> None:
        self.app = app
        self.call = call
        self.body = upstream_body(raw, body, call.model)
        self.headers = forwarded_headers(headers, call.stream)
        self.path = path
        self.status = 200
        self.content_type = "application/json"

    def _provider(self) -> MessagesProvider:
        # The door passes through only to providers whose capabilities say native_messages.
        return cast(MessagesProvider, self.app[PROVIDERS].provider_for(self.call.provider))

    async def complete(self) -> bytes:
        """The upstream's JSON answer, as it sent it."""
        async with HooksAround(self.app, self.call):
            try:
                async with self._provider().messages(self.call, self.body, self.path, self.headers) as response:
                    self.status = response.status
                    self.content_type = response.content_type or "application/json"
                    payload = bytearray()
                    async for block in response.content.iter_any():
                        payload += block
                        if len(payload) > MAX_ANSWER_BYTES:
                            raise GatewayError(502, f"Provider {self.call.provider} sent a response over "
                                                    f"{MAX_ANSWER_BYTES} bytes.", type="server_error")
            except GatewayError as exc:
                note_upstream_error(exc)
                raise
        stats = current()
        if stats is not None:
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                stats.set_usage(openai_usage(data["usage"]))
        return bytes(payload)

    async def events(self) -> AsyncIterator[bytes]:
        """The upstream's SSE frames, re-framed but with every ``data:`` payload as it came."""
        stats = current()
        seen: dict[str, Any] = {}
        try:
            async with HooksAround(self.app, self.call):
                try:
                    async with self._provider().messages(self.call, self.body, self.path, self.headers) as response:
                        async for name, data in sse_data(response, self.call.provider):
                            if stats is not None:
                                self._note(data, seen, stats)
                            head = b"event: " + name.encode() + b"\n" if name else b""
                            yield head + b"data: " + data + b"\n\n"
                except GatewayError as exc:
                    note_upstream_error(exc)
                    raise
        finally:
            if stats is not None and seen:
                stats.set_usage(openai_usage(seen))

    @staticmethod
    def _note(data: bytes, seen: dict[str, Any], stats: RequestStats) -> None:
        """Usage from message_start and message_delta (cumulative counts); the first delta's time."""
        if b'"message_' not in data[:40] and stats.first_token is not None:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            seen.update((event.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            seen.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        elif kind == "content_block_delta" and stats.first_token is None:
            stats.first_token = time.perf_counter()

