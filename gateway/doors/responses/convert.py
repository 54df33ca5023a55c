"""A Responses request → the canonical chat body (and what is needed to map the answer back).

Every non-OpenAI provider is reached through the chat pipeline, so this module
is the whole Responses front door for them: items become chat messages, tools
become chat function tools (namespaces flattened, custom freeform tools as a
one-string-argument function), hosted tools are dropped with a notice.
Unknown items, parts and fields are tolerated: skipped with a notice, never a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import bad_request, from_media, invalid
from media.attachments import responses_part_to_chat
from media.errors import MediaError
from protocol.chat import EXTENSION_FIELDS, ChatRequest, normalize_thinking
from protocol.openai import RequestValidationError

# Chat fields a Responses client may send that mean the same on chat completions (typed and
# checked by ResponsesRequest, so the canonical request takes them as they are).
_CHAT_FIELDS = ("temperature", "top_p", "seed", "stop", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                "frequency_penalty", "logit_bias", "user", "prompt_cache_key", "metadata",
                *sorted(EXTENSION_FIELDS - {"thinking"}))
# Responses reasoning.effort → the `thinking` extension (the nearest level acore has).
_EFFORT_TO_THINKING = {"none": "off", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                       "xhigh": "high", "max": "high"}
_CHAT_PART_TYPES = ("text", "image_url", "file", "input_audio", "file_url")
CUSTOM_ARG = "input"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """How a chat function name maps back to a Responses tool call."""

    kind: str  # "function" or "custom"
    name: str  # the tool's own name (inside its namespace)
    namespace: str | None = None


@dataclass(slots=True)
class Converted:
    request: ChatRequest  # the canonical chat request
    tools: dict[str, ToolSpec] = field(default_factory=dict)  # chat function name → Responses tool
    notices: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)  # this request's input, as Responses items
    effort: str | None = None  # the effective reasoning.effort (configuration_update wins)


def flat_name(namespace: str | None, name: str) -> str:
    """The chat function name of a namespaced tool; a namespace ending in '_' already carries its separator."""
    if not namespace:
        return name
    return f"{namespace}{name}" if namespace.endswith("_") else f"{namespace}__{name}"


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as a list of Responses items (a string is one user message)."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


# --------------------------------------------------------------------------- tools

class _Tools:
    def __init__(self, notices: list[str]) -> None:
        self.chat: list[dict[str, Any]] = []
        self.specs: dict[str, ToolSpec] = {}
        self.notices = notices

    def add_all(self, tools: Any, namespace: str | None = None) -> None:
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, dict):
                self.add(tool, namespace)

    def add(self, tool: dict[str, Any], namespace: str | None) -> None:
        kind = tool.get("type")
        name = tool.get("name")
        if kind == "namespace" and isinstance(name, str) and name:
            self.add_all(tool.get("tools"), namespace=flat_name(namespace, name))
            return
        if kind == "function" and isinstance(tool.get("function"), dict):
            # Already the chat shape (legacy clients): keep it.
            chat_function = tool["function"]
            if isinstance(chat_function.get("name"), str):
                self._register(chat_function["name"], ToolSpec("function", chat_function["name"]), tool)
            return
        if kind in ("function", "custom") and isinstance(name, str) and name:
            chat_name = flat_name(namespace, name)
            if kind == "function":
                function: dict[str, Any] = {
                    "name": chat_name,
                    "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
                }
                if tool.get("strict") is not None:
                    function["strict"] = tool["strict"]
                description = tool.get("description")
            else:
                function = {"name": chat_name, "parameters": {
                    "type": "object",
                    "properties": {CUSTOM_ARG: {"type": "string", "description": "The tool input, as free text."}},
                    "required": [CUSTOM_ARG],
                }}
                description = _custom_description(tool)
            if isinstance(description, str) and description:
                function["description"] = description
            self._register(chat_name, ToolSpec(kind, name, namespace), {"type": "function", "function": function})
            return
        label = kind if isinstance(kind, str) else "unknown"
        self.notices.append(f"tool type {label} is not available on this provider: dropped")

    def _register(self, chat_name: str, spec: ToolSpec, chat_tool: dict[str, Any]) -> None:
        if chat_name in self.specs:
            return  # the same tool sent twice (top level and additional_tools): keep the first
        self.specs[chat_name] = spec
        self.chat.append(chat_tool)


def _custom_description(tool: dict[str, Any]) -> str:
    """A freeform tool's description plus its input grammar, so a chat model knows what to write."""
    description = tool.get("description")
    text = description if isinstance(description, str) else ""
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") or "grammar"
        text = f"{text}\n\nThe input must follow this {syntax} grammar:\n{fmt['definition']}".strip()
    return text


def _tool_choice(choice: Any, tools: _Tools, notices: list[str]) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        name = flat_name(choice.get("namespace"), choice["name"])
        if name not in tools.specs:
            # Named without its namespace: find the one flattened tool with that name.
            matches = [key for key, spec in tools.specs.items() if spec.name == choice["name"]]
            name = matches[0] if len(matches) == 1 else name
        return {"type": "function", "function": {"name": name}}
    if kind == "function" and isinstance(choice.get("function"), dict):
        return choice  # already the chat shape
    if kind == "allowed_tools":
        mode = choice.get("mode") if choice.get("mode") in ("auto", "required") else "auto"
        notices.append(f"tool_choice allowed_tools sent as {mode} (all tools allowed)")
        return mode
    notices.append(f"tool_choice {kind} is not available on this provider: sent as auto")
    return "auto"


# --------------------------------------------------------------------------- items → messages

def _part(part: Any, notices: list[str]) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "input_image", "input_file"):
        try:
            return responses_part_to_chat(part)
        except MediaError as exc:
            raise from_media(exc, "input") from None
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "summary_text" or kind == "reasoning_text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind in _CHAT_PART_TYPES:
        return part
    notices.append(f"content part {kind} is not supported here: dropped")
    return None


def _content(content: Any, role: str, notices: list[str]) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("A message's content must be a string or a list of parts.", param="input")
    parts = [p for p in (_part(part, notices) for part in content) if p is not None]
    only_text = all(p.get("type") == "text" for p in parts)
    # System, developer and assistant turns are plain text in every chat template; keep them strings.
    if role != "user" and not only_text:
        notices.append(f"non-text content in a {role} message: dropped")
    if role != "user" or (only_text and len(parts) == 1):
        return "\n\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")
    return parts


def _tool_output(output: Any, notices: list[str]) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = [p for p in (_part(part, notices) for part in output) if p is not None]
        if all(p.get("type") == "text" for p in parts):
            return "\n\n".join(str(p.get("text", "")) for p in parts)
        return parts
    if output is None:
        return ""
    return orjson.dumps(output).decode()


def _reasoning_text(item: dict[str, Any]) -> str:
    texts = [str(p.get("text", "")) for p in item.get("content") or () if isinstance(p, dict)]
    if not texts:
        texts = [str(p.get("text", "")) for p in item.get("summary") or () if isinstance(p, dict)]
    return "\n\n".join(t for t in texts if t)


class _Messages:
    """Builds chat messages, merging consecutive tool calls into one assistant turn."""

    def __init__(self, notices: list[str], tools: _Tools) -> None:
        self.out: list[dict[str, Any]] = []
        self.notices = notices
        self.tools = tools
        self.reasoning: list[str] = []
        self.effort: str | None = None

    def _assistant_for_calls(self) -> dict[str, Any]:
        last = self.out[-1] if self.out else None
        # A tool call right after the assistant's text (or other calls) belongs to that same turn.
        if last is not None and last.get("role") == "assistant" and "tool_call_id" not in last:
            last.setdefault("tool_calls", [])
            return last
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
        self._attach_reasoning(message)
        self.out.append(message)
        return message

    def _attach_reasoning(self, message: dict[str, Any]) -> None:
        if self.reasoning:
            message["reasoning_content"] = "\n\n".join(self.reasoning)
            self.reasoning = []

    def add(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if (kind is None and "role" in item) or kind == "message":
            self._message(item)
        elif kind in ("function_call", "custom_tool_call"):
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise bad_request(f"A {kind} item needs a name.", param="input")
            call_id = item.get("call_id") or item.get("id")
            if kind == "function_call":
                arguments = item.get("arguments")
                arguments = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
            else:
                arguments = orjson.dumps({CUSTOM_ARG: str(item.get("input", ""))}).decode()
            message = self._assistant_for_calls()
            message["tool_calls"].append({"id": str(call_id), "type": "function",
                                          "function": {"name": flat_name(item.get("namespace"), name),
                                                       "arguments": arguments}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise bad_request(f"A {kind} item needs a call_id.", param="input")
            self.out.append({"role": "tool", "tool_call_id": call_id,
                             "content": _tool_output(item.get("output"), self.notices)})
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text:
                self.reasoning.append(text)
        elif kind == "additional_tools":
            # Codex puts its tool list here (top-level tools: []); the tools apply from now on.
            self.tools.add_all(item.get("tools"))
        elif kind == "configuration_update":
            # Codex changes settings mid-conversation; the latest reasoning effort wins.
            reasoning = item.get("reasoning")
            effort = reasoning.get("effort") if isinstance(reasoning, dict) else item.get("reasoning_effort")
            if isinstance(effort, str):
                self.effort = effort
            self.tools.add_all(item.get("tools"))
        else:
            self.notices.append(f"input item type {kind} is not supported here: skipped")

    def _message(self, item: dict[str, Any]) -> None:
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant", "tool"):
            raise bad_request(f"Unsupported message role {role!r}.", param="input")
        if role == "tool" or item.get("tool_calls"):
            # Legacy chat messages pass through as chat messages.
            message = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
            if isinstance(message.get("content"), list):
                message["content"] = _content(message["content"], "user" if role == "tool" else role,
                                              self.notices)
            self.out.append(message)
            return
        chat_role = "system" if role == "developer" else role  # not every chat template knows developer
        message = {"role": chat_role, "content": _content(item.get("content"), chat_role, self.notices)}
        if chat_role == "assistant":
            self._attach_reasoning(message)
        if isinstance(item.get("name"), str):
            message["name"] = item["name"]
        self.out.append(message)


# --------------------------------------------------------------------------- the request

def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Converted:
    """Convert a (validated) Responses body; ``history`` is the stored conversation for previous_response_id."""
    notices: list[str] = []
    tools = _Tools(notices)
    messages = _Messages(notices, tools)
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.out.append({"role": "system", "content": body["instructions"]})
    for item in history or ():
        messages.add(item)
    # Stored history may carry tools from additional_tools items; those of this request come after.
    if "input" in body and body["input"] is not None:
        items = input_items(body)
    elif body.get("messages") is not None:
        items = [m for m in body["messages"] if isinstance(m, dict)]
    else:
        raise bad_request("Either input or messages is required.", param="input")
    tools.add_all(body.get("tools"))
    for item in items:
        messages.add(item)
    if messages.reasoning:
        notices.append("trailing reasoning items without an assistant turn: skipped")
    if not messages.out:
        raise bad_request("The input holds no messages.", param="input")

    chat = ChatRequest(messages=messages.out, model=body.get("model"), stream=True,
                       stream_options={"include_usage": True})
    if tools.chat:
        chat.tools = tools.chat
        chat.tool_choice = _tool_choice(body.get("tool_choice"), tools, notices)
        chat.parallel_tool_calls = body.get("parallel_tool_calls")
    chat.max_tokens = body.get("max_output_tokens") or body.get("max_tokens")
    for key in _CHAT_FIELDS:
        if body.get(key) is not None:
            setattr(chat, key, body[key])
    chat.response_format = _response_format(body.get("text"))
    reasoning = body.get("reasoning")
    effort = messages.effort or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
    try:
        chat.thinking = normalize_thinking(body.get("thinking"))
    except RequestValidationError as exc:
        raise invalid(exc) from None
    if isinstance(effort, str) and chat.thinking is None:
        level = _EFFORT_TO_THINKING.get(effort)
        if level is None:
            notices.append(f"reasoning.effort={effort} is unknown here: ignored")
        else:
            chat.thinking = level
    return Converted(request=chat, tools=tools.specs, notices=notices, items=items, effort=effort)
