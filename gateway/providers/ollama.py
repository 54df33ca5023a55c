"""Ollama native adapter for ``ollama/<model>`` (``/api/chat`` with NDJSON streaming).

The native API is used rather than Ollama's /v1 shim because only it carries
``think``, ``format`` schemas, ``keep_alive`` (unload) and full option control.
Non-streaming answers are the collected stream.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.providers.base import (
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ModelType,
    ProviderState,
    ProviderStatus,
)
from gateway.providers.collect import complete_from_stream
from gateway.providers.http import ndjson_lines, open_upstream, read_json
from gateway.providers.translate import check_unsupported, image_part_url
from gateway.thinking import ollama_think

DEFAULT_BASE_URL = "http://localhost:11434"
# OpenAI body field -> Ollama option name, for those Ollama has.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
DONE_REASONS = {"stop": "stop", "length": "length"}
_EMBED_HINTS = ("bert", "embed")


def _base(url: str) -> str:
    """Accept a base written with /v1 (Ollama's OpenAI shim) and use the native root."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _image_data(url: str) -> str:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise bad_request("Image data URLs must be base64 (data:image/png;base64,...).", param="messages")
        return data
    # The media subsystem turns image URLs into data URLs before providers see them; a URL that is
    # still here was not fetched by the gateway's policy, and Ollama cannot fetch it itself.
    raise bad_request("ollama takes images as data URLs only (data:image/...;base64,...): send the image inline.",
                      param="messages")


def _content(content: Any) -> tuple[str, list[str]]:
    """OpenAI content -> (text, base64 images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request("Message content must be a string or a list of parts.", param="messages")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            texts.append(str(part.get("text") or ""))
        elif kind in ("image_url", "input_image"):
            images.append(_image_data(image_part_url(part)))
        else:
            raise bad_request(f"Content part type {kind!r} is not supported by ollama.", param="messages")
    return "\n".join(texts), images


def convert_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool_call_id -> function name (Ollama matches results by name)
    for message in messages:
        role = message.get("role")
        text, images = _content(message.get("content"))
        entry: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            entry["images"] = images
        if role == "assistant":
            calls = []
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                arguments = function.get("arguments") or "{}"
                try:
                    parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
                except orjson.JSONDecodeError:
                    raise bad_request(f"tool call {call.get('id')!r} has arguments that are not JSON.",
                                      param="messages") from None
                calls.append({"function": {"name": function.get("name") or "", "arguments": parsed}})
                if call.get("id"):
                    tool_names[call["id"]] = function.get("name") or ""
            if calls:
                entry["tool_calls"] = calls
            if isinstance(message.get("reasoning_content"), str):
                entry["thinking"] = message["reasoning_content"]
        elif role in ("tool", "function"):
            entry["role"] = "tool"
            name = tool_names.get(message.get("tool_call_id") or "") or message.get("name")
            if name:
                entry["tool_name"] = name
        elif role not in ("system", "developer", "user"):
            raise bad_request(f"Unknown message role {role!r}.", param="messages")
        out.append(entry)
    return out


def build_request(call: ChatCall) -> dict[str, Any]:
    check_unsupported(call, "ollama")
    body = call.body
    request: dict[str, Any] = {"model": call.model, "messages": convert_messages(body.get("messages") or []),
                               "stream": True}
    options = {target: body[source] for source, target in OPTION_NAMES.items() if body.get(source) is not None}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        request["options"] = options
    tools = []
    for tool in body.get("tools") or ():
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            call.notices.append(f"tool of type {tool.get('type')!r} dropped (ollama takes function tools)")
            continue
        tools.append({"type": "function", "function": tool["function"]})
    if tools and body.get("tool_choice") != "none":
        request["tools"] = tools
        if body.get("tool_choice") not in (None, "auto"):
            call.notices.append("tool_choice other than auto/none is not enforced by ollama")
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        request["format"] = "json"
    elif response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        request["format"] = schema if isinstance(schema, dict) else "json"
    think = ollama_think(call)
    if think is not None:
        request["think"] = think
    return request


class OllamaProvider:
    """``ollama/<model>`` over Ollama's native API."""

    name = "ollama"
    takes_base_url = True
    requires_key = False
    # Unloading frees the model for every user of a shared Ollama: opt-in only (unload_after policy).
    can_unload = True
    unload_needs_opt_in = True

    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        settings = config.provider_settings(self.name)
        self._session = session
        self._limits = config.limits
        self.base_url = _base(settings.base_url or DEFAULT_BASE_URL)
        # Ollama has no key of its own; one may be configured for an authenticating proxy in front.
        self._server_key = settings.api_key or config.env_value(settings.api_key_env)

    def _endpoint(self, base_url: str | None, api_key: str | None, trusted: bool) -> tuple[str, dict[str, str]]:
        if base_url:
            key = api_key or (self._server_key if trusted else None)
            base = _base(base_url)
        else:
            key = api_key or self._server_key
            base = self.base_url
        return base, ({"Authorization": f"Bearer {key}"} if key else {})

    def _timeouts(self, timeout_s: float | None) -> dict[str, float]:
        first = timeout_s if timeout_s and timeout_s > 0 else self._limits.first_byte_timeout_s
        return {"first_byte_timeout_s": first, "read_timeout_s": max(first, self._limits.stream_idle_timeout_s)}

    @staticmethod
    def _map_error(exc: GatewayError, model: str) -> GatewayError:
        if exc.status == 404:
            return GatewayError(404, f"The model 'ollama/{model}' does not exist: {exc.message}",
                                param="model", code="model_not_found")
        return exc

    async def _chunks(self, call: ChatCall, with_usage: bool) -> AsyncIterator[dict[str, Any]]:
        request = build_request(call)
        base, headers = self._endpoint(call.base_url, call.api_key, call.base_url_trusted)
        chunk_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        tool_count = 0
        final: dict[str, Any] | None = None
        try:
            async with open_upstream(self._session, self.name, "POST", f"{base}/api/chat", headers=headers,
                                     json_body=request, **self._timeouts(call.timeout_s)) as response:
                started = False
                async for line in ndjson_lines(response, self.name):
                    if not isinstance(line, dict):
                        raise GatewayError(502, "Provider ollama sent an invalid stream line.", type="server_error")
                    if "error" in line:
                        raise GatewayError(502, f"Provider ollama failed mid-stream: {line['error']}",
                                           type="server_error")
                    if not started:
                        # Sent with the first line, not the headers: an error line before any output
                        # then still reaches the client as an HTTP status, not a 200 stream.
                        started = True
                        yield chunk({"role": "assistant", "content": ""})
                    message = line.get("message") or {}
                    if message.get("thinking"):
                        yield chunk({"reasoning_content": message["thinking"]})
                    if message.get("content"):
                        yield chunk({"content": message["content"]})
                    calls = []
                    for tool_call in message.get("tool_calls") or ():
                        function = tool_call.get("function") or {}
                        arguments = function.get("arguments")
                        # Ollama sends arguments as an object; OpenAI clients expect a JSON string.
                        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
                        calls.append({"index": tool_count, "id": "call_" + secrets.token_hex(12), "type": "function",
                                      "function": {"name": function.get("name") or "", "arguments": text}})
                        tool_count += 1
                    if calls:
                        yield chunk({"tool_calls": calls})
                    if line.get("done"):
                        final = line
                        break
        except GatewayError as exc:
            raise self._map_error(exc, call.model) from None
        if final is None:
            raise GatewayError(502, "Provider ollama ended the stream before done.", type="server_error")
        finish = "tool_calls" if tool_count else DONE_REASONS.get(str(final.get("done_reason")), "stop")
        yield chunk({}, finish)
        if with_usage:
            prompt = int(final.get("prompt_eval_count") or 0)
            completion = int(final.get("eval_count") or 0)
            yield {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                   "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                            "total_tokens": prompt + completion}}

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(call, call.include_usage)

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        return await complete_from_stream(self._chunks(call, True))

    async def embed(self, call: EmbedCall) -> EmbedResult:
        base, headers = self._endpoint(call.base_url, call.api_key, call.base_url_trusted)
        body: dict[str, Any] = {"model": call.model, "input": call.texts, "truncate": bool(call.truncate)}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        try:
            async with open_upstream(self._session, self.name, "POST", f"{base}/api/embed", headers=headers,
                                     json_body=body, **self._timeouts(None)) as response:
                data = await read_json(response, self.name)
        except GatewayError as exc:
            raise self._map_error(exc, call.model) from None
        try:
            vectors = np.asarray(data["embeddings"], dtype=np.float32)
            tokens = int(data.get("prompt_eval_count") or 0)
        except (KeyError, TypeError, ValueError):
            raise GatewayError(502, "Provider ollama sent a malformed embeddings response.", type="server_error") from None
        if vectors.ndim != 2 or len(vectors) != len(call.texts):
            raise GatewayError(502, "Provider ollama returned the wrong number of embeddings.", type="server_error")
        return EmbedResult(vectors=vectors, prompt_tokens=tokens)

    async def status(self) -> ProviderStatus:
        base, headers = self._endpoint(None, None, False)
        timeout = self._limits.models_timeout_s
        try:
            async with open_upstream(self._session, self.name, "GET", f"{base}/api/tags", headers=headers,
                                     first_byte_timeout_s=timeout, read_timeout_s=timeout) as response:
                data = await asyncio.wait_for(read_json(response, self.name), timeout)
        except GatewayError as exc:
            return ProviderStatus(ProviderState.UNREACHABLE, detail=exc.message)
        except TimeoutError:
            return ProviderStatus(ProviderState.UNREACHABLE, detail="timed out listing models")
        models = []
        for item in (data.get("models") if isinstance(data, dict) else None) or ():
            name = item.get("name") or item.get("model") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            details = item.get("details") or {}
            families = [str(details.get("family") or ""), *map(str, details.get("families") or ())]
            haystack = " ".join([name, *families]).lower()
            kind = ModelType.EMBEDDING if any(hint in haystack for hint in _EMBED_HINTS) else ModelType.TEXT
            models.append(ModelInfo(id=name, type=kind, owned_by="ollama"))
        return ProviderStatus(ProviderState.AVAILABLE, models=tuple(models))

    async def unload(self, model: str, base_url: str | None) -> None:
        """``keep_alive: 0`` with no prompt makes Ollama free the model at once."""
        base, headers = self._endpoint(base_url, None, False)
        async with open_upstream(self._session, self.name, "POST", f"{base}/api/generate", headers=headers,
                                 json_body={"model": model, "keep_alive": 0},
                                 **self._timeouts(30.0)) as response:
            await read_json(response, self.name)
