"""Checks shared by the adapters that translate the canonical chat request (Anthropic, Ollama)."""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.providers.base import ChatCall


def check_unsupported(call: ChatCall, provider: str) -> None:
    """Refuse or report what a translated API cannot do, instead of answering as if it had."""
    if (call.body.get("n") or 1) > 1:
        raise bad_request(f"n > 1 is not supported for {call.requested_model}: send one request per choice.",
                          param="n")
    if call.body.get("logprobs"):
        call.notices.append(f"logprobs not available from {provider}")
