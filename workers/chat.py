"""Chat semantics every generating engine shares (llama.cpp, MLX and the engines to come).

An engine renders the prompt and produces text token by token; everything about what the
request *means* is decided here, once:

- sampling defaults: OpenAI's (temperature 1, top_p 1, no top-k, no min-p) unless the
  model's own generation config says otherwise (``resolve_sampling``);
- stop strings, held back until they can be judged (``StopStringFilter``);
- tool_choice: ``"none"`` means the answer is text whatever it looks like (``tools_active``);
- tool calls recognised in the model's text as it streams (``workers/tool_calls``: one parser
  per family, chosen from the chat template);
- reasoning separated from the answer (``ReasoningSplitter``: a ``<think>`` block at the start).

``ChatOutput`` strings these together: an engine feeds it decoded text and emits the Deltas
it returns, then calls ``finish`` with whatever its detokenizer still held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.messages import ErrorCode, FinishReason, Generate, SamplingParams
from workers.backend import Delta, WorkerError
from workers.tool_calls import ToolCallParser
from workers.tool_calls.base import held_tail
from workers.tool_calls.hermes import HermesParser

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


def template_options(request: Generate) -> dict[str, Any]:
    """Variables the chat template reads for ``thinking``: Qwen 3's ``enable_thinking`` and gpt-oss's
    ``reasoning_effort`` (templates ignore variables they do not use; "auto" leaves both unset)."""
    level = request.thinking
    if level in (None, "auto"):
        return {}
    if level == "off":
        return {"enable_thinking": False, "reasoning_effort": "low"}
    return {"enable_thinking": True, "reasoning_effort": "medium" if level == "on" else level}


class DeltaSink:
    """Collects a parser's events into the next Delta's fields (tool calls as OpenAI deltas:
    id, type and name first, then argument fragments of the same index)."""

    __slots__ = ("calls", "reasoning_text", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning_text: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def content(self, text: str) -> None:
        self.text.append(text)

    def reasoning(self, text: str) -> None:
        self.reasoning_text.append(text)

    def call_start(self, index: int, call_id: str, name: str) -> None:
        self.calls.append({"index": index, "id": call_id, "type": "function",
                           "function": {"name": name, "arguments": ""}})

    def call_args(self, index: int, fragment: str) -> None:
        last = self.calls[-1] if self.calls else None
        if last is not None and last["index"] == index:
            last["function"]["arguments"] += fragment
        else:
            self.calls.append({"index": index, "function": {"arguments": fragment}})

    def call_end(self, index: int) -> None:
        pass

    def take(self, reasoning: str, n_tokens: int) -> Delta:
        text = self.text[0] if len(self.text) == 1 else "".join(self.text)
        if self.reasoning_text:
            reasoning += "".join(self.reasoning_text)
            self.reasoning_text = []
        calls = self.calls
        if calls:
            self.calls = []
        else:
            calls = []  # never the list this sink appends to next
        self.text = []
        return Delta(text=text, reasoning=reasoning, n_tokens=n_tokens, tool_calls=calls)


# --------------------------------------------------------------------------- stop strings


class StopStringFilter:
    """Holds back the tail that could start a stop string, so no stop string ever leaks partially."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched = ""  # the stop string that was reached (Anthropic's stop_sequence)

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached (the rest is dropped)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.matched = next(s for s in self.stops if self.pending.find(s) == cut)
            out, self.pending = self.pending[:cut], ""
            return out, True
        out = self.pending[: len(self.pending) - held_tail(self.pending, self.stops)]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


# --------------------------------------------------------------------------- reasoning

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = (THINK_OPEN, THINK_CLOSE)  # special tokens in some vocabularies: the engine renders them as text


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
        keep = held_tail(self.pending, [THINK_CLOSE])
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

    ``parser`` is the model's tool-call family (workers/tool_calls); with tools active it reads the
    answer as it streams: content goes out at once, a tool call as soon as it is recognised.
    """

    def __init__(self, request: Generate, reasoning_open: bool = False,
                 parser: type[ToolCallParser] = HermesParser) -> None:
        self.stops = StopStringFilter(list(request.params.stop))
        self.reasoning = ReasoningSplitter(inside=reasoning_open) if parser.think_tags else None
        active = tools_active(request)
        self.sink = DeltaSink()
        self.parser = parser(self.sink, request.tools, tools_enabled=active) if active or parser.always else None
        self.stopped = False  # a stop string was reached: the engine ends the generation
        # The prompt's size (and its cached part), set by the engine once it knows them: the first
        # Delta carries them to the gateway, ahead of the Final's usage.
        self.prompt_tokens = 0
        self.cached_tokens = 0

    @property
    def stop_sequence(self) -> str:
        """The stop string that ended the answer ("" when none did)."""
        return self.stops.matched if self.stopped else ""

    def feed(self, text: str, n_tokens: int = 1) -> Delta:
        out, hit = self.stops.feed(text)
        self.stopped = self.stopped or hit
        reasoning, content = self.reasoning.feed(out) if self.reasoning is not None else ("", out)
        if self.parser is None:
            delta = Delta(text=content, reasoning=reasoning, n_tokens=n_tokens)
        else:
            self.parser.feed(content)
            delta = self.sink.take(reasoning, n_tokens)
        if self.prompt_tokens:
            delta.prompt_tokens, delta.cached_tokens = self.prompt_tokens, self.cached_tokens
            self.prompt_tokens = 0
        return delta

    def finish(self, tail: str = "") -> tuple[Delta | None, bool]:
        """The last Delta (what was held back, plus the detokenizer's ``tail``; None when there is
        nothing left) and whether the answer called a tool."""
        if not self.stopped:
            out, hit = self.stops.feed(tail)
            self.stopped = hit
            tail = out if hit else out + self.stops.flush()
        else:
            tail = ""
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(tail)
            late_reasoning, late_content = self.reasoning.flush()
            reasoning += late_reasoning
            content += late_content
        else:
            reasoning, content = "", tail
        if self.parser is None:
            return (Delta(text=content, reasoning=reasoning) if content or reasoning else None), False
        self.parser.feed(content)
        self.parser.finish()
        delta = self.sink.take(reasoning, 0)
        called = self.parser.calls > 0
        return (delta if delta.text or delta.reasoning or delta.tool_calls else None), called


def merged_tool_calls(fragments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole calls from streamed tool-call fragments (a start with id and name, then argument pieces)."""
    calls: dict[int, dict[str, Any]] = {}
    for fragment in fragments:
        function = fragment.get("function") or {}
        call = calls.get(fragment["index"])
        if call is None:
            calls[fragment["index"]] = {**fragment, "function": {"name": function.get("name", ""),
                                                                 "arguments": function.get("arguments", "")}}
        else:
            call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def finish_reason(ended: FinishReason, called: bool) -> FinishReason:
    """A generation that ended by itself with a call made finishes ``tool_calls``; one cut by
    max_tokens stays ``length`` (its partial call was reported: the client sees what it got)."""
    return FinishReason.TOOL_CALLS if called and ended == FinishReason.STOP else ended


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


def render_template(tokenizer: Any, model_name: str, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None, add_generation_prompt: bool = True,
                    options: dict[str, Any] | None = None) -> str:
    """A Hugging Face tokenizer's chat template as text (MLX and transformers engines); a template
    that rejects the messages is the client's 400, not a worker crash."""
    msgs = [{**m, "content": message_text(m.get("content"))} for m in messages]
    try:
        text = tokenizer.apply_chat_template(msgs, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                             tokenize=False, **(options or {}))
    except WorkerError:
        raise
    except Exception as exc:
        raise WorkerError(ErrorCode.BAD_REQUEST, f"the chat template of {model_name} rejected the messages: {exc}",
                          param="messages") from exc
    return str(text)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered template: the template already wrote BOS if the model wants one; never a second."""
    bos = getattr(tokenizer, "bos_token", None)
    return list(tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos))))

