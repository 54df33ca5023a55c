"""Mistral ``[TOOL_CALLS]``, both forms.

- Old (v3 tokenizer: Mistral 7B v0.3, Nemo, Small 2409):
  ``[TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "abc123def"}, ...]``
- New (v11+: Small 3.2, Devstral, Magistral): ``[TOOL_CALLS]f[ARGS]{...}``, optionally
  ``[TOOL_CALLS]f[CALL_ID]abc123def[ARGS]{...}``; every call has its own ``[TOOL_CALLS]``.
"""

from __future__ import annotations

import re

from workers.tool_calls.base import DONE, FAIL, MORE, Body, JsonArgs, JsonCall, ToolCallParser

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_NAME = re.compile(r"[\w.\-]*")


class MistralBody(Body):
    def __init__(self, parser: ToolCallParser, opened_by: str) -> None:
        super().__init__(parser, opened_by)
        self.state = "start"
        self.call: JsonCall | None = None
        self.arg_stream: JsonArgs | None = None

    def feed(self, text: str) -> tuple[int, str]:
        self.buf += text
        while True:
            if self.state == "start":
                self.skip_space()
                if not self.buf:
                    return MORE, ""
                if self.buf[0] == "[":  # the old form's list (a new-form name never starts with "[")
                    self.take(1)
                    self.state, self.call = "array", JsonCall(self)
                else:
                    self.state = "name"
            elif self.state == "array":
                assert self.call is not None
                status = self.call.step()
                if status == MORE:
                    return MORE, ""
                if status == FAIL:
                    return (FAIL, self.buf) if not self.called else (DONE, self.buf)
                self.state = "array_next"
            elif self.state == "array_next":
                more = self.expect(",")
                if more:
                    self.state, self.call = "array", JsonCall(self)
                    continue
                close = self.expect("]")
                if more is None or close is None:
                    return MORE, ""
                return DONE, self.buf
            elif self.state == "name":
                ends = [i for i in (self.buf.find(ARGS), self.buf.find(CALL_ID)) if i >= 0]
                if not ends:
                    # a name is one word: anything else before [ARGS] means this was no call
                    head = self.buf[: len(self.buf) - _partial_marker(self.buf)]
                    return (MORE, "") if _NAME.fullmatch(head.strip()) else (FAIL, self.buf)
                end = min(ends)
                name = self.take(end).strip()
                if not name or not _NAME.fullmatch(name):
                    return FAIL, self.buf
                self.start_call(name)
                if self.buf.startswith(CALL_ID):
                    self.state = "call_id"
                else:
                    self.take(len(ARGS))
                    self.state, self.arg_stream = "args", JsonArgs(self)
            elif self.state == "call_id":
                if self.until(ARGS) is None:
                    return MORE, ""
                self.state, self.arg_stream = "args", JsonArgs(self)
            elif self.state == "args":
                assert self.arg_stream is not None
                if not self.arg_stream.step():
                    return MORE, ""
                self.end_call()
                return DONE, self.buf

    def salvage(self) -> None:
        if self.call is not None and self.state == "array":
            self.call.salvage()


def _partial_marker(text: str) -> int:
    for n in range(min(len(text), len(CALL_ID)), 0, -1):
        tail = text[-n:]
        if ARGS.startswith(tail) or CALL_ID.startswith(tail):
            return n
    return 0


class MistralParser(ToolCallParser):
    family = "mistral"
    markers = (TOOL_CALLS,)
    preserved_tokens = (TOOL_CALLS, ARGS, CALL_ID)

    def open_body(self, marker: str) -> Body:
        return MistralBody(self, marker)
