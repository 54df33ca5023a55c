"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: ``{"name": ..., "parameters": {...}}`` as the answer,
optionally after ``<|python_tag|>``; several calls are separated by ``;``.

(The built-in tools' ``<|python_tag|>brave_search.call(query=...)`` form is not a JSON call:
it stays text, as do the pythonic ``[f(x=1)]`` lists some 3.2 fine-tunes write.)
"""

from __future__ import annotations

from workers.tool_calls.base import DONE, FAIL, MORE, Body, JsonCall, ToolCallParser

PYTHON_TAG = "<|python_tag|>"


class LlamaCallBody(Body):
    def __init__(self, parser: ToolCallParser, opened_by: str) -> None:
        super().__init__(parser, opened_by)
        self.call = JsonCall(self)
        self.in_call = True

    def feed(self, text: str) -> tuple[int, str]:
        self.buf += text
        if self.in_call:
            status = self.call.step()
            if status == MORE:
                return MORE, ""
            if status == FAIL:
                return FAIL, self.buf
            self.in_call = False
        if self.expect(";") is None:
            return MORE, ""  # nothing after the call yet: a ";" may still introduce another
        return DONE, self.buf

    def salvage(self) -> None:
        self.call.salvage()


class Llama3Parser(ToolCallParser):
    family = "llama3"
    markers = (PYTHON_TAG,)
    json_at_start = True
    preserved_tokens = (PYTHON_TAG,)

    def open_body(self, marker: str) -> Body:
        return LlamaCallBody(self, marker)

    def json_body(self) -> Body:
        return LlamaCallBody(self, "")
