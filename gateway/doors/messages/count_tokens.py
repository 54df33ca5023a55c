"""POST /v1/messages/count_tokens: how many input tokens a Messages request would use.

Three sources, and the answer says which (header ``x-acore-token-count``):
  ``tokenizer``  local models (``capabilities.count_tokens``) count with their own chat template and
                 tokenizer (a ``Tokenize`` message to one of the model's workers);
  ``upstream``   ``anthropic/…`` asks Anthropic's own count_tokens (passthrough.py);
  ``estimate``   every other provider has no counting API: an estimate, flagged in the body as
                 ``"estimated": true`` too. It is ``ceil(characters / 4)`` over the text of the system
                 prompt, every text block and tool result, and the tools' JSON, plus 4 tokens per
                 message and 1,600 per image or document (Anthropic's figure for a ~1.15 MP image).
"""

from __future__ import annotations

import math
from typing import Any, cast

import orjson

from gateway.providers.base import ChatCall, TokenCounter
from protocol.chat import ChatRequest

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_MEDIA = 1600
SOURCE_HEADER = "x-acore-token-count"


def _text_chars(content: Any) -> tuple[int, int]:
    """(characters of text, media parts) of a canonical message's content."""
    if isinstance(content, str):
        return len(content), 0
    chars = media = 0
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            chars += len(str(part.get("text") or ""))
        else:
            media += 1
    return chars, media


def estimate_tokens(request: ChatRequest) -> int:
    """The documented estimate (module docstring) for a provider that cannot count."""
    chars = media = 0
    for message in request.messages:
        text, parts = _text_chars(message.get("content"))
        chars += text
        media += parts
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            chars += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    if request.tools:
        chars += len(orjson.dumps(request.tools))
    return (math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(request.messages)
            + TOKENS_PER_MEDIA * media)


async def count_with_tokenizer(provider: Any, call: ChatCall) -> int:
    # Only called for a provider whose capabilities say count_tokens.
    return await cast(TokenCounter, provider).count_tokens(call)
