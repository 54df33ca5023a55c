"""The canonical chat request: every front door produces one, every provider adapter consumes it.

It is the OpenAI chat shape, typed. The scalar fields are checked once, at the door, by
``protocol.openai.ChatCompletionRequest`` (or, on the Responses door, by ``ResponsesRequest``);
messages, tools and the other structured fields stay the JSON objects the client sent, so
an OpenAI-compatible upstream gets them unchanged, and fields acore does not know travel in
``extra`` for the same reason. The worker's ``Generate`` is derived here, in one place.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import Generate, SamplingParams
from protocol.openai import ChatCompletionRequest, ChatParams, RequestValidationError, validate

THINKING_LEVELS = ("auto", "on", "off", "low", "medium", "high")
# AbstractCore extension fields: read by the gateway, never sent to an upstream.
EXTENSION_FIELDS = frozenset({"api_key", "base_url", "thinking", "unload_after", "timeout_s", "agent_format",
                              "models"})


class ChatRequest(ChatParams, kw_only=True):
    """One chat request, whichever door it came through. Hooks may rewrite ``messages``."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Fields acore does not know: passed through to OpenAI-compatible upstreams as they came.
    extra: dict[str, Any] = {}

    @property
    def token_limit(self) -> int | None:
        """max_completion_tokens (the current name) or max_tokens."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def thinking_level(self) -> str | None:
        """The normalised ``thinking`` (parse_chat and the Responses door store it normalised)."""
        return self.thinking if isinstance(self.thinking, str) else None

    @property
    def uses_tools(self) -> bool:
        """Tools are offered and the model may call them (tool_choice "none" means text only)."""
        return bool(self.tools) and self.tool_choice != "none"

    def openai_body(self) -> dict[str, Any]:
        """The OpenAI chat body for an upstream: every field the client set, ours left out."""
        body = dict(self.extra)
        for name, value in zip(_NAMES, msgspec.structs.astuple(self), strict=True):
            if value is not None and name not in _NOT_FORWARDED:
                body[name] = value
        return body

    def to_generate(self, request_id: str, stream_interval_ms: float = 0.0) -> Generate:
        """The worker message for this request: the one place it is derived."""
        params = SamplingParams(
            max_tokens=self.token_limit,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            stop=self.stop_list,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
            logit_bias=dict(self.logit_bias or {}),
        )
        return Generate(
            request_id=request_id,
            messages=self.messages,
            params=params,
            tools=list(self.tools or []),
            tool_choice=self.tool_choice,
            response_format=self.response_format,
            prompt_cache_key=self.prompt_cache_key or None,
            thinking=self.thinking_level,
            stream_interval_ms=stream_interval_ms if self.stream else 0.0,
        )


_NAMES = ChatRequest.__struct_fields__
_FIELDS = frozenset(_NAMES) - {"extra"}
_NOT_FORWARDED = EXTENSION_FIELDS | {"extra"}


def normalize_thinking(value: Any) -> str | None:
    """Accept null, true/false and the six names; anything else is a 400 naming ``thinking``."""
    if value is None:
        return None
    if value is True:
        return "on"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in THINKING_LEVELS:
        return value.strip().lower()
    raise RequestValidationError("thinking must be null, true, false or one of: " + ", ".join(THINKING_LEVELS) + ".",
                                 "thinking")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """Validate a chat completions body and make it the canonical request.

    Raises RequestValidationError naming the parameter. The validated values are kept as the
    client wrote them (an integer temperature stays an integer), so a pass-through is faithful.
    """
    validate(body, ChatCompletionRequest)
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in body.items():
        (known if key in _FIELDS else extra)[key] = value
    request = ChatRequest(**known, extra=extra)
    request.thinking = normalize_thinking(request.thinking)
    return request
