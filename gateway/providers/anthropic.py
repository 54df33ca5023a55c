"""Anthropic Messages API adapter for ``anthropic/<model>``.

The canonical OpenAI chat body is translated to a Messages request and the
Messages event stream back into ``chat.completion.chunk`` objects, event by
event. The upstream is always asked to stream; a non-streaming answer is the
collected stream (``collect.py``), so both paths share one translation.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request, from_media
from gateway.providers.base import (
    Capabilities,
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ProviderState,
    ProviderStatus,
)
from gateway.providers.collect import complete_from_stream
from gateway.providers.http import fetch_listing, open_call, parse_error_payload, sse_data
from gateway.providers.translate import check_unsupported, image_part_url
from gateway.providers.upstream import Auth, UpstreamSettings, resolve, strip_v1
from media.data_url import base64_image
from media.errors import MediaError

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error types -> (HTTP status for the client, OpenAI error type).
ERROR_TYPES = {
    "invalid_request_error": (400, "invalid_request_error"),
    "authentication_error": (401, "authentication_error"),
    "permission_error": (403, "permission_error"),
    "not_found_error": (404, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_error": (429, "rate_limit_error"),
    "overloaded_error": (503, "server_error"),
    "api_error": (502, "server_error"),
}

# Extended thinking budgets; "on" means the provider's sensible middle.
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "on": 4096}
# Room left for the visible answer when max_tokens had to be raised above the budget.
THINKING_ANSWER_ROOM = 4096


# ---------------------------------------------------------------------- request translation


def _text_of(content: Any, where: str) -> str:
    """Text of a string or a list of text parts (system and tool messages)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text") or ""))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where} content parts must be text for anthropic, got {kind!r}.", param="messages")
        return "\n".join(texts)
    raise bad_request(f"{where} content must be a string or a list of parts.", param="messages")


def image_block(url: str) -> dict[str, Any]:
    """A data URL becomes a base64 source, an http(s) URL a url source (Anthropic fetches it)."""
    if url.startswith("data:"):
        try:
            media_type, data = base64_image(url)
        except MediaError as exc:
            raise from_media(exc) from None
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad_request("image_url must be a data: URL or an http(s) URL.", param="messages")


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("User message content must be a string or a list of parts.", param="messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind in ("image_url", "input_image"):
            blocks.append(image_block(image_part_url(part)))
        else:
            raise bad_request(f"Content part type {kind!r} is not supported by anthropic.", param="messages")
    return blocks


def _tool_use_blocks(tool_calls: Any) -> list[dict[str, Any]]:
    blocks = []
    for call in tool_calls or ():
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            raise bad_request(f"tool call {call.get('id')!r} has arguments that are not JSON.", param="messages") from None
        if not isinstance(parsed, dict):
            raise bad_request(f"tool call {call.get('id')!r} arguments must be a JSON object.", param="messages")
        blocks.append({"type": "tool_use", "id": call.get("id") or "toolu_" + secrets.token_hex(8),
                       "name": function.get("name") or "", "input": parsed})
    return blocks


def convert_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic system blocks, messages with same-role turns merged)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, "System message")
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role == "user":
            anthropic_role, blocks = "user", _user_blocks(content)
        elif role == "assistant":
            anthropic_role = "assistant"
            text = _text_of(content, "Assistant message")
            blocks = ([{"type": "text", "text": text}] if text else []) + _tool_use_blocks(message.get("tool_calls"))
            signature = message.get("reasoning_signature")
            if isinstance(signature, str) and signature and isinstance(message.get("reasoning_content"), str):
                blocks.insert(0, {"type": "thinking", "thinking": message["reasoning_content"], "signature": signature})
        elif role in ("tool", "function"):
            # A tool result is a user turn holding a tool_result block (several merge into one turn).
            anthropic_role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": message.get("tool_call_id") or message.get("name") or "",
                       "content": _text_of(content, "Tool message")}]
        else:
            raise bad_request(f"Unknown message role {role!r}.", param="messages")
        if not blocks:
            continue  # Anthropic refuses empty content
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)  # the API requires alternating roles
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        # Tool results must open their user turn; a user text that followed them goes after.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    result: dict[str, Any]
    if choice is None or choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request("tool_choice must be auto, none, required or {type: function, function: {name}}.",
                          param="tool_choice")
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def build_request(call: ChatCall) -> dict[str, Any]:
    """The Messages API request for a ChatCall (always streaming)."""
    check_unsupported(call, "anthropic")
    chat = call.request
    system, messages = convert_messages(chat.messages)
    if not messages:
        raise bad_request("anthropic needs at least one user or assistant message.", param="messages")
    request: dict[str, Any] = {"model": call.model, "messages": messages, "stream": True,
                               "max_tokens": chat.token_limit or DEFAULT_MAX_TOKENS}
    if system:
        request["system"] = system
    temperature = chat.temperature
    if temperature is not None:
        if temperature > 1:  # OpenAI's range is 0-2, Anthropic's 0-1
            call.notices.append(f"temperature={temperature} clamped to 1 (anthropic's maximum)")
            temperature = 1.0
        request["temperature"] = temperature
    if chat.top_p is not None:
        request["top_p"] = chat.top_p
    if chat.top_k is not None:
        request["top_k"] = chat.top_k
    if chat.stop_list:
        request["stop_sequences"] = chat.stop_list
    tools = []
    for tool in chat.tools or ():
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            call.notices.append(f"tool of type {tool.get('type')!r} dropped (anthropic takes function tools)")
            continue
        entry = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            entry["description"] = function["description"]
        tools.append(entry)
    if tools:
        request["tools"] = tools
        choice = _tool_choice(chat.tool_choice, chat.parallel_tool_calls)
        if choice is not None:
            request["tool_choice"] = choice
    if isinstance(chat.user, str):
        request["metadata"] = {"user_id": chat.user}
    if chat.response_format and chat.response_format.get("type") != "text":
        call.notices.append("response_format is not enforced by anthropic")
    blocked = _thinking_blocked(request, messages) if call.thinking not in (None, "auto", "off") else None
    if blocked:
        call.notices.append(f"thinking off for this turn: {blocked}")
    else:
        apply_thinking(call, request)
    return request


def apply_thinking(call: ChatCall, request: dict[str, Any]) -> None:
    """Set ``thinking: {type: enabled, budget_tokens}`` on a Messages API request.

    Anthropic requires ``max_tokens`` above the budget and refuses sampling
    overrides while thinking, so both are adjusted here and reported.
    """
    level = call.thinking
    if level is None or level in ("auto", "off"):
        return  # the Messages API thinks only when asked: off and auto (provider default) send nothing
    budget = THINKING_BUDGETS[level]
    request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    max_tokens = int(request.get("max_tokens") or 0)
    if max_tokens <= budget:
        raised = budget + (max_tokens or THINKING_ANSWER_ROOM)
        request["max_tokens"] = raised
        call.notices.append(f"max_tokens raised to {raised} to fit thinking budget {budget}")
    for name in ("temperature", "top_k"):
        if name in request:
            del request[name]
            call.notices.append(f"{name} dropped: Anthropic does not accept it with thinking")


def _thinking_blocked(request: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """Why Anthropic would refuse thinking on this request, if it would."""
    if (request.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "anthropic cannot think with a forced tool_choice"
    # In a tool loop the assistant turn answered by tool results must keep its signed thinking block;
    # most clients drop unknown fields (reasoning_signature), so this turn goes without thinking.
    if len(messages) >= 2 and any(b["type"] == "tool_result" for b in messages[-1]["content"]):
        if not any(b["type"] in ("thinking", "redacted_thinking") for b in messages[-2]["content"]):
            return "the assistant tool-call turn came back without reasoning_signature"
    return None


# ---------------------------------------------------------------------- response translation


def map_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic counts cached input apart; OpenAI's prompt_tokens includes it."""
    fresh = int(usage.get("input_tokens") or 0)
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = fresh + cache_read + cache_write
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_creation_tokens": cache_write},
    }


def stream_error(provider: str, error: Any) -> GatewayError:
    """An Anthropic error object (HTTP body or in-stream event) as the client's error."""
    err_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else str(error)
    status, openai_type = ERROR_TYPES.get(str(err_type), (502, "server_error"))
    headers = {"Retry-After": "1"} if status in (429, 503) else {}
    return GatewayError(status, f"{provider}: {message or err_type or 'error'}", type=openai_type,
                        code=str(err_type) if err_type else None, headers=headers)


def map_http_error(status: int, payload: bytes, headers: Mapping[str, str]) -> GatewayError | None:
    """Anthropic's own statuses: 529 (or overloaded_error) means overloaded -> 503 with Retry-After; a 404
    names the model. Everything else takes the generic mapping."""
    message, err_type, _param, _code = parse_error_payload(payload)
    if status == 529 or err_type == "overloaded_error":
        return GatewayError(503, "anthropic is overloaded; retry later.", type="server_error",
                            code="overloaded_error", headers={"Retry-After": headers.get("Retry-After", "1")})
    if status == 404 and err_type in (None, "not_found_error", "invalid_request_error"):
        return GatewayError(404, message or "anthropic rejected the request (HTTP 404).",
                            type="invalid_request_error", param="model", code="model_not_found")
    return None


def passthrough_error(status: int, payload: bytes, headers: Mapping[str, str]) -> GatewayError:
    """An upstream error for a client that speaks Anthropic: its status, type (as ``code``) and message kept."""
    message, err_type, _param, _code = parse_error_payload(payload)
    keep = {k: headers[k] for k in ("Retry-After", "retry-after-ms") if k in headers}
    if err_type not in ERROR_TYPES:
        mapped = map_http_error(status, payload, headers)
        err_type = mapped.code if mapped is not None and mapped.code in ERROR_TYPES else None
    return GatewayError(status if 400 <= status < 600 else 502, message or f"anthropic answered HTTP {status}.",
                        type=ERROR_TYPES.get(str(err_type), (502, "server_error"))[1], code=err_type, headers=keep)


class _Translator:
    """Turns Messages API events into chat.completion.chunk objects, keeping per-stream state."""

    def __init__(self) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = ""
        self.usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}  # content block index -> tool_calls index
        self.finish: str | None = None
        self.stop_sequence: str | None = None
        self.stopped = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": map_usage(self.usage)}

    def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.model = str(message.get("model") or "")
            if message.get("id"):
                self.id = "chatcmpl-" + str(message["id"])
            self.usage.update(message.get("usage") or {})
            return self.chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[int(event.get("index", 0))] = index
                return self.chunk({"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                                   "function": {"name": block.get("name"), "arguments": ""}}]})
            if block.get("type") == "text" and block.get("text"):
                return self.chunk({"content": block["text"]})
            return None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                return self.chunk({"content": delta.get("text", "")})
            if delta_type == "thinking_delta":
                return self.chunk({"reasoning_content": delta.get("thinking", "")})
            if delta_type == "input_json_delta":
                tool_index = self.tool_index.get(int(event.get("index", 0)))
                if tool_index is None:
                    return None  # a server tool's input: not a client tool call
                return self.chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": delta.get("partial_json", "")}}]})
            if delta_type == "signature_delta":
                # Anthropic needs the signed thinking back in a tool-use loop; an extension field the
                # client may echo on the assistant message (see convert_messages).
                return self.chunk({"reasoning_signature": delta.get("signature", "")})
            return None  # citations_delta: nothing to send
        if kind == "message_delta":
            delta = event.get("delta") or {}
            reason = delta.get("stop_reason")
            if reason:
                self.finish = STOP_REASONS.get(reason, "stop")
            if isinstance(delta.get("stop_sequence"), str):
                self.stop_sequence = delta["stop_sequence"]
            # message_delta usage counts are cumulative: later values replace earlier ones.
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            return None
        if kind == "message_stop":
            self.stopped = True
            last = self.chunk({}, self.finish or "stop")
            if self.stop_sequence:  # which stop string ended it, as vLLM says it
                last["choices"][0]["stop_reason"] = self.stop_sequence
            return last
        return None  # ping, content_block_stop and unknown future events


class AnthropicProvider:
    """``anthropic/<model>`` over the Messages API."""

    name = "anthropic"
    capabilities = Capabilities(vision=True, client_base_url=True, requires_key=True, native_messages=True)

    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._limits = config.limits
        self.settings = UpstreamSettings.from_config(
            config, self.name, default_url=DEFAULT_BASE_URL, requires_key=True, auth=Auth.X_API_KEY,
            headers={"anthropic-version": API_VERSION, "accept": "text/event-stream"}, normalise=strip_v1)

    async def _chunks(self, call: ChatCall, with_usage: bool) -> AsyncIterator[dict[str, Any]]:
        request = build_request(call)
        upstream = resolve(self.settings, self._limits, api_key=call.api_key, base_url=call.base_url,
                           trusted=call.base_url_trusted, timeout_s=call.timeout_s)
        translator = _Translator()
        async with open_call(self._session, self.name, "POST", upstream, "/v1/messages", json_body=request,
                             map_error=map_http_error) as response:
            async for _event, data in sse_data(response, self.name):
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise GatewayError(502, "Provider anthropic sent an invalid stream event.",
                                       type="server_error") from None
                if not isinstance(event, dict):
                    raise GatewayError(502, "Provider anthropic sent an invalid stream event.", type="server_error")
                if event.get("type") == "error":
                    raise stream_error(self.name, event.get("error"))
                chunk = translator.handle(event)
                if chunk is not None:
                    yield chunk
                if translator.stopped:
                    break
        if not translator.stopped:
            raise GatewayError(502, "Provider anthropic ended the stream without message_stop.", type="server_error")
        usage = translator.usage_chunk()
        call.usage = usage["usage"]  # for the access log and /metrics, whether or not the client asked
        if with_usage:
            yield usage

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(call, call.include_usage)

    def messages(self, call: ChatCall, body: bytes, path: str,
                 headers: Mapping[str, str]) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The Messages door's passthrough: ``body`` goes to ``path`` byte for byte (orjson.Fragment is
        written as it is), under the same key and URL rules as a translated call; ``headers`` are the
        client's anthropic-version / anthropic-beta. Upstream errors keep Anthropic's type and message."""
        upstream = resolve(self.settings, self._limits, api_key=call.api_key, base_url=call.base_url,
                           trusted=call.base_url_trusted, timeout_s=call.timeout_s)
        return open_call(self._session, self.name, "POST", upstream, path, json_body=orjson.Fragment(body),
                         headers=headers, map_error=passthrough_error)

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        return await complete_from_stream(self._chunks(call, True))

    async def embed(self, call: EmbedCall) -> EmbedResult:
        raise GatewayError(400, f"The model 'anthropic/{call.model}' does not support embeddings: "
                                "Anthropic has no embeddings API.", param="model", code="embeddings_not_supported")

    async def status(self) -> ProviderStatus:
        if not self.settings.server_key:
            return ProviderStatus(ProviderState.NO_API_KEY, detail=f"set {self.settings.key_env}")
        data, failed = await fetch_listing(self._session, self.settings, self._limits, "/v1/models?limit=1000")
        if failed is not None:
            return failed
        models = [ModelInfo(id=item["id"], owned_by="anthropic",
                            extra={"display_name": item["display_name"]} if item.get("display_name") else {})
                  for item in (data.get("data") if isinstance(data, dict) else None) or ()
                  if isinstance(item, dict) and isinstance(item.get("id"), str)]
        return ProviderStatus(ProviderState.AVAILABLE, models=tuple(models))

    async def unload(self, model: str, base_url: str | None) -> None:
        """Never called: a hosted API holds no model for us (capabilities.unload is NONE)."""
