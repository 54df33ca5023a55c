"""Ollama native adapter for ``ollama/<model>`` (``/api/chat`` with NDJSON streaming).

The native API is used rather than Ollama's /v1 shim because only it carries
``think``, ``format`` schemas, ``keep_alive`` (unload) and full option control.
Non-streaming answers are the collected stream.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import numpy as np
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request, from_media
from gateway.providers.base import (
    Capabilities,
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ModelType,
    ProviderState,
    ProviderStatus,
    Unload,
)
from gateway.providers.collect import complete_from_stream
from gateway.providers.http import (
    ErrorMapper,
    fetch_listing,
    ndjson_lines,
    open_call,
    parse_error_payload,
    read_json,
)
from gateway.providers.translate import check_unsupported, image_part_url
from gateway.providers.upstream import Auth, UpstreamSettings, resolve, strip_v1
from media.data_url import base64_image
from media.errors import MediaError

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


def _image_data(url: str) -> str:
    if url.startswith("data:"):
        try:
            return base64_image(url)[1]
        except MediaError as exc:
            raise from_media(exc) from None
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


def think(call: ChatCall) -> bool | None:
    """Ollama's ``think``: a boolean (levels exist only for a few models, so they become true)."""
    level = call.thinking
    if level is None or level == "auto":
        return None
    if level in ("low", "medium", "high"):
        call.notices.append(f"thinking={level} sent as think=true (no levels on this provider)")
    return level != "off"


def build_request(call: ChatCall) -> dict[str, Any]:
    check_unsupported(call, "ollama")
    chat = call.request
    request: dict[str, Any] = {"model": call.model, "messages": convert_messages(chat.messages), "stream": True}
    options = {target: getattr(chat, source) for source, target in OPTION_NAMES.items()
               if getattr(chat, source) is not None}
    if chat.token_limit:
        options["num_predict"] = chat.token_limit
    if chat.stop_list:
        options["stop"] = chat.stop_list
    if options:
        request["options"] = options
    tools = []
    for tool in chat.tools or ():
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            call.notices.append(f"tool of type {tool.get('type')!r} dropped (ollama takes function tools)")
            continue
        tools.append({"type": "function", "function": tool["function"]})
    if tools and chat.tool_choice != "none":
        request["tools"] = tools
        if chat.tool_choice not in (None, "auto"):
            call.notices.append("tool_choice other than auto/none is not enforced by ollama")
    response_format = chat.response_format or {}
    if response_format.get("type") == "json_object":
        request["format"] = "json"
    elif response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        request["format"] = schema if isinstance(schema, dict) else "json"
    level = think(call)
    if level is not None:
        request["think"] = level
    return request


def _model_errors(model: str) -> ErrorMapper:
    """Ollama answers 404 for a model it does not have: say which."""

    def map_error(status: int, payload: bytes, headers: Mapping[str, str]) -> GatewayError | None:
        if status != 404:
            return None
        message = parse_error_payload(payload)[0] or "ollama rejected the request (HTTP 404)."
        return GatewayError(404, f"The model 'ollama/{model}' does not exist: {message}", param="model",
                            code="model_not_found")

    return map_error


class OllamaProvider:
    """``ollama/<model>`` over Ollama's native API."""

    name = "ollama"
    # Unloading frees the model for every user of a shared Ollama: opt-in only (unload_after policy).
    capabilities = Capabilities(vision=True, embeddings=True, unload=Unload.SHARED, client_base_url=True)

    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._limits = config.limits
        # Ollama has no key of its own; one may be configured for an authenticating proxy in front.
        self.settings = UpstreamSettings.from_config(config, self.name, default_url=DEFAULT_BASE_URL,
                                                     auth=Auth.BEARER, normalise=strip_v1)

    async def _chunks(self, call: ChatCall, with_usage: bool) -> AsyncIterator[dict[str, Any]]:
        request = build_request(call)
        upstream = resolve(self.settings, self._limits, api_key=call.api_key, base_url=call.base_url,
                           trusted=call.base_url_trusted, timeout_s=call.timeout_s)
        chunk_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        tool_count = 0
        final: dict[str, Any] | None = None
        async with open_call(self._session, self.name, "POST", upstream, "/api/chat", json_body=request,
                             map_error=_model_errors(call.model)) as response:
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
        if final is None:
            raise GatewayError(502, "Provider ollama ended the stream before done.", type="server_error")
        finish = "tool_calls" if tool_count else DONE_REASONS.get(str(final.get("done_reason")), "stop")
        prompt = int(final.get("prompt_eval_count") or 0)
        completion = int(final.get("eval_count") or 0)
        # for the access log and /metrics, whether or not the client asked for a usage chunk
        call.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        yield chunk({}, finish)
        if with_usage:
            yield {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                   "choices": [], "usage": call.usage}

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(call, call.include_usage)

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        return await complete_from_stream(self._chunks(call, True))

    async def embed(self, call: EmbedCall) -> EmbedResult:
        upstream = resolve(self.settings, self._limits, api_key=call.api_key, base_url=call.base_url,
                           trusted=call.base_url_trusted)
        body: dict[str, Any] = {"model": call.model, "input": call.texts, "truncate": bool(call.truncate)}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        async with open_call(self._session, self.name, "POST", upstream, "/api/embed", json_body=body,
                             map_error=_model_errors(call.model)) as response:
            data = await read_json(response, self.name)
        try:
            vectors = np.asarray(data["embeddings"], dtype=np.float32)
            tokens = int(data.get("prompt_eval_count") or 0)
        except (KeyError, TypeError, ValueError):
            raise GatewayError(502, "Provider ollama sent a malformed embeddings response.", type="server_error") from None
        if vectors.ndim != 2 or len(vectors) != len(call.texts):
            raise GatewayError(502, "Provider ollama returned the wrong number of embeddings.", type="server_error")
        return EmbedResult(vectors=vectors, prompt_tokens=tokens)

    async def status(self) -> ProviderStatus:
        data, failed = await fetch_listing(self._session, self.settings, self._limits, "/api/tags")
        if failed is not None:
            return failed
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
        upstream = resolve(self.settings, self._limits, base_url=base_url, timeout_s=30.0)
        async with open_call(self._session, self.name, "POST", upstream, "/api/generate",
                             json_body={"model": model, "keep_alive": 0}) as response:
            await read_json(response, self.name)
