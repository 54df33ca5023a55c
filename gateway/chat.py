"""The chat pipeline shared by every front protocol (chat completions, responses).

``prepare_chat`` turns a decoded body into a ChatCall (validation, model
resolution, extension fields, hooks); ``complete`` and ``stream`` run it on the
provider. Subsystems plug in through CallHooks (attachments, base_url policy,
unload_after) instead of editing this module.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.providers.base import ChatCall
from gateway.thinking import normalize_thinking
from protocol.openai import ChatCompletionRequest, RequestValidationError, validate

log = logging.getLogger("acore.gateway")

# Fields that are ours (AbstractCore extensions), never forwarded upstream.
EXTENSION_FIELDS = ("api_key", "base_url", "thinking", "unload_after", "timeout_s", "agent_format")


class CallHook(Protocol):
    """Runs around every chat call: ``before`` may rewrite or refuse it, ``after`` always runs."""

    async def before(self, app: web.Application, call: ChatCall) -> None: ...

    async def after(self, app: web.Application, call: ChatCall) -> None: ...


CALL_HOOKS = web.AppKey("call_hooks", list[CallHook])


def new_request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return "req_" + secrets.token_hex(12)


def provider_key_from(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """A provider key supplied by the client. The gateway's own Authorization is never one."""
    key = body.get("api_key") or headers.get("X-Provider-API-Key")
    if key is not None and not isinstance(key, str):
        raise bad_request("api_key must be a string.", param="api_key")
    return key or None


def check_limits(config: GatewayConfig, request: ChatCompletionRequest) -> None:
    limits = config.limits
    if len(request.messages) > limits.max_messages:
        raise bad_request(f"Too many messages: {len(request.messages)} (limit {limits.max_messages}).", param="messages")
    if request.n is not None and request.n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}.", param="n")
    if request.tools is not None and len(request.tools) > limits.max_tools:
        raise bad_request(f"Too many tools: {len(request.tools)} (limit {limits.max_tools}).", param="tools")


def prepare_chat(app: web.Application, body: dict[str, Any], headers: Mapping[str, str], request_id: str) -> ChatCall:
    """Validate a chat body and resolve its model into a ChatCall (no I/O)."""
    try:
        request = validate(body, ChatCompletionRequest)
    except RequestValidationError as exc:
        raise bad_request(exc.message, param=exc.param) from None
    config = app[CONFIG]
    check_limits(config, request)
    provider, model, requested = app[PROVIDERS].resolve(request.model)
    api_key = provider_key_from(headers, body)
    forwarded = {k: v for k, v in body.items() if k not in EXTENSION_FIELDS}
    forwarded.pop("model", None)
    return ChatCall(
        request_id=request_id,
        provider=provider,
        model=model,
        requested_model=requested,
        body=forwarded,
        stream=bool(request.stream),
        api_key=api_key,
        base_url=request.base_url or None,
        thinking=normalize_thinking(request.thinking),
        unload_after=bool(request.unload_after),
        timeout_s=request.timeout_s,
    )


async def run_before_hooks(app: web.Application, call: ChatCall) -> list[CallHook]:
    """Run every hook's ``before``; return the hooks that ran, so only they get ``after``."""
    ran: list[CallHook] = []
    try:
        for hook in app.get(CALL_HOOKS, ()):
            await hook.before(app, call)
            ran.append(hook)
    except BaseException:
        await run_after_hooks(app, call, ran)
        raise
    return ran


async def run_after_hooks(app: web.Application, call: ChatCall, hooks: list[CallHook]) -> None:
    for hook in reversed(hooks):
        try:
            await hook.after(app, call)
        except Exception:  # an after-hook must never turn a served answer into an error
            log.exception("after-hook failed for %s", call.request_id)


async def complete(app: web.Application, call: ChatCall) -> dict[str, Any]:
    """Run a non-streaming chat; the answer's ``model`` is what the client asked for."""
    provider = app[PROVIDERS].provider_for(call.provider)
    hooks = await run_before_hooks(app, call)
    try:
        result = await provider.chat(call)
    finally:
        await run_after_hooks(app, call, hooks)
    result["model"] = call.requested_model
    return result


async def stream(app: web.Application, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
    """Chunks as the provider produces them, ``model`` rewritten, the first carrying the role."""
    provider = app[PROVIDERS].provider_for(call.provider)
    hooks = await run_before_hooks(app, call)
    try:
        chunks = provider.chat_stream(call)
        first = True
        requested = call.requested_model
        try:
            async for chunk in chunks:
                chunk["model"] = requested
                if first:
                    first = False
                    _ensure_role(chunk)
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
    finally:
        await run_after_hooks(app, call, hooks)


def _ensure_role(chunk: dict[str, Any]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and "role" not in delta:
            delta["role"] = "assistant"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def now() -> int:
    return int(time.time())


def notices_header(call: ChatCall) -> dict[str, str]:
    if not call.notices:
        return {}
    return {"x-acore-notice": "; ".join(n.replace("\n", " ") for n in call.notices)[:2000]}


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


__all__ = [
    "CALL_HOOKS",
    "CallHook",
    "GatewayError",
    "complete",
    "prepare_chat",
    "stream",
]
