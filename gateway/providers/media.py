"""The media calls (/v1/audio/*, /v1/images/*) as providers see them, and what both kinds of provider share.

A door parses the request into a ``MediaCall`` (JSON fields, or form fields plus the uploaded
files); a provider whose ``capabilities`` name the operation answers it with a ``MediaReply``:
a content type and the body as an async iterator of bytes, so speech audio streams through as
it comes. An OpenAI-compatible provider relays the call upstream (``relay``); local workers
answer through the pool (gateway/pool/media.py). Transcripts from workers are rendered in the
client's ``response_format`` here (``render_transcript``), the formats OpenAI answers.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.providers.base import Capabilities
from gateway.providers.http import open_call
from gateway.providers.upstream import Upstream


class MediaOperation(enum.StrEnum):
    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"
    SPEECH = "speech"
    IMAGE_GENERATION = "image_generation"
    IMAGE_EDIT = "image_edit"

    @property
    def path(self) -> str:
        """The route below /v1, as the OpenAI API names it."""
        return _PATHS[self]

    def supported_by(self, capabilities: Capabilities) -> bool:
        if self in (MediaOperation.TRANSCRIPTION, MediaOperation.TRANSLATION):
            return capabilities.audio_transcription
        if self is MediaOperation.SPEECH:
            return capabilities.audio_speech
        return capabilities.image_generation


_PATHS = {
    MediaOperation.TRANSCRIPTION: "/audio/transcriptions",
    MediaOperation.TRANSLATION: "/audio/translations",
    MediaOperation.SPEECH: "/audio/speech",
    MediaOperation.IMAGE_GENERATION: "/images/generations",
    MediaOperation.IMAGE_EDIT: "/images/edits",
}
OPERATION_BY_ROUTE = {"/v1" + path: operation for operation, path in _PATHS.items()}


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file of a multipart request (already checked for size and type)."""

    field: str  # the form field: file, image, image[], mask
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class MediaCall:
    request_id: str
    provider: str
    model: str  # the provider's own model id
    requested_model: str
    operation: MediaOperation
    fields: dict[str, Any]  # the JSON body, or the form's text fields (without model, api_key, base_url)
    uploads: list[Upload] = field(default_factory=list)
    multipart: bool = False
    api_key: str | None = None
    base_url: str | None = None
    base_url_trusted: bool = False
    notices: list[str] = field(default_factory=list)

    def upload(self, name: str) -> Upload | None:
        return next((u for u in self.uploads if u.field in (name, f"{name}[]")), None)


@dataclass(slots=True)
class MediaReply:
    content_type: str
    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


class MediaProvider(Protocol):
    """A provider with one of the media capabilities."""

    def media(self, call: MediaCall) -> AbstractAsyncContextManager[MediaReply]:
        """Answer the call; the reply's body is read inside the context (the upstream stays open)."""
        ...


async def single(data: bytes) -> AsyncIterator[bytes]:
    """A body that is one piece (a JSON answer)."""
    yield data


# ---------------------------------------------------------------------- relaying to an OpenAI-compatible API


def encode_multipart(fields: Mapping[str, Any], uploads: list[Upload]) -> tuple[bytes, str]:
    """multipart/form-data bytes (not a stream: a stale pooled connection is retried with the same body)."""
    boundary = "acore" + secrets.token_hex(16)
    out = bytearray()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            out += f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
            out += text.encode() + b"\r\n"
    for upload in uploads:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(upload.field)}"; '
                f'filename="{_quote(upload.filename)}"\r\nContent-Type: {upload.content_type}\r\n\r\n').encode()
        out += upload.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


async def _relay_body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_any():
        yield chunk


# Upstream headers worth passing on (the rest describe the upstream's own connection).
_PASSED_HEADERS = ("x-request-id", "openai-processing-ms", "retry-after")


@asynccontextmanager
async def relay(session: aiohttp.ClientSession, provider: str, upstream: Upstream,
                call: MediaCall) -> AsyncIterator[MediaReply]:
    """POST the call to the upstream's own route; the answer streams back as it arrives."""
    fields = {**call.fields, "model": call.model}
    if call.multipart:
        body, content_type = encode_multipart(fields, call.uploads)
    else:
        body, content_type = orjson.dumps(fields), "application/json"
    async with open_call(session, provider, "POST", upstream, call.operation.path, body=body,
                         content_type=content_type) as response:
        headers = {name: response.headers[name] for name in _PASSED_HEADERS if name in response.headers}
        yield MediaReply(response.headers.get("Content-Type", "application/octet-stream"), _relay_body(response),
                         headers)


# ---------------------------------------------------------------------- transcripts from local workers

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def transcript_events(result: Mapping[str, Any]) -> bytes:
    """A transcript as OpenAI's streamed transcription events (``stream=true``): one delta per segment,
    then the whole text (a local worker answers once it is done, so the deltas come together)."""
    out = bytearray()
    for index, segment in enumerate(s for s in result.get("segments") or () if isinstance(s, dict)):
        delta = str(segment.get("text", "")).strip()
        event = {"type": "transcript.text.delta", "delta": (" " if index else "") + delta}
        out += b"data: " + orjson.dumps(event) + b"\n\n"
    done = {"type": "transcript.text.done", "text": str(result.get("text", ""))}
    out += b"data: " + orjson.dumps(done) + b"\n\n"
    return bytes(out)


def render_transcript(result: Mapping[str, Any], response_format: str, task: str) -> tuple[bytes, str]:
    """(body, content type) of a transcript ``{"text", "language", "duration", "segments"}``."""
    text = str(result.get("text", ""))
    segments = [s for s in result.get("segments") or () if isinstance(s, dict)]
    if response_format == "text":
        return (text + "\n").encode(), "text/plain; charset=utf-8"
    if response_format in ("srt", "vtt"):
        separator = "," if response_format == "srt" else "."
        lines = ["WEBVTT", ""] if response_format == "vtt" else []
        for index, segment in enumerate(segments, start=1):
            if response_format == "srt":
                lines.append(str(index))
            lines.append(f"{_timestamp(float(segment.get('start', 0)), separator)} --> "
                         f"{_timestamp(float(segment.get('end', 0)), separator)}")
            lines.extend([str(segment.get("text", "")).strip(), ""])
        content_type = "text/plain; charset=utf-8" if response_format == "srt" else "text/vtt; charset=utf-8"
        return "\n".join(lines).encode(), content_type
    if response_format == "verbose_json":
        payload = {"task": task, "language": result.get("language") or "english",
                   "duration": float(result.get("duration") or 0.0), "text": text,
                   "segments": [{"id": i, "seek": 0, "start": float(s.get("start", 0)), "end": float(s.get("end", 0)),
                                 "text": str(s.get("text", "")), "tokens": list(s.get("tokens") or []),
                                 "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                                 "no_speech_prob": 0.0} for i, s in enumerate(segments)]}
        return orjson.dumps(payload), "application/json"
    return orjson.dumps({"text": text}), "application/json"
