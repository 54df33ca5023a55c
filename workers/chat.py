"""Chat semantics every generating engine shares (llama.cpp, MLX and the engines to come).

An engine renders the prompt and produces text token by token; everything about what the
request *means* is decided here, once:

- sampling defaults: OpenAI's (temperature 1, top_p 1, no top-k, no min-p) unless the
  model's own generation config says otherwise (``resolve_sampling``);
- stop strings, held back until they can be judged (``StopStringFilter``);
- tool_choice: ``"none"`` means the answer is text whatever it looks like (``tools_active``);
- tool calls recognised in the model's text (``parse_tool_calls``);
- reasoning separated from the answer (``ReasoningSplitter``: a ``<think>`` block at the start).

``ChatOutput`` strings these together: an engine feeds it decoded text and emits the Deltas
it returns, then calls ``finish`` with whatever its detokenizer still held.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.messages import ErrorCode, Generate, SamplingParams
from workers.backend import Delta, WorkerError

# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True, slots=True)
class Sampling:
    """Every sampling setting of one request, defaults applied. 0 means "off" for top_k and min_p."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


# OpenAI's defaults: what a client that sends no sampling fields expects.
OPENAI_DEFAULTS: Mapping[str, float] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                         "repeat_penalty": 1.0}


def resolve_sampling(params: SamplingParams, model_defaults: Mapping[str, float] | None = None) -> Sampling:
    """The request's value, else the model's own default (its generation config), else OpenAI's."""
    defaults = {**OPENAI_DEFAULTS, **{k: v for k, v in (model_defaults or {}).items() if v is not None}}

    def pick(name: str) -> float:
        value = getattr(params, name)
        return float(value if value is not None else defaults[name])

    return Sampling(
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=int(pick("top_k")),
        min_p=pick("min_p"),
        repeat_penalty=pick("repeat_penalty"),
        presence_penalty=float(params.presence_penalty or 0.0),
        frequency_penalty=float(params.frequency_penalty or 0.0),
        seed=params.seed,
    )


# --------------------------------------------------------------------------- tools


def tools_active(request: Generate) -> bool:
    """Tools are offered and the model may call them: tool_choice "none" means text only."""
    return bool(request.tools) and request.tool_choice != "none"


def prompt_tools(request: Generate) -> list[dict[str, Any]] | None:
    """The tools the chat template renders (all of them: "none" still shows them, as OpenAI does)."""
    return request.tools or None


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


# --------------------------------------------------------------------------- stop strings


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
        out = self.pending[: len(self.pending) - _held_tail(self.pending, self.stops)]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _held_tail(text: str, markers: list[str]) -> int:
    """How many trailing characters of ``text`` could begin one of ``markers``."""
    hold = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), hold, -1):
            if text.endswith(marker[:n]):
                hold = n
                break
    return hold


# --------------------------------------------------------------------------- reasoning

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def opens_reasoning(prompt: str) -> bool:
    """The rendered prompt ends inside a ``<think>`` block (the template opened it for the model)."""
    return prompt.rstrip().endswith(THINK_OPEN)


class ReasoningSplitter:
    """Separates a ``<think>…</think>`` block at the start of the output into reasoning.

    ``inside=True`` when the prompt itself opened the block (templates that end the
    generation prompt with ``<think>``). Only a block at the very start counts: a model
    that writes the tag later in its answer is quoting it.
    """

    def __init__(self, inside: bool = False) -> None:
        self.state = "inside" if inside else "start"
        self.pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) safe to emit now."""
        if self.state == "content":
            return "", text
        self.pending += text
        if self.state == "start":
            if not self.pending:
                return "", ""
            if THINK_OPEN.startswith(self.pending):
                return "", ""  # still could be the opening tag
            if not self.pending.startswith(THINK_OPEN):
                self.state = "content"
                out, self.pending = self.pending, ""
                return "", out
            self.state = "inside"
            self.pending = self.pending[len(THINK_OPEN):]
        end = self.pending.find(THINK_CLOSE)
        if end >= 0:
            reasoning, rest = self.pending[:end], self.pending[end + len(THINK_CLOSE):]
            self.state, self.pending = "content", ""
            return reasoning, rest.lstrip("\n")
        keep = _held_tail(self.pending, [THINK_CLOSE])
        reasoning = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(reasoning):]
        return reasoning, ""

    def flush(self) -> tuple[str, str]:
        """At the end of the output: an unclosed block is all reasoning, an undecided start is text."""
        pending, self.pending = self.pending, ""
        if self.state == "inside":
            return pending, ""
        return "", pending


# --------------------------------------------------------------------------- one generation's output


class ChatOutput:
    """Turns one generation's decoded text into Deltas: stop strings, then reasoning, then tool calls.

    With tools active, answer text that may still become a tool call is held back until it
    can be judged; ``finish`` then emits it as tool calls or as text.
    """

    def __init__(self, request: Generate, reasoning_open: bool = False) -> None:
        self.stops = StopStringFilter(list(request.params.stop))
        self.reasoning = ReasoningSplitter(inside=reasoning_open)
        self.held: str | None = "" if tools_active(request) else None
        self.stopped = False  # a stop string was reached: the engine ends the generation

    def feed(self, text: str, n_tokens: int = 1) -> Delta:
        out, hit = self.stops.feed(text)
        self.stopped = self.stopped or hit
        reasoning, content = self.reasoning.feed(out)
        return Delta(text=self._hold(content), reasoning=reasoning, n_tokens=n_tokens)

    def _hold(self, content: str) -> str:
        if self.held is None:
            return content
        self.held += content
        if could_be_tool_call(self.held):
            return ""
        out, self.held = self.held, None
        return out

    def finish(self, tail: str = "") -> tuple[Delta | None, bool]:
        """The last Delta (what was held back, plus the detokenizer's ``tail``; None when there is
        nothing left) and whether it is a tool call."""
        if not self.stopped:
            out, hit = self.stops.feed(tail)
            self.stopped = hit
            tail = out if hit else out + self.stops.flush()
        else:
            tail = ""
        reasoning, content = self.reasoning.feed(tail)
        late_reasoning, late_content = self.reasoning.flush()
        reasoning += late_reasoning
        content += late_content
        if self.held is not None:
            held, self.held = self.held + content, None
            calls = parse_tool_calls(held) if held.strip() else None
            if calls:
                return Delta(reasoning=reasoning, tool_calls=calls), True
            content = held
        return (Delta(text=content, reasoning=reasoning) if content or reasoning else None), False


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
