"""The one small interface every provider implements.

A provider turns the canonical request (the OpenAI chat shape) into its own
wire format and back. Providers do no I/O at import and hold no global state;
HTTP providers share the app's pooled ClientSession.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True)
class ChatCall:
    """One chat request on its way to a provider."""

    request_id: str
    provider: str
    model: str  # the provider's own model id ("anthropic/claude-3.5" for openrouter)
    requested_model: str  # echoed back to the client as "model"
    body: dict[str, Any]  # OpenAI chat body without gateway-only fields; unknown fields kept
    stream: bool = False
    api_key: str | None = None  # supplied by the client (body api_key or X-Provider-API-Key)
    base_url: str | None = None  # supplied by the client; already checked against the policy
    base_url_trusted: bool = False  # on the operator's allowlist: the server key may go there
    thinking: str | None = None  # normalised: auto|on|off|low|medium|high
    unload_after: bool = False
    timeout_s: float | None = None
    notices: list[str] = field(default_factory=list)  # -> x-acore-notice response header

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return bool(isinstance(options, dict) and options.get("include_usage"))


@dataclass(slots=True)
class EmbedCall:
    request_id: str
    provider: str
    model: str
    requested_model: str
    texts: list[str]
    dimensions: int | None = None
    truncate: bool = False
    # Token-id inputs (OpenAI accepts them); only OpenAI-compatible upstreams take these, with texts empty.
    token_ids: list[list[int]] | None = None
    api_key: str | None = None
    base_url: str | None = None
    base_url_trusted: bool = False
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbedResult:
    vectors: np.ndarray  # float32 (count, dims), in input order
    prompt_tokens: int


class ModelType(enum.StrEnum):
    TEXT = "text-generation"
    EMBEDDING = "text-embedding"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str  # without the provider prefix
    type: ModelType = ModelType.TEXT
    owned_by: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderState(enum.StrEnum):
    AVAILABLE = "available"
    UNREACHABLE = "unreachable"
    NO_API_KEY = "no_api_key"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    state: ProviderState
    models: tuple[ModelInfo, ...] = ()
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """Stream a chat, embed, list models. A new provider is one module implementing this."""

    name: str

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        """A complete ``chat.completion`` object (``model`` is set by the caller)."""
        ...

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects; raises GatewayError before or during the stream."""
        ...

    async def embed(self, call: EmbedCall) -> EmbedResult: ...

    async def status(self) -> ProviderStatus:
        """Probe the provider: its state and models (used by /v1/models and /providers)."""
        ...

    async def unload(self, model: str, base_url: str | None) -> None:
        """Ask the provider to free a model (``unload_after``)."""
        ...
