"""The chat pipeline every front door shares: canonical request -> ChatCall -> hooks -> provider.

A door parses its own wire format into a ``protocol.chat.ChatRequest`` and resolves the
model once (``ProviderRegistry.resolve``); ``new_call`` checks the limits and builds the
ChatCall; ``complete`` and ``stream`` run it on the provider inside the hook bracket
(gateway.pipeline.hooks), with ``model`` set to what the client asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.pipeline.hooks import HooksAround
from gateway.providers.base import ChatCall
from gateway.providers.registry import Target
from protocol.chat import ChatRequest


def provider_key_from(headers: Mapping[str, str], api_key: Any) -> str | None:
    """A provider key supplied by the client (body ``api_key`` or ``X-Provider-API-Key``).
    The gateway's own Authorization header is never one."""
    key = api_key or headers.get("X-Provider-API-Key")
    if key is not None and not isinstance(key, str):
        raise bad_request("api_key must be a string.", param="api_key")
    return key or None


def check_limits(config: GatewayConfig, request: ChatRequest) -> None:
    limits = config.limits
    if len(request.messages) > limits.max_messages:
        raise bad_request(f"Too many messages: {len(request.messages)} (limit {limits.max_messages}).", param="messages")
    if request.n is not None and request.n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}.", param="n")
    if request.tools is not None and len(request.tools) > limits.max_tools:
        raise bad_request(f"Too many tools: {len(request.tools)} (limit {limits.max_tools}).", param="tools")


def new_call(app: web.Application, request: ChatRequest, headers: Mapping[str, str], request_id: str,
             target: Target | None = None) -> ChatCall:
    """The ChatCall for a canonical request (no I/O); ``target`` when the door already resolved the model."""
    check_limits(app[CONFIG], request)
    provider, model, requested = target or app[PROVIDERS].resolve(request.model)
    return ChatCall(
        request_id=request_id,
        provider=provider,
        model=model,
        requested_model=requested,
        request=request,
        api_key=provider_key_from(headers, request.api_key),
        base_url=request.base_url or None,
    )


async def complete(app: web.Application, call: ChatCall) -> dict[str, Any]:
    """Run a non-streaming chat; the answer's ``model`` is what the client asked for."""
    provider = app[PROVIDERS].provider_for(call.provider)
    async with HooksAround(app, call):
        result = await provider.chat(call)
    result["model"] = call.requested_model
    return result


async def stream(app: web.Application, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
    """Chunks as the provider produces them, ``model`` rewritten to what the client asked for."""
    provider = app[PROVIDERS].provider_for(call.provider)
    async with HooksAround(app, call):
        chunks = provider.chat_stream(call)
        requested = call.requested_model
        try:
            async for chunk in chunks:
                chunk["model"] = requested
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


def notices_header(call: ChatCall) -> dict[str, str]:
    if not call.notices:
        return {}
    return {"x-acore-notice": "; ".join(n.replace("\n", " ") for n in call.notices)[:2000]}
