"""OpenAI HTTP request types: they validate requests and generate the OpenAPI document.

Validation is strict on the fields it knows (types, ranges) and tolerant of
fields it does not know: those stay in the raw body and pass through to
OpenAI-compatible upstreams unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

Temperature = Annotated[float, Meta(ge=0, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]
ShortString = Annotated[str, Meta(max_length=1024)]
LogitBias = dict[str, Annotated[float, Meta(ge=-100, le=100)]]


class _Base(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    pass


class ContentPart(_Base):
    """A part of a message's content: text, image_url, file, input_audio, ..."""

    type: str
    text: str | None = None
    image_url: dict[str, Any] | str | None = None
    file: dict[str, Any] | None = None
    file_url: dict[str, Any] | str | None = None


class FunctionCall(_Base):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Base):
    id: str | None = None
    type: str = "function"
    function: FunctionCall | None = None
    index: int | None = None


class ChatMessage(_Base):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDefinition(_Base):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Base):
    type: str = "function"
    function: FunctionDefinition | None = None


class StreamOptions(_Base):
    include_usage: bool | None = None


class ResponseFormat(_Base):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatParams(_Base, kw_only=True):
    """The chat fields both the wire type and the canonical request (protocol.chat) share: every
    field but the structured ones (messages, tools, stream_options, response_format)."""

    model: ShortString | None = None
    stream: bool | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: LogitBias | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    prompt_cache_key: ShortString | None = None
    # AbstractCore extensions (protocol.chat.EXTENSION_FIELDS: never sent upstream)
    thinking: bool | str | None = None
    api_key: str | None = None
    base_url: str | None = None
    unload_after: bool | None = None
    timeout_s: float | None = None
    agent_format: ShortString | None = None
    models: Annotated[list[ShortString], Meta(max_length=64)] | None = None  # fallbacks (gateway caps the length)
    # local models only
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Probability | None = None
    repeat_penalty: Annotated[float, Meta(ge=0)] | None = None


class ChatCompletionRequest(ChatParams, kw_only=True):
    """POST /v1/chat/completions. ``model`` is ``provider/model``. Validates a body (and documents it);
    the gateway then works on protocol.chat.ChatRequest."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    tools: list[Tool] | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None


class EmbeddingsRequest(_Base):
    """POST /v1/embeddings."""

    # One string, strings, token ids, or lists of token ids. msgspec allows one array type per
    # union, so the element union is checked here and the route checks the list is homogeneous.
    input: str | list[str | int | list[int]]
    model: ShortString | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None
    truncate: bool | None = None
    api_key: str | None = None
    base_url: str | None = None


class ErrorDetail(_Base):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Base):
    error: ErrorDetail


class ModelObject(_Base):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(_Base):
    data: list[ModelObject]
    object: str = "list"


T = TypeVar("T")

_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")


class RequestValidationError(ValueError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def validate(data: Any, request_type: type[T]) -> T:
    """Validate a decoded JSON body; raise RequestValidationError naming the parameter."""
    try:
        return msgspec.convert(data, request_type, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH_RE.search(text)
        # msgspec names dict entries as `$.logit_bias[...]`: report the field itself
        param = match.group(1).replace("[...]", "") if match else None
        if param is None and text.startswith("Object missing required field"):
            field_match = re.search(r"`([^`]+)`", text)
            param = field_match.group(1) if field_match else None
        if param is not None and text.startswith("Object missing required field"):
            missing = re.search(r"`([^`]+)`", text)
            if missing and missing.group(1) not in param.split(".")[-1:]:
                param = f"{param}.{missing.group(1)}" if param else missing.group(1)
        message = _PATH_RE.sub("", text).strip(" -")
        return_param = param or None
        raise RequestValidationError(
            f"Invalid value for '{return_param}': {message}" if return_param else message, return_param
        ) from None
