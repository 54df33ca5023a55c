"""DeepSeek V3 / R1 and V3.1 tool-call tokens.

- V3 / R1::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

- V3.1: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>…``

Reasoning (R1) is a ``<think>`` block, separated before this parser sees the text.
"""

from __future__ import annotations

from workers.tool_calls.base import DONE, FAIL, MORE, Body, JsonArgs, ToolCallParser

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
FENCE_OPEN, FENCE_CLOSE = "```json", "```"
MAX_NAME = 256


class DeepSeekBody(Body):
    def __init__(self, parser: ToolCallParser, opened_by: str) -> None:
        super().__init__(parser, opened_by)
        self.state = "head" if opened_by == CALL_BEGIN else "calls"
        self.fenced = False
        self.arg_stream: JsonArgs | None = None

    def feed(self, text: str) -> tuple[int, str]:
        self.buf += text
        while True:
            if self.state == "calls":
                begin = self.expect(CALL_BEGIN)
                if begin:
                    self.state = "head"
                    continue
                end = self.expect(CALLS_END)
                if end:
                    return DONE, self.buf
                if begin is None or end is None:
                    return MORE, ""
                return (DONE, self.buf) if self.called else (FAIL, self.buf)
            elif self.state == "head":
                head = self.until(SEP)
                if head is None:
                    return (FAIL, self.buf) if len(self.buf) > MAX_NAME and not self.called else (MORE, "")
                if head.strip() == "function":
                    self.state, self.fenced = "name", True
                else:
                    self._start(head.strip())
            elif self.state == "name":
                name = self.until("\n")
                if name is None:
                    return MORE, ""
                self._start(name.strip())
                self.state = "fence"
            elif self.state == "fence":
                got = self.expect(FENCE_OPEN)
                if got is None:
                    return MORE, ""
                self.state = "args"
            elif self.state == "args":
                assert self.arg_stream is not None
                if not self.arg_stream.step():
                    return MORE, ""
                self.end_call()
                self.state = "close_fence" if self.fenced else "call_end"
            elif self.state == "close_fence":
                if self.expect(FENCE_CLOSE) is None:
                    return MORE, ""
                self.state = "call_end"
            elif self.state == "call_end":
                if self.expect(CALL_END) is None:
                    return MORE, ""
                self.state = "calls"

    def _start(self, name: str) -> None:
        self.start_call(name)
        self.arg_stream = JsonArgs(self)
        self.state = "args"


class DeepSeekParser(ToolCallParser):
    family = "deepseek"
    markers = (CALLS_BEGIN, CALL_BEGIN)
    preserved_tokens = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)

    def open_body(self, marker: str) -> Body:
        return DeepSeekBody(self, marker)
