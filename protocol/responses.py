"""OpenAI Responses API request type (POST /v1/responses).

Only what acore reads is typed; items, tools and parts stay plain objects
because clients (Codex CLI above all) send item and tool types that appear
before any spec lists them, and those must be tolerated, not rejected. Unknown
top-level fields are accepted too. The gateway converts the rest by hand.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from protocol.openai import LogitBias, Penalty, PositiveInt, Probability, ShortString, Temperature


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """POST /v1/responses. ``model`` is ``provider/model``; ``input`` (or the legacy ``messages``) is required."""

    model: ShortString | None = None
    input: str | list[dict[str, Any]] | None = None
    # AbstractCore's legacy form: a chat ``messages`` list instead of ``input``.
    messages: list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None  # sent by some clients instead of max_output_tokens
    temperature: Temperature | None = None
    top_p: Probability | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    include: list[str] | None = None
    store: bool | None = None
    previous_response_id: ShortString | None = None
    prompt_cache_key: ShortString | None = None
    client_metadata: dict[str, Any] | None = None
    user: str | None = None
    truncation: str | None = None
    # Chat sampling fields some Responses clients send: they mean the same as on chat completions.
    seed: int | None = None
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Probability | None = None
    repeat_penalty: Annotated[float, Meta(ge=0)] | None = None
    # AbstractCore extensions (as on chat completions)
    thinking: bool | str | None = None
    api_key: str | None = None
    base_url: str | None = None
    unload_after: bool | None = None
    timeout_s: float | None = None
    agent_format: ShortString | None = None
    models: Annotated[list[ShortString], Meta(max_length=64)] | None = None  # fallbacks, as on chat completions
