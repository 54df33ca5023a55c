"""``agent_format``: tool calls rewritten into the text syntax an agentic CLI parses.

The seed's tool-call tag formats (AbstractCore's ``syntax_rewriter``): per request the
``agent_format`` extension field, server-wide ``ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS``. The
default, ``openai`` (and ``codex``, ``passthrough``), leaves tool calls structured: OpenAI
``tool_calls``, as every SDK expects. A tag format appends each call to the content as
``"\\n\\n" + START + "\\n" + json.dumps({"name", "arguments"}, indent=2) + "\\n" + END``:

- non-streaming: the tagged text is added to ``content`` and the structured calls stay (both);
- streaming: only the tagged text, in ``delta.content``, once each call is complete.

This is the chat completions door's business only: the Responses and Messages doors have
function-call items of their own. acore never runs tools: ``ABSTRACTCORE_DEFAULT_EXECUTE_TOOLS``
set true is refused at start (``refuse_tool_execution``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import ConfigError
from gateway.errors import bad_request

TAGS_ENV = "ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS"
EXECUTE_TOOLS_ENV = "ABSTRACTCORE_DEFAULT_EXECUTE_TOOLS"
STRUCTURED = ("openai", "codex", "passthrough")
TAG_FORMATS: dict[str, tuple[str, str]] = {
    "qwen3": ("<|tool_call|>", "</|tool_call|>"),  # the seed's "qwen3" (not Qwen's own <tool_call>)
    "llama3": ("<function_call>", "</function_call>"),
    "xml": ("<tool_call>", "</tool_call>"),
    "gemma": ("```tool_code", "```"),
}
NAMES = (*STRUCTURED, *TAG_FORMATS, "START,END")


@dataclass(frozen=True, slots=True)
class Tags:
    start: str
    end: str

    def render(self, name: str, arguments: str) -> str:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            args = {"value": arguments}  # as the seed does with arguments that are not JSON
        return f"\n\n{self.start}\n{json.dumps({'name': name, 'arguments': args}, indent=2)}\n{self.end}"


@functools.lru_cache(maxsize=64)  # read per request: the server default and a few client spellings
def parse_format(value: str) -> Tags | None:
    """None for the structured formats; ValueError naming the choices for anything unknown."""
    name = value.strip()
    if name.lower() in STRUCTURED:
        return None
    if name.lower() in TAG_FORMATS:
        return Tags(*TAG_FORMATS[name.lower()])
    start, sep, end = name.partition(",")
    if sep and start.strip() and end.strip():
        return Tags(start.strip(), end.strip())
    raise ValueError(f"agent_format must be one of {', '.join(NAMES)}; got {value!r}")


def refuse_tool_execution(env: Mapping[str, str]) -> None:
    """At gateway start: acore never executes tools, and a bad default tag format is a config error."""
    if env.get(EXECUTE_TOOLS_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{EXECUTE_TOOLS_ENV}=true is not supported: acore never executes tools; it returns the "
                          "model's tool calls to the client, which runs them. Unset it (or set it to false).")
    try:
        parse_format(env.get(TAGS_ENV) or "openai")
    except ValueError as exc:
        raise ConfigError(f"{TAGS_ENV}: {exc}") from None


def tags_for(agent_format: Any, env: Mapping[str, str]) -> Tags | None:
    """The tag format of one request: its ``agent_format``, else the server default; 400 when unknown."""
    if agent_format is None or agent_format == "":
        return parse_format(env.get(TAGS_ENV) or "openai")
    if not isinstance(agent_format, str):
        raise bad_request("agent_format must be a string.", param="agent_format")
    try:
        return parse_format(agent_format)
    except ValueError as exc:
        raise bad_request(str(exc), param="agent_format") from None


def rewrite_completion(result: dict[str, Any], tags: Tags | None) -> dict[str, Any]:
    """A chat.completion with each choice's tool calls appended to its content as tagged text."""
    if tags is None:
        return result
    for choice in result.get("choices") or ():
        message = choice.get("message") or {}
        calls = message.get("tool_calls") or ()
        text = "".join(tags.render(c["function"]["name"], c["function"].get("arguments") or "") for c in calls
                       if isinstance(c, dict) and isinstance(c.get("function"), dict))
        if text:
            message["content"] = (message.get("content") or "") + text
    return result


def rewrite_stream(chunks: AsyncIterator[dict[str, Any]], tags: Tags | None) -> AsyncIterator[dict[str, Any]]:
    """Stream chunks with tool-call deltas replaced by tagged content, each call once it is complete
    (at the next call or the choice's finish). Structured formats get the stream itself: no generator
    layer per chunk on the common path."""
    return chunks if tags is None else _tagged(chunks, tags)


async def _tagged(chunks: AsyncIterator[dict[str, Any]], tags: Tags) -> AsyncGenerator[dict[str, Any], None]:
    pending: dict[tuple[int, int], list[str]] = {}  # (choice, call index) -> [name, arguments]
    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                calls = delta.pop("tool_calls", None)
                text = ""
                for call in calls or ():
                    key = (choice.get("index", 0), call.get("index", 0))
                    function = call.get("function") or {}
                    if key not in pending:
                        text += _flush(pending, tags, choice.get("index", 0))  # an earlier call is complete
                        pending[key] = [function.get("name") or "", ""]
                    pending[key][1] += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    text += _flush(pending, tags, choice.get("index", 0))
                if text:
                    delta["content"] = (delta.get("content") or "") + text
                choice["delta"] = delta
            if any(c.get("delta") or c.get("finish_reason") for c in chunk.get("choices") or ()) \
                    or not chunk.get("choices"):
                yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _flush(pending: dict[tuple[int, int], list[str]], tags: Tags, choice: int) -> str:
    text = ""
    for key in sorted(k for k in pending if k[0] == choice):
        name, arguments = pending.pop(key)
        text += tags.render(name, arguments)
    return text
