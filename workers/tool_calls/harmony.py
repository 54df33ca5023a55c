"""gpt-oss Harmony: the answer is a sequence of channel messages, not text with calls in it::

    <|channel|>analysis<|message|>thinking…<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>The answer<|return|>

``analysis`` is reasoning; ``final`` (and ``commentary`` with no recipient: a preamble) is
content; a message addressed ``to=functions.NAME`` is a call whose body is the JSON arguments.
The recipient may also stand before the channel (``<|start|>assistant to=functions.f<|channel|>…``).
Output that never opens a channel (a template without Harmony) is plain content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from workers.tool_calls.base import Sink, ToolCallParser, held_tail

CHANNEL, MESSAGE, START, CONSTRAIN = "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
BODY_ENDS = (END, CALL, RETURN, START)
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([\w-]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
# A header longer than this without <|message|> is not a Harmony header: it is released as text.
MAX_HEADER = 512


class HarmonyParser(ToolCallParser):
    family = "harmony"
    think_tags = False
    always = True
    markers = (CHANNEL, START)
    preserved_tokens = (CHANNEL, MESSAGE, START, CONSTRAIN, END, CALL, RETURN)

    def __init__(self, sink: Sink, tools: Sequence[Mapping[str, Any]] = (), tools_enabled: bool = True) -> None:
        super().__init__(sink, tools, tools_enabled)
        self.state = "header"  # header | body | plain
        self.kind = ""  # the open message: reasoning | content | call
        self.buf = ""
        self.index: int | None = None

    def feed(self, text: str) -> None:
        if self.state == "plain":
            if text:
                self.sink.content(text)
            return
        if self.state == "body" and not self.buf and "<" not in text:
            self._body(text)  # the fast path: a message's text with no marker in it
            return
        self.buf += text
        while self.buf:
            if self.state == "header":
                if not self._header():
                    return
            elif not self._message():
                return

    def _header(self) -> bool:
        """Read up to <|message|>; False while it has not come."""
        stripped = self.buf.lstrip()
        if self.kind == "" and stripped and not (stripped.startswith("<|") or "<|".startswith(stripped)):
            self.state = "plain"  # never opened a channel: the whole answer is text
            buf, self.buf = self.buf, ""
            self.sink.content(buf)
            return False
        i = self.buf.find(MESSAGE)
        if i < 0:
            if len(self.buf) > MAX_HEADER:
                buf, self.buf = self.buf, ""
                self.sink.content(buf)
            return False
        header, self.buf = self.buf[:i], self.buf[i + len(MESSAGE):]
        channel = _CHANNEL_NAME.search(header)
        recipient = _RECIPIENT.search(header)
        name = channel.group(1) if channel else "final"
        if recipient and self.tools_enabled:
            target = recipient.group(1)
            self.kind = "call"
            self.index = self.start_call(target.removeprefix("functions."))
        elif name == "analysis":
            self.kind = "reasoning"
        else:
            self.kind = "content"
        self.state = "body"
        return True

    def _message(self) -> bool:
        """Report the open message's text up to its end marker; False while it has not ended."""
        buf = self.buf
        best = -1
        for marker in BODY_ENDS:
            i = buf.find(marker)
            if i >= 0 and (best < 0 or i < best):
                best = i
        if best < 0:
            hold = held_tail(buf, BODY_ENDS)
            self._body(buf[: len(buf) - hold])
            self.buf = buf[len(buf) - hold:]
            return False
        self._body(buf[:best])
        marker = next(m for m in BODY_ENDS if buf.startswith(m, best))
        # <|start|> begins the next header: keep it there
        self.buf = buf[best:] if marker == START else buf[best + len(marker):]
        self._end_message()
        return True

    def _body(self, text: str) -> None:
        if not text:
            return
        if self.kind == "reasoning":
            self.sink.reasoning(text)
        elif self.kind == "call" and self.index is not None:
            self.sink.call_args(self.index, text)
        else:
            self.sink.content(text)

    def _end_message(self) -> None:
        if self.index is not None:
            self.sink.call_end(self.index)
            self.index = None
        self.state, self.kind = "header", "done"

    def finish(self) -> None:
        if self.state == "body":
            self._body(self.buf)
            self._end_message()
        elif self.state == "header" and self.kind == "" and self.buf.strip():
            self.sink.content(self.buf)  # a header-less answer shorter than one header
        self.buf = ""
