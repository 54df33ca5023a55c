"""The chat pipeline every front door shares: canonical request -> ChatCall -> hooks -> provider.

A door parses its own wire format into a ``protocol.chat.ChatRequest`` and resolves the
model once (``ProviderRegistry.resolve``); ``new_call`` checks the limits and builds the
ChatCall; ``complete`` and ``stream`` run it on the provider inside the hook bracket
(gateway.pipeline.hooks), with ``model`` set to what the client asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import msgspec
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.ops.stats import current, note_upstream_error
from gateway.pipeline.groups import GroupTarget
from gateway.pipeline.hooks import HooksAround
from gateway.pipeline.routing import REQUEST_LIST, ROUTER, RoutedRun, first_answer
from gateway.providers.base import ChatCall
from gateway.providers.registry import Target
from protocol.chat import ChatRequest

log = logging.getLogger("acore.gateway")


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
    """The ChatCall for a canonical request (no I/O); ``target`` when the door already resolved the model.

    An alias or a request ``models`` list gives the call a plan (pipeline/routing.py): its targets
    are tried in turn by ``complete`` and ``stream``; the call's provider is the first of them."""
    check_limits(app[CONFIG], request)
    plan = app[ROUTER].plan(app[CONFIG], request.model, request.models)
    registry = app[PROVIDERS]
    if plan is not None:
        if not plan.targets:
            raise bad_request("models lists no model.", param="models")
        if plan.name == REQUEST_LIST:  # an unknown provider in the request's own list is the client's error
            for spec in plan.targets:  # (a [models] group's were checked at start)
                registry.resolve(spec.model)
        first = registry.resolve(plan.targets[0].model)
        target = Target(first.provider, first.model, request.model or plan.targets[0].model)
    provider, model, requested = target or registry.resolve(request.model)
    if log.isEnabledFor(logging.DEBUG):  # the seed's "Chat Completion Request" event (debug logs only)
        log.debug("chat completion request", extra={"fields": {
            "request_id": request_id, "provider": provider, "model": model, "messages": len(request.messages),
            "has_tools": bool(request.tools), "stream": bool(request.stream)}})
    return ChatCall(
        request_id=request_id,
        provider=provider,
        model=model,
        requested_model=requested,
        request=request,
        api_key=provider_key_from(headers, request.api_key),
        base_url=request.base_url or None,
        plan=plan,
    )


def _attempt_call(app: web.Application, call: ChatCall, spec: GroupTarget) -> ChatCall:
    """The call for one target of a plan: its provider and model, its base_url (the operator's, so
    trusted like a configured one) and its parameter caps; notices shared with the client's call."""
    target = app[PROVIDERS].resolve(spec.model)
    request = call.request
    if spec.max_tokens is not None and (request.token_limit is None or request.token_limit > spec.max_tokens):
        field_name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        request = msgspec.structs.replace(request, **{field_name: spec.max_tokens})
    base_url, trusted = (spec.base_url, True) if spec.base_url else (call.base_url, False)
    return dataclasses.replace(call, provider=target.provider, model=target.model, request=request,
                               base_url=base_url, base_url_trusted=trusted, plan=None, usage=None)


def _served(call: ChatCall, attempt: ChatCall) -> None:
    """The client's call takes what the serving target's call learnt."""
    call.provider, call.model, call.usage = attempt.provider, attempt.model, attempt.usage
    call.served_by = f"{attempt.provider}/{attempt.model}"
    stats = current()
    if stats is not None:
        stats.served_by = (attempt.provider, attempt.model)


async def complete(app: web.Application, call: ChatCall) -> dict[str, Any]:
    """Run a non-streaming chat; the answer's ``model`` is what the client asked for."""
    if call.plan is None:
        return await _complete_one(app, call)
    async def attempt(spec: GroupTarget) -> tuple[ChatCall, dict[str, Any]]:
        target_call = _attempt_call(app, call, spec)
        return target_call, await _complete_one(app, target_call)

    _, (served, result) = await first_answer(RoutedRun(app, call.plan), attempt)
    _served(call, served)
    return result


async def _complete_one(app: web.Application, call: ChatCall) -> dict[str, Any]:
    provider = app[PROVIDERS].provider_for(call.provider)
    stats = current()
    async with HooksAround(app, call):
        if stats is not None and stats.capture is not None:
            stats.capture.request = _verbatim_request(call)  # a failed call is logged too
        try:
            result = await provider.chat(call)
        except GatewayError as exc:
            note_upstream_error(exc)
            raise
    result["model"] = call.requested_model
    if stats is not None:
        stats.set_usage(result.get("usage") or call.usage)
        if stats.capture is not None:
            stats.capture.response = result
    return result


def stream(app: web.Application, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
    """Chunks as the provider produces them, ``model`` rewritten to what the client asked for.

    With a plan, each target in turn until one sends its first chunk; after that byte no other.
    (A plain function: the common, planless stream gets no extra generator layer per chunk.)"""
    return _stream_one(app, call) if call.plan is None else _stream_routed(app, call)


async def _stream_routed(app: web.Application, call: ChatCall) -> AsyncGenerator[dict[str, Any], None]:
    assert call.plan is not None
    run = RoutedRun(app, call.plan)
    while (spec := await run.next_target()) is not None:
        attempt = _attempt_call(app, call, spec)
        chunks = _stream_one(app, attempt)
        try:
            async with asyncio.timeout(run.attempt_timeout()):
                first = await anext(chunks)
        except StopAsyncIteration:
            run.answered()
            run.done()
            _served(call, attempt)
            return
        except (GatewayError, TimeoutError) as exc:
            await chunks.aclose()
            run.failed(exc)
            continue
        except BaseException:
            await chunks.aclose()
            run.done()
            raise
        run.answered()
        _served(call, attempt)
        call.usage = attempt.usage  # what the target knew by its first chunk (a local worker's prompt size)
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
            call.usage = attempt.usage
            run.done()
        return
    raise run.exhausted()


async def _stream_one(app: web.Application, call: ChatCall) -> AsyncGenerator[dict[str, Any], None]:
    """One provider's stream, inside the hook bracket.

    With a request's RequestStats current, it also notes when the first token went out and the
    usage (from a usage chunk, else what the provider reported on the call: translating providers
    always know it, whether or not the client asked for it), once, when the stream ends."""
    provider = app[PROVIDERS].provider_for(call.provider)
    stats = current()
    async with HooksAround(app, call):
        chunks = provider.chat_stream(call)
        requested = call.requested_model
        try:
            if stats is None:
                async for chunk in chunks:
                    chunk["model"] = requested
                    yield chunk
                return
            capture = stats.capture
            collected: list[dict[str, Any]] | None = None
            if capture is not None:  # debug logs: the verbatim entry assembles what the client was sent
                capture.request = _verbatim_request(call)
                collected = capture.chunks = []
            usage = None
            waiting_first = True
            async for chunk in chunks:
                chunk["model"] = requested
                if waiting_first and _has_token(chunk):
                    stats.first_token = time.perf_counter()
                    waiting_first = False
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if collected is not None:
                    collected.append(chunk)
                yield chunk
            stats.set_usage(usage or call.usage)
        except GatewayError as exc:
            note_upstream_error(exc)
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            if stats is not None and stats.input_tokens is None and stats.output_tokens is None:
                # failed, or left by the client: the tokens the provider reported before that, if any
                stats.set_usage(call.usage)


def _has_token(chunk: dict[str, Any]) -> bool:
    """A chunk carrying generated text, reasoning or a tool call (not the role-only first chunk)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if delta and (delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")):
            return True
    return False


def _verbatim_request(call: ChatCall) -> dict[str, Any]:
    """What the verbatim log shows as the model's input: the canonical request as the model got it."""
    body = call.request.openai_body()
    body["model"] = f"{call.provider}/{call.model}"
    return body


def notices_header(call: ChatCall) -> dict[str, str]:
    """The headers the pipeline adds to an answer: the target that served it, and notices."""
    headers = {"x-acore-served-by": call.served_by or f"{call.provider}/{call.model}"}
    if call.notices:
        headers["x-acore-notice"] = "; ".join(n.replace("\n", " ") for n in call.notices)[:2000]
    return headers
