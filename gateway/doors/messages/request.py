"""An Anthropic Messages request as the canonical ``protocol.chat.ChatRequest`` (every provider but anthropic/).

Scalars are checked by ``protocol.anthropic.MessagesRequest``; blocks are converted here, and a
block that cannot be converted is a 400 naming where it is (``messages.2.content.1``). What
has no OpenAI equivalent is mapped to the nearest thing and reported as a notice
(``x-acore-notice``): ``cache_control`` markers, server tools, thinking blocks of earlier turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError, bad_request, invalid
from protocol.anthropic import CountTokensRequest, MessagesRequest, ThinkingConfig, ToolChoice
from protocol.chat import ChatRequest
from protocol.openai import RequestValidationError, validate

# Blocks of Anthropic's server tools in an assistant turn (their results end in "_tool_result").
SERVER_TOOL_BLOCKS = frozenset({"server_tool_use", "mcp_tool_use"})
# Budget bounds for the canonical thinking levels: a budget up to the first is "low", and so on.
THINKING_LEVEL_BUDGETS = ((2048, "low"), (8192, "medium"))


@dataclass
class Converted:
    request: ChatRequest
    notices: list[str] = field(default_factory=list)


def parse_messages(body: dict[str, Any]) -> MessagesRequest:
    try:
        return validate(body, MessagesRequest)
    except RequestValidationError as exc:
        raise invalid(exc) from None


def parse_count_tokens(body: dict[str, Any]) -> CountTokensRequest:
    try:
        return validate(body, CountTokensRequest)
    except RequestValidationError as exc:
        raise invalid(exc) from None


def _text_of_blocks(blocks: Any, where: str) -> str:
    """Text of a string or of a list of text blocks (system, tool results, text documents)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_request(f"{where} must be a string or a list of text blocks.", param=where)
    texts = []
    for position, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad_request(f"{where}.{position} must be a text block.", param=f"{where}.{position}")
        texts.append(block["text"])
    return "\n".join(texts)


def _image_part(source: Any, where: str) -> dict[str, Any]:
    if isinstance(source, dict) and source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise bad_request(f"{where}.source needs media_type and data.", param=where)
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise bad_request(f"{where}.source must be a base64 or url source.", param=where)


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A document block as the part the attachments layer reads: PDF data or URL as a file, text as text."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad_request(f"{where}.source must be an object.", param=where)
    kind = source.get("type")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "application/pdf"
        file = {"file_data": f"data:{media_type};base64,{source['data']}", "filename": title or "document.pdf"}
        return {"type": "file", "file": file}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "file", "file_url": {"url": source["url"]}}
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif kind == "content":
        text = _text_of_blocks(source.get("content"), f"{where}.source.content")
    else:
        raise bad_request(f"{where}.source must be a base64, url, text or content source.", param=where)
    return {"type": "text", "text": f"{title}\n\n{text}" if title else text}


class _Converter:
    def __init__(self) -> None:
        self.notices: list[str] = []
        self.dropped: set[str] = set()

    def note_once(self, what: str) -> None:
        if what not in self.dropped:
            self.dropped.add(what)
            self.notices.append(what)

    def messages(self, request: CountTokensRequest) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if request.system is not None:
            system = request.system
            if isinstance(system, list) and any(isinstance(b, dict) and b.get("cache_control") for b in system):
                self.note_once("cache_control markers dropped (prompt caching is the provider's own)")
            text = _text_of_blocks(system, "system")
            if text:
                out.append({"role": "system", "content": text})
        for index, message in enumerate(request.messages):
            where = f"messages.{index}.content"
            if message.role == "user":
                out.extend(self._user(message.content, where))
            else:
                out.append(self._assistant(message.content, where))
        return out

    def _user(self, content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
        """A user turn: its tool results become tool messages (first, as OpenAI wants them right after the
        assistant's calls), the rest one user message."""
        if isinstance(content, str):
            return [{"role": "user", "content": content}]
        results: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for position, block in enumerate(content):
            here = f"{where}.{position}"
            kind = block.get("type")
            if block.get("cache_control"):
                self.note_once("cache_control markers dropped (prompt caching is the provider's own)")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise bad_request(f"{here}.text must be a string.", param=here)
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image":
                parts.append(_image_part(block.get("source"), here))
            elif kind == "document":
                parts.append(_document_part(block, here))
            elif kind == "tool_result":
                results.append(self._tool_result(block, here, parts))
            else:
                raise bad_request(f"{here}: content block type {kind!r} is not supported here.", param=here)
        out = results
        if parts:
            only_text = all(p["type"] == "text" for p in parts)
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text and len(parts) == 1
                        else parts})
        return out

    def _tool_result(self, block: dict[str, Any], where: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        tool_use_id = block.get("tool_use_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise bad_request(f"{where}.tool_use_id must be a non-empty string.", param=where)
        content = block.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for position, item in enumerate(content):
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "text" and isinstance(item.get("text"), str):
                    texts.append(item["text"])
                elif kind == "image":
                    # A tool message carries text only: the image goes in the user turn that follows.
                    parts.append(_image_part(item.get("source"), f"{where}.content.{position}"))
                elif kind == "document":
                    parts.append(_document_part(item, f"{where}.content.{position}"))
                else:
                    raise bad_request(f"{where}.content.{position}: type {kind!r} is not supported in a tool result.",
                                      param=where)
        elif content is not None:
            raise bad_request(f"{where}.content must be a string or a list of blocks.", param=where)
        text = "\n".join(texts)
        if block.get("is_error"):
            text = f"Error: {text}" if text else "Error"  # OpenAI tool messages have no error flag
        return {"role": "tool", "tool_call_id": tool_use_id, "content": text}

    def _assistant(self, content: str | list[dict[str, Any]], where: str) -> dict[str, Any]:
        if isinstance(content, str):
            return {"role": "assistant", "content": content}
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for position, block in enumerate(content):
            here = f"{where}.{position}"
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise bad_request(f"{here}.text must be a string.", param=here)
                texts.append(block["text"])
            elif kind == "tool_use":
                name, call_id = block.get("name"), block.get("id")
                if not isinstance(name, str) or not isinstance(call_id, str):
                    raise bad_request(f"{here} needs a string id and name.", param=here)
                arguments = block.get("input", {})
                if not isinstance(arguments, dict):
                    raise bad_request(f"{here}.input must be an object.", param=here)
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}})
            elif kind in ("thinking", "redacted_thinking"):
                # Signed thinking only means something to Anthropic; other models never see earlier reasoning.
                self.note_once("thinking blocks of earlier turns dropped (only Anthropic reads them)")
            elif isinstance(kind, str) and (kind in SERVER_TOOL_BLOCKS or kind.endswith("_tool_result")):
                # A turn Anthropic served with its own tools (web search, code execution): their calls and
                # results ran there; the text around them is what another model can use.
                self.note_once(f"{kind} blocks of earlier turns dropped (Anthropic's server tools)")
            else:
                raise bad_request(f"{here}: content block type {kind!r} is not supported in an assistant turn.",
                                  param=here)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            message["tool_calls"] = calls
        elif message["content"] is None:
            message["content"] = ""
        return message

    def tools(self, request: CountTokensRequest) -> list[dict[str, Any]] | None:
        tools = []
        for tool in request.tools or ():
            if tool.input_schema is None:
                # A server tool (web search, code execution, ...) runs at Anthropic; no other model has it.
                self.note_once(f"server tool {tool.name!r} ({tool.type}) dropped: only Anthropic runs it")
                continue
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            tools.append({"type": "function", "function": function})
        return tools or None


def tool_choice(choice: ToolChoice | None) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls)."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "auto":
        return "auto", parallel
    if choice.type == "any":
        return "required", parallel
    if choice.type == "none":
        return "none", None
    if not choice.name:
        raise bad_request("tool_choice of type tool needs a name.", param="tool_choice.name")
    return {"type": "function", "function": {"name": choice.name}}, parallel


def thinking_level(thinking: ThinkingConfig | None) -> str | None:
    """Anthropic's thinking config as the canonical level: a budget maps to the nearest of low/medium/high."""
    if thinking is None:
        return None
    if thinking.type == "disabled":
        return "off"
    if thinking.type != "enabled" or thinking.budget_tokens is None:
        return "on"
    for bound, level in THINKING_LEVEL_BUDGETS:
        if thinking.budget_tokens <= bound:
            return level
    return "high"


def to_chat(request: CountTokensRequest) -> Converted:
    """The canonical request for a Messages (or count_tokens) body; streams always ask for usage."""
    converter = _Converter()
    messages = converter.messages(request)
    tools = converter.tools(request)
    choice, parallel = tool_choice(request.tool_choice)
    chat = ChatRequest(model=request.model, messages=messages, tools=tools,
                       tool_choice=choice if tools else None, parallel_tool_calls=parallel if tools else None,
                       thinking=thinking_level(request.thinking))
    if isinstance(request, MessagesRequest):
        chat.max_tokens = request.max_tokens
        chat.stream = bool(request.stream)
        chat.temperature = request.temperature
        chat.top_p = request.top_p
        chat.top_k = request.top_k
        if request.stop_sequences:
            if len(request.stop_sequences) > 16:
                raise GatewayError(400, "At most 16 stop_sequences are supported.", param="stop_sequences")
            chat.stop = list(request.stop_sequences)
        if request.metadata is not None and request.metadata.user_id:
            chat.user = request.metadata.user_id
        if request.stream:
            chat.stream_options = {"include_usage": True}  # message_delta carries the usage
    return Converted(chat, converter.notices)
