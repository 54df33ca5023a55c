"""Helpers for the /v1/responses tests: raw HTTP with SSE parsing, and strict checks with the SDK's own types."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

EVENT = TypeAdapter(ResponseStreamEvent)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any = None  # decoded JSON (non-streaming or errors)
    events: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)

    def types(self) -> list[str]:
        return [data["type"] for _, data in self.events]

    def last(self, kind: str) -> dict[str, Any]:
        return [data for _, data in self.events if data["type"] == kind][-1]


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None, method: str = "POST",
         timeout: float = 30) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    reply = Reply(status, {k.lower(): v for k, v in got.items()})
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        reply.events = parse_sse(raw.decode())
    elif raw:
        reply.body = json.loads(raw)
    return reply


def get(url: str) -> Reply:
    return post(url, None, method="GET")  # type: ignore[arg-type]


def parse_sse(text: str) -> list[tuple[str | None, dict[str, Any]]]:
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


def check_events(reply: Reply) -> Response | None:
    """Every event validates as the SDK's ResponseStreamEvent, carries its name on the event: line
    and numbers in order; returns the final Response (completed or failed), validated."""
    assert reply.status == 200, reply.body
    assert reply.events, "no events"
    final = None
    for number, (name, data) in enumerate(reply.events):
        EVENT.validate_python(data, strict=True)
        assert name == data["type"], (name, data["type"])
        assert data["sequence_number"] == number
        if data["type"] in ("response.completed", "response.failed", "response.created"):
            final = Response.model_validate(data["response"], strict=True)
    return final
