"""Checks shared by the adapters that translate the canonical chat request (Anthropic, Ollama)."""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request
from gateway.providers.base import ChatCall


def check_unsupported(call: ChatCall, provider: str) -> None:
    """Refuse or report what a translated API cannot do, instead of answering as if it had."""
    if (call.request.n or 1) > 1:
        raise bad_request(f"n > 1 is not supported for {call.requested_model}: send one request per choice.",
                          param="n")
    if call.request.logprobs:
        call.notices.append(f"logprobs not available from {provider}")


def image_part_url(part: dict[str, Any]) -> str:
    """The URL of an ``image_url`` / ``input_image`` content part (a string or ``{"url": ...}``)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise bad_request("image_url needs a url.", param="messages")
    return url
