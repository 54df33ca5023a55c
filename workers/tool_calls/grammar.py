"""Grammars that force a tool call in a family's own syntax (tool_choice required or named).

The family adds its markers around grammars of the tools' JSON schemas, so the text the model
is made to write is exactly what its parser reads back, and even a weak model emits a valid
call. Two dialects of the same grammar: GBNF for llama.cpp (the schemas through llama.cpp's own
converter, as llama-cpp-python ships it) and Lark for llguidance (MLX: ``%json`` embeds a
schema). Each engine's library is imported only when that dialect is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol.messages import ErrorCode
from workers.backend import WorkerError
from workers.tool_calls.base import tool_parameters

Tool = tuple[str, dict[str, Any]]  # (name, JSON-schema parameters)


def forced_tools(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> list[Tool] | None:
    """The tools a call must be made to, or None when the model may answer freely.

    ``"required"``: any of them; ``{"type": "function", "function": {"name": N}}`` (or the
    Responses form ``{"type": "function", "name": N}``): that one."""
    if not tools or tool_choice in (None, "auto", "none"):
        return None
    params = tool_parameters(tools)
    if tool_choice == "required":
        return list(params.items()) or None
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if isinstance(name, str):
            if name not in params:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"tool_choice names {name!r}, which is not in tools",
                                  param="tool_choice")
            return [(name, params[name])]
    raise WorkerError(ErrorCode.BAD_REQUEST, "tool_choice must be none, auto, required or a function",
                      param="tool_choice")


class _Builder:
    """GBNF: rules shared by every call of one grammar (llama.cpp's SchemaConverter underneath)."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self.converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.n = 0

    def json(self, schema: Mapping[str, Any]) -> str:
        """The rule name for a value of ``schema``."""
        self.n += 1
        resolved = self.converter.resolve_refs(dict(schema), f"tool{self.n}")
        return str(self.converter.visit(resolved, f"v{self.n}"))

    @staticmethod
    def literal(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    def text(self) -> str:
        """Free text up to the next tag (an XML parameter's string value)."""
        return str(self.converter._add_rule("xml-text", '[^<]*'))

    def format(self, root: str) -> str:
        self.converter._add_rule("root", root)
        return str(self.converter.format_grammar())


class _LarkBuilder(_Builder):
    """Lark for llguidance: the same expressions, a schema embedded where GBNF names its rule."""

    def __init__(self) -> None:
        self.n = 0

    def json(self, schema: Mapping[str, Any]) -> str:
        # Fixed separators: with free whitespace a weak model can pad forever instead of writing the call.
        fixed = {**_closed(schema),
                 "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
        return "%json " + json.dumps(fixed, ensure_ascii=False)

    def text(self) -> str:
        return "/[^<]*/"

    def format(self, root: str) -> str:
        return f"start: {root}\n"


def _closed(schema: Any) -> Any:
    """Objects without ``additionalProperties`` get false, as llama.cpp's converter reads them (JSON
    Schema's own default, any extra key allowed, lets a weak model invent keys instead of ending)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if isinstance(out.get("properties"), Mapping) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _json_call(b: _Builder, name: str, params: dict[str, Any], key: str) -> str:
    return f'{b.literal("{" + json.dumps("name") + ": " + json.dumps(name) + ", " + json.dumps(key) + ": ")} ' \
           f'{b.json(params)} "}}"'


def _hermes(b: _Builder, name: str, params: dict[str, Any]) -> str:
    return f'"<tool_call>\\n" {_json_call(b, name, params, "arguments")} "\\n</tool_call>"'


def _llama3(b: _Builder, name: str, params: dict[str, Any]) -> str:
    return _json_call(b, name, params, "parameters")


def _mistral(b: _Builder, name: str, params: dict[str, Any]) -> str:
    return f'"[TOOL_CALLS]" {b.literal(name)} "[ARGS]" {b.json(params)}'


def _harmony(b: _Builder, name: str, params: dict[str, Any]) -> str:
    head = f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
    return f'{b.literal(head)} {b.json(params)} "<|call|>"'


def _deepseek(b: _Builder, name: str, params: dict[str, Any]) -> str:
    head = f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n"
    return f'{b.literal(head)} {b.json(params)} {b.literal(chr(10) + "```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")}'


def _gemma(b: _Builder, name: str, params: dict[str, Any]) -> str:
    return f'"```tool_code\\n" {_json_call(b, name, params, "arguments")} "\\n```"'


def _qwen3_coder(b: _Builder, name: str, params: dict[str, Any]) -> str:
    found = params.get("properties")
    props: dict[str, Any] = found if isinstance(found, dict) else {}
    required = set(params.get("required") or ())
    parts = []
    for key, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind == "string" and "enum" not in schema:
            value = b.text()
        elif kind == "string":
            value = "(" + " | ".join(b.literal(str(v)) for v in schema["enum"]) + ")"
        else:
            value = b.json(schema if isinstance(schema, dict) else {})
        part = f'{b.literal(f"<parameter={key}>" + chr(10))} {value} "\\n</parameter>\\n"'
        parts.append(part if key in required else f"({part})?")
    body = " ".join(parts) or '""'
    return f'{b.literal(f"<tool_call>{chr(10)}<function={name}>{chr(10)}")} {body} "</function>\\n</tool_call>"'


CALL_SYNTAX: dict[str, Callable[[_Builder, str, dict[str, Any]], str]] = {
    "hermes": _hermes, "llama3": _llama3, "mistral": _mistral, "harmony": _harmony, "deepseek": _deepseek,
    "gemma": _gemma, "qwen3-coder": _qwen3_coder}


def tool_call_grammar(family: str, tools: list[Tool], close_reasoning: bool = False, dialect: str = "gbnf") -> str:
    """A grammar (``dialect`` gbnf or lark) for exactly one call to one of ``tools`` in ``family``'s syntax.

    ``close_reasoning``: the prompt opened a ``<think>`` block, so the answer first closes it."""
    b = _LarkBuilder() if dialect == "lark" else _Builder()
    syntax = CALL_SYNTAX[family]
    try:
        calls = [syntax(b, name, params) for name, params in tools]
    except Exception as e:  # the converter raises plain exceptions on schemas it cannot express
        raise WorkerError(ErrorCode.BAD_REQUEST, f"cannot build a grammar for the tools' schemas: {e}",
                          param="tools") from e
    root = "(" + " | ".join(calls) + ")"
    if close_reasoning:
        root = '"</think>\\n\\n" ' + root
    return b.format(root)
