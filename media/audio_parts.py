"""Audio and stored files in chat messages, before the attachment router sees them.

Finds ``input_audio`` parts, audio files (``@x.wav`` in user text, ``file`` parts whose data or URL
is audio) and ``file_id`` references (chat ``file`` parts, Responses ``input_file`` /
``input_image``). Stored files are read through ``files`` and become inline ``file_data`` (or an
image data URL), so the attachment router applies its usual limits; every audio clip goes to
``on_audio``, which decides what the model gets instead (a transcript, the audio itself, or an
error): that is the gateway's ``[audio] strategy``. Nothing here knows providers.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from media.attachments import AT_TOKEN, _Budget, _load, safe_name
from media.audio import extension, is_audio_name, is_audio_type, sniff_audio, sniff_image
from media.data_url import decode_base64, decode_data_url
from media.errors import bad
from media.fetch import Fetcher
from media.policy import MediaPolicy


class FileReader(Protocol):
    async def read(self, file_id: str) -> tuple[bytes, str]:
        """(content, filename) of a stored file; raises when there is none."""
        ...


# (audio bytes, format such as "wav", display name) -> the part the model gets instead
AudioHandler = Callable[[bytes, str, str], Awaitable[dict[str, Any]]]


def _is_audio_file_part(part: dict[str, Any]) -> bool:
    spec = part.get("file")
    if isinstance(spec, dict):
        if spec.get("file_id"):
            return True
        data = spec.get("file_data")
        if isinstance(data, str) and (data.startswith("data:audio/") or is_audio_name(spec.get("filename"))):
            return True
    url = part.get("file_url")
    url = url.get("url") if isinstance(url, dict) else url
    return isinstance(url, str) and is_audio_name(url.split("?", 1)[0])


def _needs(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    content = message.get("content")
    is_user = message.get("role") == "user"
    if isinstance(content, str):
        return is_user and "@" in content and any(is_audio_name(m.group(1)) for m in AT_TOKEN.finditer(content))
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "input_audio" or (kind == "file" and _is_audio_file_part(part)):
            return True
        if kind == "image_url" and isinstance(part.get("image_url"), dict) and part["image_url"].get("file_id"):
            return True
        if kind == "text" and is_user and "@" in str(part.get("text", "")) and any(
                is_audio_name(m.group(1)) for m in AT_TOKEN.finditer(str(part.get("text", "")))):
            return True
    return False


def needs_audio_work(messages: Any) -> bool:
    return isinstance(messages, list) and any(_needs(m) for m in messages)


def audio_format(data: bytes, name: str, mime: str) -> str | None:
    """The clip's format if ``data`` is audio (by its bytes, else by a declared audio type or name)."""
    sniffed = sniff_audio(data)
    if sniffed is not None:
        return sniffed
    if is_audio_type(mime) or is_audio_name(name):
        return extension(name) or mime.split("/", 1)[-1].split(";")[0]
    return None


class _Resolver:
    def __init__(self, policy: MediaPolicy, fetcher: Fetcher, files: FileReader | None, on_audio: AudioHandler,
                 charge: Callable[[int], None] | None = None) -> None:
        self.policy, self.fetcher, self.files, self.on_audio = policy, fetcher, files, on_audio
        self.budget = _Budget(policy, charge)  # the request's limit, and the caller's memory budget

    async def stored(self, file_id: str) -> tuple[bytes, str]:
        if self.files is None:
            raise bad("file_id references need the Files API, which this gateway does not run.")
        data, name = await self.files.read(file_id)
        if len(data) > self.policy.max_file_bytes:
            raise bad(f"{safe_name(name)} is larger than the attachment limit of {self.policy.max_file_bytes} bytes.")
        self.budget.spend(len(data))
        return data, safe_name(name)

    async def part(self, part: dict[str, Any]) -> dict[str, Any]:
        kind = part.get("type")
        if kind == "input_audio":
            clip = part.get("input_audio")
            if not isinstance(clip, dict) or not isinstance(clip.get("data"), str):
                raise bad("input_audio needs input_audio.data (base64) and input_audio.format.")
            data = decode_base64(clip["data"], self.policy.max_file_bytes)
            self.budget.spend(len(data))
            clip_format = str(clip.get("format") or sniff_audio(data) or "wav")
            return await self.on_audio(data, clip_format, f"audio.{clip_format}")
        if kind == "image_url":
            image_spec = part.get("image_url")
            if isinstance(image_spec, dict) and image_spec.get("file_id"):
                data, name = await self.stored(str(image_spec["file_id"]))
                image = sniff_image(data)
                if image is None:
                    raise bad(f"The file {image_spec['file_id']} ({name}) is not a png, jpeg or webp image.")
                inline = f"data:image/{image};base64," + base64.b64encode(data).decode()
                detail = {"detail": image_spec["detail"]} if image_spec.get("detail") else {}
                return {"type": "image_url", "image_url": {"url": inline, **detail}}
            return part
        if kind != "file":
            return part
        raw_spec = part.get("file")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        mime = ""
        if spec.get("file_id") and not spec.get("file_data"):
            data, name = await self.stored(str(spec["file_id"]))
        elif isinstance(spec.get("file_data"), str):
            payload: str = spec["file_data"]
            name = safe_name(spec.get("filename"))
            if payload.startswith("data:"):
                data, mime = decode_data_url(payload, self.policy.max_file_bytes)
            else:
                data, mime = decode_base64(payload, self.policy.max_file_bytes), ""
            if audio_format(data, name, mime) is None:
                return part  # not audio: the attachment router handles it
            self.budget.spend(len(data))
        else:
            where = part.get("file_url")
            source = where.get("url") if isinstance(where, dict) else where
            data, mime, name = await _load(str(source), self.policy, self.fetcher, self.budget, None)
        fmt = audio_format(data, name, mime)
        if fmt is not None:
            return await self.on_audio(data, fmt, name)
        # A stored file that is not audio: inline, for the attachment router (its limits apply there).
        return {"type": "file", "file": {"file_data": base64.b64encode(data).decode(), "filename": name}}

    async def text_files(self, text: str) -> list[dict[str, Any]]:
        """``@x.wav`` in user text: the clips under the allowed roots (the text itself stays)."""
        parts = []
        for match in AT_TOKEN.finditer(text):
            token = match.group(1).rstrip(".,;:!?)]}'\"")
            if not is_audio_name(token) or not self.policy.local_enabled:
                continue
            real = await asyncio.to_thread(self.policy.is_allowed_file, token)
            if real is None:
                continue
            data, _real = await asyncio.to_thread(self.policy.read_local, real)
            self.budget.spend(len(data))
            name = os.path.basename(real)
            parts.append(await self.on_audio(data, audio_format(data, name, "") or extension(name), name))
        return parts


async def resolve_audio(messages: list[dict[str, Any]], policy: MediaPolicy, fetcher: Fetcher,
                        files: FileReader | None, on_audio: AudioHandler,
                        charge: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Messages whose audio went through ``on_audio`` and whose ``file_id`` parts are inline; each decoded
    byte is also ``charge``d (the gateway's in-flight memory budget, which may refuse it)."""
    resolver = _Resolver(policy, fetcher, files, on_audio, charge)
    out: list[dict[str, Any]] = []
    for message in messages:
        if not _needs(message):
            out.append(message)
            continue
        content = message.get("content")
        is_user = message.get("role") == "user"
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        new_parts: list[dict[str, Any]] = []
        for part in parts:
            if not isinstance(part, dict):
                new_parts.append(part)
                continue
            if part.get("type") == "text":
                new_parts.append(part)
                if is_user and "@" in str(part.get("text", "")):
                    new_parts.extend(await resolver.text_files(str(part.get("text"))))
                continue
            new_parts.append(await resolver.part(part))
        out.append({**message, "content": new_parts})
    return out

