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

# Kept local (not imported from protocol.openai) so protocol.openai can import this module.
_Temperature = Annotated[float, Meta(ge=0, le=2)]
_Probability = Annotated[float, Meta(ge=0, le=1)]
_PositiveInt = Annotated[int, Meta(ge=1)]
_ShortString = Annotated[str, Meta(max_length=1024)]


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """POST /v1/responses. ``model`` is ``provider/model``; ``input`` (or the legacy ``messages``) is required."""

    model: _ShortString | None = None
    input: str | list[dict[str, Any]] | None = None
    # AbstractCore's legacy form: a chat ``messages`` list instead of ``input``.
    messages: list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: _PositiveInt | None = None
    max_tokens: _PositiveInt | None = None  # sent by some clients instead of max_output_tokens
    temperature: _Temperature | None = None
    top_p: _Probability | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    include: list[str] | None = None
    store: bool | None = None
    previous_response_id: _ShortString | None = None
    prompt_cache_key: _ShortString | None = None
    client_metadata: dict[str, Any] | None = None
    user: str | None = None
    truncation: str | None = None
    # AbstractCore extensions (as on chat completions)
    thinking: bool | str | None = None
    api_key: str | None = None
    base_url: str | None = None
    unload_after: bool | None = None
    timeout_s: float | None = None
