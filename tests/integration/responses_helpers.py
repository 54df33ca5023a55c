"""Helpers for the /v1/responses tests: raw HTTP (tests/http.py) decoded at once, and strict checks with the
SDK's own types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests import http
from tests.http import Reply

EVENT = TypeAdapter(ResponseStreamEvent)


def decoded(reply: Reply) -> Reply:
    """The reply with its body decoded now: the JSON of a plain answer, the events of a stream (which
    asserts that no Responses stream carries [DONE])."""
    _ = reply.events if reply.is_stream else reply.body
    return reply


def post(url: str, body: Any, headers: Mapping[str, str] | None = None, timeout: float = 30) -> Reply:
    return decoded(http.post(url, body, headers=headers, timeout=timeout))


def get(url: str) -> Reply:
    return decoded(http.get(url))


def delete(url: str) -> Reply:
    return decoded(http.request("DELETE", url))


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
