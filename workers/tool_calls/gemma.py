"""Gemma ```` ```tool_code ```` blocks: one call per line, either a JSON call object
(``{"name": ..., "arguments"|"parameters": {...}}``, as the seed's gemma format writes it) or a
Python call (``get_weather(city="Paris")``, as Gemma's own prompts ask for).

A block is judged whole once it closes: a line that is neither makes the block text.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from workers.tool_calls.base import DONE, FAIL, MORE, Body, ToolCallParser

OPEN, CLOSE = "```tool_code", "```"


def parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        args = obj.get("arguments", obj.get("parameters", {})) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(args, dict):
            return None
        return obj["name"], args
    try:
        node = ast.parse(line, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = ast.unparse(node.func)
    try:
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    except ValueError:
        return None


class ToolCodeBody(Body):
    def feed(self, text: str) -> tuple[int, str]:
        self.buf += text
        code = self.until(CLOSE)
        if code is None:
            return MORE, ""
        calls = []
        for line in code.splitlines():
            if line.strip():
                call = parse_line(line)
                if call is None:
                    return FAIL, self.buf
                calls.append(call)
        if not calls:
            return FAIL, self.buf
        for name, args in calls:
            self.start_call(name)
            self.args(json.dumps(args, ensure_ascii=False))
            self.end_call()
        return DONE, self.buf


class GemmaParser(ToolCallParser):
    family = "gemma"
    markers = (OPEN,)

    def open_body(self, marker: str) -> Body:
        return ToolCodeBody(self, marker)
