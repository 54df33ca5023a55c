"""Qwen3-Coder XML tool calls::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Parameter values are raw text; they become JSON by the tool's schema: a ``string`` parameter
stays text, anything else is read as JSON when it parses (else kept as text). The call starts
at ``<function=NAME>``; each parameter's fragment streams once its value closed.
"""

from __future__ import annotations

import json
from typing import Any

from workers.tool_calls.base import DONE, FAIL, MORE, Body, JsonCall, ToolCallParser

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNCTION, FUNCTION_END = "<function=", "</function>"
PARAMETER, PARAMETER_END = "<parameter=", "</parameter>"


def convert_value(raw: str, schema: dict[str, Any] | None) -> Any:
    kind = (schema or {}).get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is None or "string" in kinds:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class XmlCallBody(Body):
    def __init__(self, parser: ToolCallParser, opened_by: str) -> None:
        super().__init__(parser, opened_by)
        self.wrapped = opened_by == OPEN
        self.state = "function" if self.wrapped else "name"
        self.name = ""
        self.key = ""
        self.params = 0
        self.json: JsonCall | None = None  # some fine-tunes write Hermes JSON inside the tags

    def _properties(self) -> dict[str, Any]:
        props = self.parser.parameters.get(self.name, {}).get("properties")
        return props if isinstance(props, dict) else {}

    def feed(self, text: str) -> tuple[int, str]:
        self.buf += text
        while True:
            if self.state == "function":
                got = self.expect(FUNCTION)
                if got is None:
                    if self.buf.lstrip().startswith("{"):
                        self.state, self.json = "json", JsonCall(self)
                        continue
                    return MORE, ""
                if not got:
                    if self.buf.lstrip().startswith("{"):
                        self.state, self.json = "json", JsonCall(self)
                        continue
                    return FAIL, self.buf
                self.state = "name"
            elif self.state == "json":
                assert self.json is not None
                status = self.json.step()
                if status == MORE:
                    return MORE, ""
                if status == FAIL:
                    return FAIL, self.buf
                self.state = "end"
            elif self.state == "name":
                name = self.until(">")
                if name is None:
                    return (FAIL, self.buf) if "\n" in self.buf or "<" in self.buf else (MORE, "")
                if not name.strip() or "\n" in name:
                    return FAIL, self.buf
                self.name = name.strip()
                self.start_call(self.name)
                self.state = "params"
            elif self.state == "params":
                param = self.expect(PARAMETER)
                if param:
                    self.state = "key"
                    continue
                done = self.expect(FUNCTION_END)
                if done:
                    self._close_args()
                    self.state = "end"
                    continue
                if param is None or done is None:
                    return MORE, ""
                self._close_args()  # something else: the call ends here, the rest is text
                return DONE, self.buf
            elif self.state == "key":
                key = self.until(">")
                if key is None:
                    return MORE, ""
                self.key = key.strip()
                self.state = "value"
            elif self.state == "value":
                ends = [i for i in (self.buf.find(PARAMETER_END), self.buf.find(PARAMETER),
                                    self.buf.find(FUNCTION_END)) if i >= 0]
                if not ends:
                    return MORE, ""
                end = min(ends)
                raw = self.take(end)
                if self.buf.startswith(PARAMETER_END):
                    self.take(len(PARAMETER_END))
                raw = raw[1:] if raw.startswith("\n") else raw
                raw = raw[:-1] if raw.endswith("\n") else raw
                value = convert_value(raw, self._properties().get(self.key))
                self.args(("{" if not self.params else ", ") + json.dumps(self.key, ensure_ascii=False) + ": "
                          + json.dumps(value, ensure_ascii=False))
                self.params += 1
                self.state = "params"
            elif self.state == "end":
                if self.wrapped and self.expect(CLOSE) is None:
                    return MORE, ""
                return DONE, self.buf

    def _close_args(self) -> None:
        self.args("}" if self.params else "{}")
        self.end_call()

    def salvage(self) -> None:
        if self.json is not None:
            self.json.salvage()
        elif self.index is not None:
            self.args("}" if self.params else "{}")


class Qwen3CoderParser(ToolCallParser):
    family = "qwen3-coder"
    markers = (OPEN, FUNCTION)
    preserved_tokens = (OPEN, CLOSE)

    def open_body(self, marker: str) -> Body:
        return XmlCallBody(self, marker)
