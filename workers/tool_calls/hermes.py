"""Hermes 2 Pro / Qwen 2.5 / Qwen 3: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Several calls are several blocks. A bare call object as the whole answer counts too (small
models often drop the tags). The end marker is looked for only after the JSON object closed,
so ``</tool_call>`` inside an argument string is just text of the argument.
"""

from __future__ import annotations

from workers.tool_calls.base import DONE, FAIL, MORE, Body, JsonCall, ToolCallParser

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class JsonCallBody(Body):
    """One JSON call object, then an optional end marker ("" for none)."""

    def __init__(self, parser: ToolCallParser, opened_by: str, end: str = "") -> None:
        super().__init__(parser, opened_by)
        self.call = JsonCall(self)
        self.end = end
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
        if self.end:
            got = self.expect(self.end)
            if got is None:
                return MORE, ""
        return DONE, self.buf

    def salvage(self) -> None:
        self.call.salvage()


class HermesParser(ToolCallParser):
    family = "hermes"
    markers = (OPEN,)
    json_at_start = True
    preserved_tokens = (OPEN, CLOSE)  # added tokens in Qwen's vocabularies

    def open_body(self, marker: str) -> Body:
        return JsonCallBody(self, marker, CLOSE)

    def json_body(self) -> Body:
        return JsonCallBody(self, "")
