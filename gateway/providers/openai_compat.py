"""One adapter for every OpenAI-compatible vendor (OpenAI, OpenRouter, LM Studio, vLLM, any /v1 URL).

The vendors differ only in data (presets.toml): base URL, auth style, whether a key is
required, how `thinking` is expressed, whether they serve /v1/responses. The request
body goes upstream as the client sent it (the canonical request's ``openai_body``) apart
from ``model``; non-streaming answers are passed through, not rebuilt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.providers.base import (
    Capabilities,
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ModelType,
    ProviderState,
    ProviderStatus,
)
from gateway.providers.http import fetch_listing, open_call, read_json, sse_data
from gateway.providers.media import MediaCall, MediaReply, relay
from gateway.providers.upstream import Auth, Upstream, UpstreamSettings, resolve

_EMBEDDING_HINTS = ("embed", "embedding", "bge-", "e5-", "minilm", "nomic-embed")
# Upstream model ids that name a media model (OpenAI's own and the usual open ones), by type.
_MEDIA_HINTS = ((ModelType.AUDIO_TRANSCRIPTION, ("whisper", "transcribe")), (ModelType.AUDIO_SPEECH, ("tts",)),
                (ModelType.IMAGE_GENERATION, ("dall-e", "gpt-image", "stable-diffusion", "sdxl", "flux")))


def model_type_of(model_id: str) -> ModelType:
    """What an upstream's model id is listed as in /v1/models (it says nothing else about itself)."""
    lowered = model_id.lower()
    for kind, hints in _MEDIA_HINTS:
        if any(hint in lowered for hint in hints):
            return kind
    return ModelType.EMBEDDING if any(h in lowered for h in _EMBEDDING_HINTS) else ModelType.TEXT

MAX_REMEMBERED_SERVERS = 1024  # client-chosen base URLs included: a bound, not a cache of every URL seen


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    base_url: str | None = None
    auth: str = "bearer"
    requires_key: bool = False
    probe_default: bool = False
    thinking: str = "none"
    responses: bool = False  # serves /v1/responses itself: the Responses door passes requests through
    media: bool = True  # serves /v1/audio/* and /v1/images/* (and takes input_audio in chat): relayed as they are
    stream_usage: bool = True  # takes stream_options.include_usage: asked on every stream for the token counts
    extra_headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- thinking, reasoning fields


def apply_thinking(call: ChatCall, body: dict[str, Any], style: str) -> None:
    """Express ``call.thinking`` in an OpenAI-compatible body, by the preset's style."""
    level = call.thinking
    if level is None or level == "auto":
        return
    if style == "reasoning_effort":
        if "reasoning_effort" in body:
            return  # the client's own value wins
        effort = {"on": "medium", "off": "minimal"}.get(level, level)
        if effort != level:
            call.notices.append(f"thinking={level} sent as reasoning_effort={effort}")
        body["reasoning_effort"] = effort
    elif style == "chat_template_kwargs":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = level != "off"
        body["chat_template_kwargs"] = kwargs
        if level in ("low", "medium", "high"):
            call.notices.append(f"thinking={level} sent as enable_thinking=true (no levels on this provider)")
    else:
        call.notices.append(f"thinking={level} ignored: provider {call.provider} has no thinking control")


def normalize_reasoning(item: dict[str, Any]) -> None:
    """Rename an upstream's ``reasoning`` field to ``reasoning_content`` in a message or delta."""
    if "reasoning" in item:
        value = item.pop("reasoning")
        if isinstance(value, str) and not item.get("reasoning_content"):
            item["reasoning_content"] = value


def normalize_reasoning_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Apply ``normalize_reasoning`` to every choice of a chunk or a completion; returns it."""
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            for key in ("delta", "message"):
                part = choice.get(key)
                if isinstance(part, dict):
                    normalize_reasoning(part)
    return payload


class OpenAICompatibleProvider:
    def __init__(self, preset: Preset, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self.name = preset.name
        self.preset = preset
        self._session = session
        self._limits = config.limits
        self.settings = UpstreamSettings.from_config(
            config, preset.name, default_url=preset.base_url, requires_key=preset.requires_key,
            auth=Auth(preset.auth), headers=preset.extra_headers)
        self.capabilities = Capabilities(vision=True, embeddings=True, embedding_token_ids=True,
                                         client_base_url=True, requires_key=preset.requires_key,
                                         native_responses=preset.responses, audio_transcription=preset.media,
                                         audio_speech=preset.media, image_generation=preset.media,
                                         audio_input=preset.media)
        configured = config.provider_settings(preset.name).stream_usage
        self.stream_usage = preset.stream_usage if configured is None else configured
        self._refuses_stream_options: set[str] = set()  # base URLs that answered 400 to stream_options

    # ------------------------------------------------------------------ plumbing

    def upstream(self, api_key: str | None, base_url: str | None, trusted: bool = False,
                 timeout_s: float | None = None) -> Upstream:
        return resolve(self.settings, self._limits, api_key=api_key, base_url=base_url, trusted=trusted,
                       timeout_s=timeout_s)

    def _call_upstream(self, call: ChatCall) -> Upstream:
        return self.upstream(call.api_key, call.base_url, call.base_url_trusted, call.timeout_s)

    def _body(self, call: ChatCall, stream: bool, ask_usage: bool = False) -> dict[str, Any]:
        body = call.request.openai_body()
        body["model"] = call.model
        if stream:
            body["stream"] = True
            if ask_usage:
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        apply_thinking(call, body, self.preset.thinking)
        return body

    # ------------------------------------------------------------------ chat

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        upstream = self._call_upstream(call)
        async with open_call(self._session, self.name, "POST", upstream, "/chat/completions",
                             json_body=self._body(call, stream=False)) as response:
            data = await read_json(response, self.name)
        if not isinstance(data, dict) or "choices" not in data:
            raise GatewayError(502, f"Provider {self.name} sent a response without choices.", type="server_error")
        return normalize_reasoning_fields(data)

    @asynccontextmanager
    async def _open_stream(self, call: ChatCall, upstream: Upstream) -> AsyncIterator[tuple[aiohttp.ClientResponse,
                                                                                             bool]]:
        """The streamed call's response, and whether acore asked for the usage chunk itself (stream_usage:
        it then keeps it on the call for the logs and does not pass it on). A server that rejects
        ``stream_options`` (a 400/422 naming it: nothing was generated) is asked again without it, once,
        and not asked again for as long as this process runs."""
        ask = (self.stream_usage and not call.include_usage
               and upstream.base_url not in self._refuses_stream_options)
        opened = False
        try:
            async with open_call(self._session, self.name, "POST", upstream, "/chat/completions",
                                 json_body=self._body(call, stream=True, ask_usage=ask)) as response:
                opened = True
                yield response, ask
                return
        except GatewayError as exc:
            if opened or not ask or exc.status not in (400, 422) or "stream_options" not in exc.message:
                raise
        if len(self._refuses_stream_options) < MAX_REMEMBERED_SERVERS:
            self._refuses_stream_options.add(upstream.base_url)
        async with open_call(self._session, self.name, "POST", upstream, "/chat/completions",
                             json_body=self._body(call, stream=True)) as response:
            yield response, False

    async def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        upstream = self._call_upstream(call)
        saw_finish = False
        first = True
        async with self._open_stream(call, upstream) as (response, hide_usage):
            async for _event, data in sse_data(response, self.name):
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise GatewayError(502, f"Provider {self.name} sent an invalid stream event.", type="server_error") from None
                if not isinstance(chunk, dict):
                    raise GatewayError(502, f"Provider {self.name} sent an invalid stream event.", type="server_error")
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise GatewayError(502, f"Provider {self.name} failed mid-stream: {message}", type="server_error")
                if hide_usage and "usage" in chunk:
                    usage = chunk.pop("usage")
                    if usage:
                        call.usage = usage
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk
                # One pass over the choices (this is the hot loop of a streamed answer): note the finish,
                # give the first delta its role (some servers omit it) and name reasoning reasoning_content.
                choices = chunk.get("choices")
                if choices:
                    for choice in choices:
                        if not isinstance(choice, dict):
                            continue
                        if choice.get("finish_reason"):
                            saw_finish = True
                        delta = choice.get("delta")
                        if isinstance(delta, dict):
                            if first and "role" not in delta:
                                delta["role"] = "assistant"
                            if "reasoning" in delta:
                                normalize_reasoning(delta)
                    first = False
                yield chunk
        if not saw_finish:
            # e.g. llama-cpp-python's server ends an interrupted stream with [DONE] and no finish_reason.
            raise GatewayError(502, f"Provider {self.name} ended the stream without a finish_reason.", type="server_error")

    # ------------------------------------------------------------------ responses (native_responses presets)

    def responses(self, call: ChatCall, body: Mapping[str, Any]) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """POST /v1/responses with ``body`` as given (the door rewrote only model and extensions)."""
        accept = {"Accept": "text/event-stream"} if call.stream else {}
        return open_call(self._session, self.name, "POST", self._call_upstream(call), "/responses", json_body=body,
                         headers=accept)

    # ------------------------------------------------------------------ media (/v1/audio/*, /v1/images/*)

    def media(self, call: MediaCall) -> AbstractAsyncContextManager[MediaReply]:
        """The upstream's own route, with the call's fields and uploads; its answer streams back as it comes."""
        upstream = self.upstream(call.api_key, call.base_url, call.base_url_trusted)
        return relay(self._session, self.name, upstream, call)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, call: EmbedCall) -> EmbedResult:
        upstream = self.upstream(call.api_key, call.base_url, call.base_url_trusted)
        inputs: list[Any] = call.token_ids if call.token_ids is not None else call.texts
        body: dict[str, Any] = {"model": call.model, "input": inputs, "encoding_format": "float"}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        async with open_call(self._session, self.name, "POST", upstream, "/embeddings", json_body=body) as response:
            data = await read_json(response, self.name)
        try:
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in items], dtype=np.float32)
            tokens = int((data.get("usage") or {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError):
            raise GatewayError(502, f"Provider {self.name} sent a malformed embeddings response.", type="server_error") from None
        if vectors.ndim != 2 or len(vectors) != len(inputs):
            raise GatewayError(502, f"Provider {self.name} returned the wrong number of embeddings.", type="server_error")
        return EmbedResult(vectors=vectors, prompt_tokens=tokens)

    # ------------------------------------------------------------------ discovery

    async def status(self) -> ProviderStatus:
        settings = self.settings
        if not settings.base_url:
            return ProviderStatus(ProviderState.NOT_CONFIGURED, detail=f"set {settings.url_setting}")
        if settings.requires_key and not settings.server_key:
            return ProviderStatus(ProviderState.NO_API_KEY, detail=f"set {settings.key_env}")
        data, failed = await fetch_listing(self._session, settings, self._limits, "/models")
        if failed is not None:
            return failed
        models = []
        for item in (data.get("data") if isinstance(data, dict) else None) or ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                model_id = item["id"]
                models.append(ModelInfo(id=model_id, type=model_type_of(model_id), owned_by=item.get("owned_by")))
        return ProviderStatus(ProviderState.AVAILABLE, models=tuple(models))

    async def unload(self, model: str, base_url: str | None) -> None:
        """Never called: OpenAI-compatible servers have no standard unload (capabilities.unload is NONE)."""

