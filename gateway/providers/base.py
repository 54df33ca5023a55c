"""The one small interface every provider implements, and what each declares it can do.

A provider turns the canonical request (protocol.chat.ChatRequest, the OpenAI chat shape)
into its own wire format and back. Providers do no I/O at import and hold no global state;
HTTP providers share the app's pooled ClientSession. Routes and hooks never ask what a
provider *is*: they read its ``capabilities``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp
import numpy as np

from protocol.chat import ChatRequest

if TYPE_CHECKING:
    from gateway.pipeline.routing import Plan


class Unload(enum.StrEnum):
    """What ``unload_after`` can do on a provider."""

    NONE = "none"  # nothing to free (hosted APIs, OpenAI-compatible servers): reported as a notice
    FREE = "free"  # the model is ours to free (local workers)
    SHARED = "shared"  # frees it for every user of a shared server: only with the operator's opt-in


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider supports; the doors and hooks decide by these alone."""

    stream: bool = True
    tools: bool = True
    vision: bool = False
    embeddings: bool = False
    embedding_token_ids: bool = False  # token-id arrays as embeddings input
    prompt_cache: bool = False  # the /acore/prompt_cache control plane (local workers)
    unload: Unload = Unload.NONE
    client_base_url: bool = False  # a request may name its own base_url
    requires_key: bool = False  # a client base_url then needs the client's own key
    native_responses: bool = False  # has its own /v1/responses: the Responses door passes through
    native_messages: bool = False  # has its own Anthropic /v1/messages (and count_tokens): the Messages door passes through
    count_tokens: bool = False  # counts a prompt's tokens with the model's own tokenizer (local workers)
    live_status: bool = False  # status changes by the second: never cache it
    # The media routes (/v1/audio/*, /v1/images/*): served by the provider itself (gateway/providers/media.py).
    audio_transcription: bool = False  # /v1/audio/transcriptions and /translations
    audio_speech: bool = False  # /v1/audio/speech
    image_generation: bool = False  # /v1/images/generations and /edits
    audio_input: bool = False  # chat input_audio parts go to the model as they are ([audio] strategy native)


@dataclass(slots=True)
class ChatCall:
    """One chat request on its way to a provider."""

    request_id: str
    provider: str
    model: str  # the provider's own model id ("anthropic/claude-3.5" for openrouter)
    requested_model: str  # echoed back to the client as "model"
    request: ChatRequest
    api_key: str | None = None  # supplied by the client (body api_key or X-Provider-API-Key)
    base_url: str | None = None  # supplied by the client; already checked against the policy
    base_url_trusted: bool = False  # on the operator's allowlist: the server key may go there
    notices: list[str] = field(default_factory=list)  # -> x-acore-notice response header
    # The usage a translating provider computed (Anthropic, Ollama, local workers): set even when the
    # client did not ask for a usage chunk, so the access log and /metrics count a stream's tokens.
    usage: dict[str, Any] | None = None
    # An alias, group or request ``models`` list: the targets the pipeline tries in turn (pipeline/routing.py).
    plan: Plan | None = None
    served_by: str | None = None  # the target that answered (x-acore-served-by)

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @property
    def include_usage(self) -> bool:
        return self.request.include_usage

    @property
    def thinking(self) -> str | None:
        return self.request.thinking_level

    @property
    def timeout_s(self) -> float | None:
        return self.request.timeout_s

    @property
    def unload_after(self) -> bool:
        return bool(self.request.unload_after)


@dataclass(slots=True)
class EmbedCall:
    request_id: str
    provider: str
    model: str
    requested_model: str
    texts: list[str]
    dimensions: int | None = None
    truncate: bool = False
    # Token-id inputs (OpenAI accepts them); only providers with embedding_token_ids take these, texts empty.
    token_ids: list[list[int]] | None = None
    api_key: str | None = None
    base_url: str | None = None
    base_url_trusted: bool = False


@dataclass(slots=True)
class EmbedResult:
    vectors: np.ndarray  # float32 (count, dims), in input order
    prompt_tokens: int


class ModelType(enum.StrEnum):
    TEXT = "text-generation"
    EMBEDDING = "text-embedding"
    AUDIO_TRANSCRIPTION = "audio-transcription"
    AUDIO_SPEECH = "audio-speech"
    IMAGE_GENERATION = "image-generation"


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
    capabilities: Capabilities

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        """A complete ``chat.completion`` object (``model`` is set by the caller)."""
        ...

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects; raises GatewayError before or during the stream.

        The first chunk's delta carries ``role``; nothing is sent before the upstream answered,
        so an early failure keeps its HTTP status."""
        ...

    async def embed(self, call: EmbedCall) -> EmbedResult:
        """Only called when ``capabilities.embeddings``."""
        ...

    async def status(self) -> ProviderStatus:
        """Probe the provider: its state and models (used by /v1/models and /providers)."""
        ...

    async def unload(self, model: str, base_url: str | None) -> None:
        """Ask the provider to free a model (``unload_after``); only called when it can."""
        ...


class MessagesProvider(Provider, Protocol):
    """A provider with ``capabilities.native_messages``: it serves the Anthropic Messages API itself."""

    def messages(self, call: ChatCall, body: bytes, path: str,
                 headers: Mapping[str, str]) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """POST ``path`` (/v1/messages or /v1/messages/count_tokens) with ``body`` as it is; yields the
        response once its headers arrived with a 2xx status."""
        ...


class TokenCounter(Provider, Protocol):
    """A provider with ``capabilities.count_tokens``."""

    async def count_tokens(self, call: ChatCall) -> int:
        """The prompt tokens of ``call.request`` (messages and tools) with the model's own tokenizer."""
        ...


class ResponsesProvider(Provider, Protocol):
    """A provider with ``capabilities.native_responses``: it serves the Responses API itself."""

    def responses(self, call: ChatCall, body: Mapping[str, Any]) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """POST /responses with ``body``; yields the response once its headers arrived with a 2xx status."""
        ...
