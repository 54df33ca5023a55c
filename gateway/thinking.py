"""The AbstractCore `thinking` extension: one value, mapped per provider.

A level a provider cannot honour is mapped to the nearest one it can and the
mapping is reported as a notice (``x-acore-notice``), never silently.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request
from gateway.providers.base import ChatCall

LEVELS = ("auto", "on", "off", "low", "medium", "high")


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
