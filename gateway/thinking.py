"""The AbstractCore `thinking` extension: one value, mapped per provider.

A level a provider cannot honour is mapped to the nearest one it can and the
mapping is reported as a notice (``x-acore-notice``), never silently. Reasoning
text always comes back as ``reasoning_content`` (message and delta), whatever
name the upstream used.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request
from gateway.providers.base import ChatCall

LEVELS = ("auto", "on", "off", "low", "medium", "high")

# Anthropic extended thinking budgets; "on" means the provider's sensible middle.
ANTHROPIC_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "on": 4096}
# Room left for the visible answer when max_tokens had to be raised above the budget.
ANTHROPIC_ANSWER_ROOM = 4096


def normalize_thinking(value: Any) -> str | None:
    """Accept null, true/false and the six names; anything else is a 400."""
    if value is None:
        return None
    if value is True:
        return "on"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in LEVELS:
        return value.strip().lower()
    raise bad_request(
        "thinking must be null, true, false or one of: " + ", ".join(LEVELS) + ".", param="thinking"
    )


def apply_thinking(call: ChatCall, body: dict[str, Any], style: str) -> None:
    """Express ``call.thinking`` in an OpenAI-compatible body, by the preset's style."""
    level = call.thinking
    if level is None or level == "auto":
        return
    if style == "reasoning_effort":
        if "reasoning_effort" in body:
            return  # the client's own value wins
        effort = {"on": "medium", "off": "minimal"}.get(level, level)
        if effort != level:
            call.notices.append(f"thinking={level} sent as reasoning_effort={effort}")
        body["reasoning_effort"] = effort
    elif style == "chat_template_kwargs":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = level != "off"
        body["chat_template_kwargs"] = kwargs
        if level in ("low", "medium", "high"):
            call.notices.append(f"thinking={level} sent as enable_thinking=true (no levels on this provider)")
    else:
        call.notices.append(f"thinking={level} ignored: provider {call.provider} has no thinking control")


def anthropic_thinking(call: ChatCall, request: dict[str, Any]) -> None:
    """Set ``thinking: {type: enabled, budget_tokens}`` on a Messages API request.

    Anthropic requires ``max_tokens`` above the budget and refuses sampling
    overrides while thinking, so both are adjusted here and reported.
    """
    level = call.thinking
    if level is None or level in ("auto", "off"):
        return  # the Messages API thinks only when asked: off and auto (provider default) send nothing
    budget = ANTHROPIC_BUDGETS[level]
    request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    max_tokens = int(request.get("max_tokens") or 0)
    if max_tokens <= budget:
        raised = budget + (max_tokens or ANTHROPIC_ANSWER_ROOM)
        request["max_tokens"] = raised
        call.notices.append(f"max_tokens raised to {raised} to fit thinking budget {budget}")
    for name in ("temperature", "top_k"):
        if name in request:
            del request[name]
            call.notices.append(f"{name} dropped: Anthropic does not accept it with thinking")


def ollama_think(call: ChatCall) -> bool | None:
    """Ollama's ``think``: a boolean (levels exist only for a few models, so they become true)."""
    level = call.thinking
    if level is None or level == "auto":
        return None
    if level in ("low", "medium", "high"):
        call.notices.append(f"thinking={level} sent as think=true (no levels on this provider)")
    return level != "off"


def normalize_reasoning(item: dict[str, Any]) -> None:
    """Rename an upstream's ``reasoning`` field to ``reasoning_content`` in a message or delta."""
    if "reasoning" in item:
        value = item.pop("reasoning")
        if isinstance(value, str) and not item.get("reasoning_content"):
            item["reasoning_content"] = value


def normalize_reasoning_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Apply ``normalize_reasoning`` to every choice of a chunk or a completion; returns it."""
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            for key in ("delta", "message"):
                part = choice.get(key)
                if isinstance(part, dict):
                    normalize_reasoning(part)
    return payload
