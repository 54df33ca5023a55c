"""A provider's own /v1/responses (``capabilities.native_responses``: ``openai/…``), with full fidelity.

The body goes upstream as the client sent it, but for the model prefix and
acore's own extension fields; hosted tools, previous_response_id, store and
include are OpenAI's to handle. Stream events come back unchanged except
``response.model``, which is rewritten to the id the client asked for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import orjson
from aiohttp import web

from gateway.errors import GatewayError, invalid
from gateway.keys import PROVIDERS
from gateway.ops.stats import current, note_upstream_error
from gateway.pipeline.hooks import HooksAround
from gateway.providers.base import ChatCall, ResponsesProvider
from gateway.providers.http import read_json, sse_data
from protocol.chat import EXTENSION_FIELDS, normalize_thinking
from protocol.openai import RequestValidationError

_TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def upstream_body(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in EXTENSION_FIELDS}
    out["model"] = model
    if out.get("input") is None and isinstance(out.get("messages"), list):
        # The seed's legacy form: chat messages are valid Responses input items for OpenAI.
        out["input"] = out.pop("messages")
    try:
        level = normalize_thinking(body.get("thinking"))
    except RequestValidationError as exc:
        raise invalid(exc) from None
    if level in ("low", "medium", "high") and not out.get("reasoning"):
        out["reasoning"] = {"effort": level}
    return out


def portable_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as OpenAI takes them inline: without acore's item ids (OpenAI would look them up)
    and without reasoning items (OpenAI accepts only its own, encrypted ones)."""
    out = []
    for item in items:
        if item.get("type") == "reasoning":
            continue
        out.append({k: v for k, v in item.items() if k != "id" and not (k == "status" and item.get("type") == "message")})
    return out


def rewrite_model(event: dict[str, Any], requested: str) -> None:
    response = event.get("response")
    if isinstance(response, dict) and "model" in response:
        response["model"] = requested
    elif event.get("object") == "response":
        event["model"] = requested


class Passthrough:
    """One request to a provider's own Responses endpoint; the ChatCall carries key, URL and timeout for
    the hooks (base_url policy) and the provider's upstream resolver."""

    def __init__(self, app: web.Application, call: ChatCall, body: dict[str, Any]) -> None:
        self.app = app
        self.call = call
        self.body = upstream_body(body, call.model)
        self.last_response: dict[str, Any] | None = None
        self.seq = 0
        self.finished = False

    def _provider(self) -> ResponsesProvider:
        # The door passes through only to providers whose capabilities say native_responses.
        return cast(ResponsesProvider, self.app[PROVIDERS].provider_for(self.call.provider))

    async def complete(self) -> dict[str, Any]:
        stats = current()
        async with HooksAround(self.app, self.call):
            try:
                async with self._provider().responses(self.call, self.body) as response:
                    data = await read_json(response, self.call.provider)
            except GatewayError as exc:
                note_upstream_error(exc)
                raise
        if not isinstance(data, dict):
            raise GatewayError(502, f"Provider {self.call.provider} sent a malformed response.", type="server_error")
        rewrite_model(data, self.call.requested_model)
        if stats is not None:
            stats.set_usage(data.get("usage"))
            if stats.capture is not None:
                stats.capture.request, stats.capture.response = self.body, data
        return data

    async def events(self) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        """The upstream's events; with a request's RequestStats current, also its first token and usage.
        One generator (not one wrapping another): closing it releases the upstream response at once."""
        stats = current()
        try:
            async with HooksAround(self.app, self.call):
                try:
                    async with self._provider().responses(self.call, self.body) as response:
                        async for name, data in sse_data(response, self.call.provider):
                            try:
                                event = orjson.loads(data)
                            except orjson.JSONDecodeError:
                                raise GatewayError(502, f"Provider {self.call.provider} sent an invalid stream "
                                                        "event.", type="server_error") from None
                            if not isinstance(event, dict):
                                raise GatewayError(502, f"Provider {self.call.provider} sent an invalid stream "
                                                        "event.", type="server_error")
                            rewrite_model(event, self.call.requested_model)
                            kind = event.get("type")
                            if isinstance(event.get("response"), dict):
                                self.last_response = event["response"]
                            if isinstance(event.get("sequence_number"), int):
                                self.seq = event["sequence_number"] + 1
                            if kind in _TERMINAL:
                                self.finished = True
                            elif (stats is not None and stats.first_token is None and isinstance(kind, str)
                                  and kind.endswith(".delta")):
                                stats.first_token = time.perf_counter()
                            yield name or kind, event
                    if not self.finished:
                        # Responses clients fail (or retry in a loop) without a terminal event: say what happened.
                        raise GatewayError(502, f"Provider {self.call.provider} ended the stream before "
                                                "response.completed.", type="server_error")
                except GatewayError as exc:
                    note_upstream_error(exc)
                    raise
        finally:
            if stats is not None and self.last_response is not None:
                stats.set_usage(self.last_response.get("usage"))
                if stats.capture is not None:  # the last response object carries the whole output
                    stats.capture.request, stats.capture.response = self.body, self.last_response

    def failure_events(self, error: GatewayError) -> list[tuple[str, dict[str, Any]]]:
        """A stream broken off midway still ends the way Responses clients expect: failed, then error."""
        events: list[tuple[str, dict[str, Any]]] = []
        if self.last_response is not None:
            failed = {**self.last_response, "status": "failed",
                      "error": {"code": "rate_limit_exceeded" if error.status == 429 else "server_error",
                                "message": error.message}}
            events.append(("response.failed", {"type": "response.failed", "sequence_number": self.seq,
                                               "response": failed}))
            self.seq += 1
        events.append(("error", {"type": "error", "sequence_number": self.seq, "code": error.code or "server_error",
                                 "message": error.message, "param": error.param}))
        self.seq += 1
        return events
