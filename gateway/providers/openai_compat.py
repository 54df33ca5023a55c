"""One adapter for every OpenAI-compatible vendor (OpenAI, OpenRouter, LM Studio, vLLM, any /v1 URL).

The vendors differ only in data (presets.toml): base URL, auth style, key variable,
and how `thinking` is expressed. The request body goes upstream unchanged apart
from ``model``; non-streaming answers are passed through, not rebuilt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.providers.base import (
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ModelType,
    ProviderState,
    ProviderStatus,
)
from gateway.providers.http import open_upstream, read_json, sse_data
from gateway.thinking import apply_thinking, normalize_reasoning_fields

_EMBEDDING_HINTS = ("embed", "embedding", "bge-", "e5-", "minilm", "nomic-embed")


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    base_url: str | None = None
    auth: str = "bearer"
    key_env: str | None = None
    requires_key: bool = False
    probe_default: bool = False
    thinking: str = "none"
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one call goes and with which key."""

    base_url: str
    api_key: str | None


class OpenAICompatibleProvider:
    def __init__(self, preset: Preset, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        settings = config.provider_settings(preset.name)
        self.name = preset.name
        self.preset = preset
        self._session = session
        self._limits = config.limits
        self.base_url = (settings.base_url or preset.base_url or "").rstrip("/") or None
        key_env = settings.api_key_env or preset.key_env
        self.key_env = key_env
        self._server_key = settings.api_key or config.env_value(key_env)
        self.configured = bool(self.base_url) and (
            preset.probe_default or bool(settings.base_url) or bool(self._server_key)
        )

    # ------------------------------------------------------------------ plumbing

    def endpoint(self, api_key: str | None, base_url: str | None, trusted: bool = False) -> Endpoint:
        """Resolve URL and key. A server key only goes to the configured URL or an allowlisted one."""
        if base_url:
            # The client chose the URL (already checked by the base_url policy).
            return Endpoint(base_url.rstrip("/"), api_key or (self._server_key if trusted else None))
        if not self.base_url:
            raise GatewayError(
                400,
                f"Provider {self.name} has no base URL: set {self._url_env()} or pass base_url.",
                param="model",
                code="provider_not_configured",
            )
        key = api_key or self._server_key
        if not key and self.preset.requires_key:
            raise GatewayError(
                401,
                f"No API key for provider {self.name}: set {self.key_env} in the gateway's environment "
                "or send X-Provider-API-Key.",
                code="missing_api_key",
            )
        return Endpoint(self.base_url, key)

    def _url_env(self) -> str:
        from gateway.config import PROVIDER_ENV

        return PROVIDER_ENV.get(self.name, (None, None))[0] or f"[providers.{self.name}].base_url"

    def headers(self, key: str | None) -> dict[str, str]:
        headers = dict(self.preset.extra_headers)
        if key and self.preset.auth == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _timeouts(self, call_timeout: float | None) -> dict[str, float]:
        first = call_timeout if call_timeout and call_timeout > 0 else self._limits.first_byte_timeout_s
        return {"first_byte_timeout_s": first, "read_timeout_s": max(first, self._limits.stream_idle_timeout_s)}

    def _body(self, call: ChatCall, stream: bool) -> dict[str, Any]:
        body = dict(call.body)
        body["model"] = call.model
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        apply_thinking(call, body, self.preset.thinking)
        return body

    # ------------------------------------------------------------------ chat

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        endpoint = self.endpoint(call.api_key, call.base_url, call.base_url_trusted)
        async with open_upstream(
            self._session,
            self.name,
            "POST",
            f"{endpoint.base_url}/chat/completions",
            headers=self.headers(endpoint.api_key),
            json_body=self._body(call, stream=False),
            **self._timeouts(call.timeout_s),
        ) as response:
            data = await read_json(response, self.name)
        if not isinstance(data, dict) or "choices" not in data:
            raise GatewayError(502, f"Provider {self.name} sent a response without choices.", type="server_error")
        return normalize_reasoning_fields(data)

    async def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        endpoint = self.endpoint(call.api_key, call.base_url, call.base_url_trusted)
        saw_finish = False
        async with open_upstream(
            self._session,
            self.name,
            "POST",
            f"{endpoint.base_url}/chat/completions",
            headers=self.headers(endpoint.api_key),
            json_body=self._body(call, stream=True),
            **self._timeouts(call.timeout_s),
        ) as response:
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
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        saw_finish = True
                yield normalize_reasoning_fields(chunk)
        if not saw_finish:
            # e.g. llama-cpp-python's server ends an interrupted stream with [DONE] and no finish_reason.
            raise GatewayError(502, f"Provider {self.name} ended the stream without a finish_reason.", type="server_error")

    # ------------------------------------------------------------------ embeddings

    async def embed(self, call: EmbedCall) -> EmbedResult:
        endpoint = self.endpoint(call.api_key, call.base_url, call.base_url_trusted)
        inputs: list[Any] = call.token_ids if call.token_ids is not None else call.texts
        body: dict[str, Any] = {"model": call.model, "input": inputs, "encoding_format": "float"}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        async with open_upstream(
            self._session,
            self.name,
            "POST",
            f"{endpoint.base_url}/embeddings",
            headers=self.headers(endpoint.api_key),
            json_body=body,
            **self._timeouts(None),
        ) as response:
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
        if not self.base_url:
            return ProviderStatus(ProviderState.NOT_CONFIGURED, detail=f"set {self._url_env()}")
        if self.preset.requires_key and not self._server_key:
            return ProviderStatus(ProviderState.NO_API_KEY, detail=f"set {self.key_env}")
        try:
            async with open_upstream(
                self._session,
                self.name,
                "GET",
                f"{self.base_url}/models",
                headers=self.headers(self._server_key),
                first_byte_timeout_s=self._limits.models_timeout_s,
                read_timeout_s=self._limits.models_timeout_s,
            ) as response:
                data = await asyncio.wait_for(read_json(response, self.name), self._limits.models_timeout_s)
        except GatewayError as exc:
            if exc.status in (401, 403):
                return ProviderStatus(ProviderState.NO_API_KEY, detail=exc.message)
            return ProviderStatus(ProviderState.UNREACHABLE, detail=exc.message)
        except TimeoutError:
            return ProviderStatus(ProviderState.UNREACHABLE, detail="timed out listing models")
        models = []
        for item in (data.get("data") if isinstance(data, dict) else None) or ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                model_id = item["id"]
                kind = ModelType.EMBEDDING if any(h in model_id.lower() for h in _EMBEDDING_HINTS) else ModelType.TEXT
                models.append(ModelInfo(id=model_id, type=kind, owned_by=item.get("owned_by")))
        return ProviderStatus(ProviderState.AVAILABLE, models=tuple(models))

    async def unload(self, model: str, base_url: str | None) -> None:
        """OpenAI-compatible servers have no standard unload; nothing to free here."""
