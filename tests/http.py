"""Raw HTTP for the tests: one small urllib client (no client library of our own to trust).

An HTTP error status is never raised: every call returns a ``Reply`` carrying the status, so a
test asserts on it. Connection failures (refused, reset, timed out) still raise ``OSError``.
Also here: reading and clearing what a fake upstream recorded (``GET``/``DELETE /_requests``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.procs import Proc

TIMEOUT = 30.0


class Headers(dict[str, str]):
    """Response headers with lower-cased keys; lookups work in any case (``headers["Retry-After"]``)."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        super().__init__((key.lower(), value) for key, value in pairs)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (a chat stream's ``[DONE]`` included)."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """An SSE body as (``event:`` name or None, decoded ``data:``) pairs: the Responses wire format,
    which ends with response.completed (or failed), never with ``[DONE]``."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    for block in text.split("\n\n"):
        name, lines = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].lstrip())
        if lines:
            data = "\n".join(lines)
            assert data != "[DONE]", "Responses streams end with response.completed, not [DONE]"
            events.append((name, json.loads(data)))
    return events


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, whatever its status; the body is decoded only when asked for."""

    status: int
    headers: Headers
    raw: bytes

    @property
    def status_code(self) -> int:
        """The status, under the name requests and httpx give it."""
        return self.status

    @cached_property
    def text(self) -> str:
        return self.raw.decode()

    def json(self) -> Any:
        return json.loads(self.raw)

    def json_or_text(self) -> Any:
        """The decoded JSON body, or its text when it is not JSON."""
        text = self.raw.decode(errors="replace")
        try:
            return json.loads(text)
        except ValueError:
            return text

    @property
    def is_stream(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    @cached_property
    def body(self) -> Any:
        """The decoded JSON body; None for an empty body or an event stream."""
        return None if self.is_stream or not self.raw else self.json()

    def sse_data(self) -> list[str]:
        return sse_data(self.text)

    @cached_property
    def events(self) -> list[tuple[str | None, dict[str, Any]]]:
        """A Responses stream's (name, data) events (see ``sse_events``); [] when not an event stream."""
        return sse_events(self.text) if self.is_stream else []

    def types(self) -> list[str]:
        return [data["type"] for _, data in self.events]

    def last(self, kind: str) -> dict[str, Any]:
        return [data for _, data in self.events if data["type"] == kind][-1]


def _request(method: str, url: str, body: Any, content: bytes | None,
             headers: Mapping[str, str] | None) -> urllib.request.Request:
    data = content if content is not None else None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    return urllib.request.Request(url, data=data, method=method, headers={**sent, **(headers or {})})


def request(method: str, url: str, body: Any = None, *, content: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT) -> Reply:
    """Send ``body`` as JSON (or ``content`` as given bytes) and read the whole answer."""
    try:
        with urllib.request.urlopen(_request(method, url, body, content, headers), timeout=timeout) as answer:
            return Reply(answer.status, Headers(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, Headers(exc.headers.items()), exc.read())


def post(url: str, body: Any = None, *, content: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = TIMEOUT) -> Reply:
    return request("POST", url, body, content=content, headers=headers, timeout=timeout)


def get(url: str, *, headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT) -> Reply:
    return request("GET", url, headers=headers, timeout=timeout)


def get_json(url: str, *, headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT) -> Any:
    return get(url, headers=headers, timeout=timeout).json()


@contextmanager
def stream_lines(method: str, url: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
                 timeout: float = TIMEOUT) -> Iterator[Iterator[str]]:
    """Send a request and yield its body's lines as they arrive (newline stripped), for a test that
    acts while a stream is still open. An error status yields the error body's lines."""
    try:
        answer = urllib.request.urlopen(_request(method, url, body, None, headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        answer = exc
    with answer:
        yield (line.decode().rstrip("\n") for line in answer)


def records(fake: Proc) -> list[dict[str, Any]]:
    """Every request a fake upstream recorded (path, headers, body), oldest first."""
    reply = get(fake.url + "/_requests", timeout=10)
    assert reply.status == 200, reply.raw
    return list(reply.json())


def clear_records(fake: Proc) -> None:
    reply = request("DELETE", fake.url + "/_requests", timeout=10)
    assert reply.status == 200, reply.raw
