"""Anthropic Messages API request types (POST /v1/messages and /v1/messages/count_tokens).

They check the scalar fields once, at the door, with Anthropic's own ranges (temperature 0-1,
max_tokens required on /v1/messages). Content blocks and tools stay the JSON objects the client
sent: the door converts them (gateway/doors/messages/request.py) and names the block that is
wrong, and an ``anthropic/…`` passthrough forwards them untouched. Unknown fields are allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.openai import PositiveInt, Probability, ShortString


class _Base(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    pass


class MessageParam(_Base):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolParam(_Base):
    """A client tool (``input_schema``) or a server tool (``type`` such as ``web_search_20250305``)."""

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Base):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Base):
    """``enabled`` (with a budget), ``disabled``, or a newer kind (``adaptive``, ``between_tools``): on."""

    type: ShortString
    budget_tokens: Annotated[int, Meta(ge=0)] | None = None


class Metadata(_Base):
    user_id: str | None = None


class CountTokensRequest(_Base, kw_only=True):
    """POST /v1/messages/count_tokens: what shapes the prompt, nothing that samples."""

    model: ShortString
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """POST /v1/messages."""

    max_tokens: PositiveInt
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: Metadata | None = None
