"""The incremental tool-call parser every family builds on.

A parser consumes the answer text piece by piece (as the engine decodes it) and reports what
each piece turned out to be to a ``Sink``: content, reasoning, or a tool call (its start with
id and name, then argument fragments, then its end). Text that may still begin a family's
marker is held back only until it can be judged; text that cannot is reported at once, so the
common case (prose, no marker character in the piece) costs one substring test per piece.

A family defines its start markers and the ``Body`` that reads one marked section. A body is
tentative until it has seen enough to know it holds a call (a name): until then it may fail,
and everything it consumed is released as content, so a malformed call is text, never lost.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

MORE, DONE, FAIL = 0, 1, 2  # what a Body says after a feed
WHITESPACE = " \t\r\n"


class Sink(Protocol):
    def content(self, text: str) -> None: ...

    def reasoning(self, text: str) -> None: ...

    def call_start(self, index: int, call_id: str, name: str) -> None: ...

    def call_args(self, index: int, fragment: str) -> None: ...

    def call_end(self, index: int) -> None: ...


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_parameters(tools: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tool name -> its JSON-schema parameters, for the OpenAI ``tools`` list (function tools only)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            params = function.get("parameters")
            out[function["name"]] = dict(params) if isinstance(params, Mapping) else {"type": "object"}
    return out


def held_tail(text: str, markers: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could begin one of ``markers``."""
    hold = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), hold, -1):
            if text.endswith(marker[:n]):
                hold = n
                break
    return hold


# ------------------------------------------------------------------------------ JSON scanning

_STRING_STOP = re.compile(r'["\\]')


class JsonValue:
    """Finds where one JSON value ends in text that arrives in pieces (strings, escapes, nesting)."""

    __slots__ = ("depth", "escaped", "in_string", "is_string", "scalar", "started")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = self.escaped = self.started = self.scalar = self.is_string = False

    def scan(self, s: str, i: int = 0) -> int:
        """Scan ``s`` from ``i``: the index just past the value's end, or -1 when ``s`` ends first."""
        n = len(s)
        while i < n:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                    i += 1
                    continue
                m = _STRING_STOP.search(s, i)
                if m is None:
                    return -1
                i = m.end()
                if m.group() == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
                    if self.depth == 0:
                        return i
                continue
            c = s[i]
            if not self.started:
                if c in WHITESPACE:
                    i += 1
                    continue
                self.started = True
                if c == '"':
                    self.in_string = self.is_string = True
                elif c in "{[":
                    self.depth = 1
                else:
                    self.scalar = True
            elif self.scalar:
                if c in ",}]" or c in WHITESPACE:
                    return i
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
            i += 1
        return -1


# ------------------------------------------------------------------------------ bodies


class Body:
    """Reads one marked section (a call, a block of calls, a channel message) of a family's output.

    ``feed`` returns (MORE, "") while it needs more text, (DONE, rest) when the section ended
    (``rest`` is the text after it), or (FAIL, rest) when it turned out not to be a call: the
    parser then releases ``consumed`` as content and goes on with ``rest``.
    """

    def __init__(self, parser: ToolCallParser, opened_by: str) -> None:
        self.parser = parser
        self.buf = ""
        self.consumed = opened_by
        self.index: int | None = None  # the call being reported, once it started
        self.called = False  # this section reported at least one call

    def take(self, n: int) -> str:
        piece, self.buf = self.buf[:n], self.buf[n:]
        if not self.called:  # only a section that may still fail needs its text back
            self.consumed += piece
        return piece

    def skip_space(self) -> None:
        stripped = self.buf.lstrip(WHITESPACE)
        if len(stripped) != len(self.buf):
            self.take(len(self.buf) - len(stripped))

    def expect(self, literal: str) -> bool | None:
        """Consume ``literal`` after optional whitespace: True; None while undecided; False if absent."""
        stripped = self.buf.lstrip(WHITESPACE)
        if stripped.startswith(literal):
            self.take(len(self.buf) - len(stripped) + len(literal))
            return True
        return None if literal.startswith(stripped) else False

    def until(self, marker: str) -> str | None:
        """The text before ``marker`` (both consumed), or None while the marker has not come."""
        i = self.buf.find(marker)
        if i < 0:
            return None
        text = self.take(i)
        self.take(len(marker))
        return text

    def start_call(self, name: str) -> int:
        self.index = self.parser.start_call(name)
        self.called = True
        return self.index

    def args(self, fragment: str) -> None:
        if fragment and self.index is not None:
            self.parser.sink.call_args(self.index, fragment)

    def end_call(self) -> None:
        if self.index is not None:
            self.parser.sink.call_end(self.index)
            self.index = None

    def feed(self, text: str) -> tuple[int, str]:
        raise NotImplementedError

    def salvage(self) -> None:
        """At a cut-off end: start the call whose name is already known (bodies that can)."""

    def close(self) -> str:
        """The output ended inside this section: end a started call (it is reported, partial as it
        is: a max_tokens cut keeps what the model wrote); return the text to release as content
        when the section held no call."""
        self.salvage()
        if self.index is not None:
            self.end_call()
        return "" if self.called else self.consumed + self.buf


class JsonArgs:
    """Streams one JSON arguments value as fragments while it arrives (a JSON string holding the
    arguments, as some models write them, is decoded once it is complete)."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.value = JsonValue()
        self.string = ""

    def step(self) -> bool:
        """Consume what the body holds; True once the value is complete."""
        body = self.body
        if not self.value.started:
            body.skip_space()
            if not body.buf:
                return False
        end = self.value.scan(body.buf)
        piece = body.take(len(body.buf) if end < 0 else end)
        if self.value.is_string:
            self.string += piece
            if end >= 0:
                try:
                    decoded = json.loads(self.string)
                except ValueError:
                    decoded = self.string
                body.args(decoded if isinstance(decoded, str) else json.dumps(decoded, ensure_ascii=False))
        else:
            body.args(piece)
        return end >= 0


_KEY = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*:')
_PARTIAL_KEY = re.compile(r'\s*(?:"(?:[^"\\]|\\.)*(?:"\s*)?\\?)?')
_STRING = re.compile(r'\s*("(?:[^"\\]|\\.)*")')
_PARTIAL_STRING = re.compile(r'\s*(?:"(?:[^"\\]|\\.)*\\?)?')
NAME_KEYS = frozenset({"name"})
ARGUMENT_KEYS = frozenset({"arguments", "parameters"})
IGNORED_KEYS = frozenset({"type", "id"})


class JsonCall:
    """Reads one ``{"name": ..., "arguments": {...}}`` object from a Body's buffer.

    The call starts (id and name reported) once the name is known and the arguments begin;
    arguments then stream as they arrive. Before that the object is tentative: a first key
    that no call has, or a value that is not a string name, fails it.
    """

    def __init__(self, body: Body, argument_keys: frozenset[str] = ARGUMENT_KEYS) -> None:
        self.body = body
        self.argument_keys = argument_keys
        self.state = "open"
        self.name: str | None = None
        self.early_args: str | None = None  # arguments written before the name: reported after it
        self.value: JsonValue | None = None
        self.args: JsonArgs | None = None

    def step(self) -> int:
        body = self.body
        while True:
            if self.state == "open":
                got = body.expect("{")
                if got is None:
                    return MORE
                if not got:
                    return FAIL
                self.state = "key"
            elif self.state == "key":
                m = _KEY.match(body.buf)
                if m is None:
                    closing = body.expect("}")
                    if closing:
                        return self._close()
                    if closing is None or _PARTIAL_KEY.fullmatch(body.buf):
                        return MORE
                    return self._broken()
                key = json.loads(f'"{m.group(1)}"')
                if key not in NAME_KEYS | self.argument_keys | IGNORED_KEYS and self.name is None:
                    return FAIL
                body.take(m.end())
                if key in NAME_KEYS:
                    self.state = "name"
                elif key in self.argument_keys:
                    if self.name is not None and body.index is None:
                        body.start_call(self.name)
                        self.args = JsonArgs(body)
                        self.state = "args"
                    else:
                        self.value, self.early_args, self.state = JsonValue(), "", "early"
                else:
                    self.value, self.state = JsonValue(), "skip"
            elif self.state == "name":
                m = _STRING.match(body.buf)
                if m is None:
                    if _PARTIAL_STRING.fullmatch(body.buf):
                        return MORE
                    return self._broken()
                body.take(m.end())
                self.name = json.loads(m.group(1))
                self.state = "after"
            elif self.state == "args":
                assert self.args is not None
                if not self.args.step():
                    return MORE
                self.state = "after"
            elif self.state in ("early", "skip"):
                assert self.value is not None
                end = self.value.scan(body.buf)
                piece = body.take(len(body.buf) if end < 0 else end)
                if self.state == "early":
                    self.early_args = (self.early_args or "") + piece
                if end < 0:
                    return MORE
                self.state = "after"
            elif self.state == "after":
                got = body.expect(",")
                if got:
                    self.state = "key"
                    continue
                if got is None:
                    return MORE
                closing = body.expect("}")
                if closing is None:
                    return MORE
                return self._close() if closing else self._broken()

    def _close(self) -> int:
        body = self.body
        if self.name is None:
            return FAIL
        if body.index is None:
            body.start_call(self.name)
            args = (self.early_args or "").strip()
            if args.startswith('"'):
                try:
                    args = json.loads(args)
                except ValueError:
                    pass
            body.args(args or "{}")
        body.end_call()
        return DONE

    def salvage(self) -> None:
        """The output was cut inside the object: report the call if its name was written."""
        body = self.body
        if body.index is None and self.name is not None and not body.called:
            body.start_call(self.name)
            body.args((self.early_args or "").strip())

    def _broken(self) -> int:
        """Malformed JSON: before the call started it is text; after, the call ends where it broke."""
        if self.body.index is None:
            return FAIL
        self.body.end_call()
        return DONE


# ------------------------------------------------------------------------------ the parser


class ToolCallParser:
    """Base of every family: scans content for the family's start markers and hands marked
    sections to its Body. Subclasses set the class attributes and ``open_body``."""

    family: ClassVar[str] = ""
    markers: ClassVar[tuple[str, ...]] = ()
    # A bare JSON call object as the answer (or right after a call) counts, as Llama 3 writes them.
    json_at_start: ClassVar[bool] = False
    # <think>…</think> reasoning is separated before this parser sees the text (Harmony has channels).
    think_tags: ClassVar[bool] = True
    # Runs even without tools (Harmony: its channels separate reasoning from the answer).
    always: ClassVar[bool] = False
    # Special tokens the engine must render as text for this parser to see them.
    preserved_tokens: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sink: Sink, tools: Sequence[Mapping[str, Any]] = (), tools_enabled: bool = True) -> None:
        self.sink = sink
        self.parameters = tool_parameters(tools)
        self.tools_enabled = tools_enabled
        self.pending = ""
        self.body: Body | None = None
        self.calls = 0
        self.at_start = True  # nothing but whitespace reported since the start or the last call
        self._triggers = tuple({m[0] for m in self.markers} | ({"{"} if self.json_at_start else set()))

    # ------------------------------------------------------------ to override

    def open_body(self, marker: str) -> Body:
        raise NotImplementedError

    def json_body(self) -> Body:
        raise NotImplementedError

    # ------------------------------------------------------------ for bodies

    def start_call(self, name: str) -> int:
        index = self.calls
        self.calls += 1
        self.sink.call_start(index, new_call_id(), name)
        return index

    # ------------------------------------------------------------ feeding

    def feed(self, text: str) -> None:
        if self.body is None and not self.pending and not self.at_start:
            for trigger in self._triggers:
                if trigger in text:
                    break
            else:  # the fast path: no marker can begin in this piece
                if text:
                    self.sink.content(text)
                    self.at_start = False
                return
        self._run(self.pending + text)

    def _run(self, s: str) -> None:
        self.pending = ""
        while s:
            body = self.body
            if body is not None:
                status, s = body.feed(s)
                if status == MORE:
                    return
                self.body = None
                if status == FAIL:
                    self._content(body.consumed)
                else:
                    self.at_start = True
                continue
            s = self._scan_text(s)

    def _scan_text(self, s: str) -> str:
        """Report content up to the first marker and open its body; returns the text after the marker
        ('' when no marker: a tail that may begin one waits in ``pending``)."""
        best, marker = -1, ""
        for m in self.markers:
            i = s.find(m)
            if i >= 0 and (best < 0 or i < best):
                best, marker = i, m
        if self.at_start:
            # Whitespace before a call (after the start, a call or a reasoning block) is no content.
            j = len(s) - len(s.lstrip(WHITESPACE))
            if j == len(s):
                self.pending = s  # only whitespace so far: wait to see what follows
                return ""
            if self.json_at_start and s[j] == "{" and (best < 0 or j < best):
                self.body = self.json_body()
                return s[j:]
            if best == j:
                self.body = self.open_body(marker)
                return s[best + len(marker):]
            if best < 0 and held_tail(s, self.markers) >= len(s) - j:
                self.pending = s  # whitespace, then what may begin a marker
                return ""
        if best >= 0:
            self._content(s[:best])
            self.body = self.open_body(marker)
            return s[best + len(marker):]
        hold = held_tail(s, self.markers)
        self._content(s[: len(s) - hold])
        self.pending = s[len(s) - hold:]
        return ""

    def _content(self, text: str) -> None:
        if text:
            self.sink.content(text)
            if self.at_start and text.strip(WHITESPACE):
                self.at_start = False

    def finish(self) -> None:
        """The output ended: close an open section, release what was held back."""
        if self.body is not None:
            body, self.body = self.body, None
            self._content(body.close())
        pending, self.pending = self.pending, ""
        if pending.strip(WHITESPACE) or not self.calls:
            self._content(pending)
