"""Engine-independent chat text handling shared by the llama.cpp and MLX backends:
stop strings held back until they can be judged, tool calls recognised in model text,
and message content flattened to text."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from protocol.messages import ErrorCode
from workers.backend import Delta, Emit, WorkerError


class StopStringFilter:
    """Holds back the tail that could start a stop string, so no stop string ever leaks partially."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached (the rest is dropped)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


_TOOL_TAG = re.compile(r"^\s*<tool_call>\s*(.*?)\s*</tool_call>\s*$", re.S)


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """OpenAI tool_calls deltas for ``<tool_call>{json}</tool_call>``(s) or a bare ``{"name", "arguments"}``."""
    bodies = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S)
    if bodies:
        if re.sub(r"<tool_call>.*?</tool_call>", "", text, flags=re.S).strip():
            return None  # prose around the calls: treat the whole answer as text
    else:
        bodies = [text.strip()]
    calls = []
    for i, body in enumerate(bodies):
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append({
            "index": i,
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": obj["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
        })
    return calls


def could_be_tool_call(text: str) -> bool:
    """True while the output so far may still turn out to be a tool call (so it is held back)."""
    s = text.lstrip()
    return not s or s.startswith("{") or "<tool_call>".startswith(s[:11]) or s.startswith("<tool_call>")


def message_text(content: Any) -> str:
    """Chat content as text: parts are joined; images are refused (this backend cannot see)."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text"):
            parts.append(part.get("text") or "")
        elif kind in ("image_url", "input_image", "image"):
            raise WorkerError(ErrorCode.NOT_SUPPORTED, "model cannot see images", param="messages")
        else:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"unsupported content part type {kind!r}", param="messages")
    return "".join(parts)


def emit_final_text(held: str | None, tail: str, emit: Emit) -> bool:
    """Emit what a generation held back at its end: a tool call when the held text parses as one
    (returns True), else the text itself."""
    if held is None:
        if tail:
            emit(Delta(text=tail))
        return False
    held += tail
    calls = parse_tool_calls(held) if held.strip() else None
    if calls:
        emit(Delta(tool_calls=calls))
        return True
    if held:
        emit(Delta(text=held))
    return False
