"""Audio and image uploads: which formats are accepted and what the bytes really are.

Used by the media doors, the Files API and the chat attachments (audio files go through the
``[audio] strategy``). A file is known by its content (magic bytes), not by the name or the
content type a client gave it; the name and the type only have to agree with what is accepted.
"""

from __future__ import annotations

import os

# What OpenAI's /v1/audio/transcriptions accepts.
AUDIO_FORMATS: tuple[str, ...] = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg",
              "webm": "audio/webm", "mp4": "audio/mp4", "m4a": "audio/mp4", "opus": "audio/ogg",
              "oga": "audio/ogg", "mpeg": "audio/mpeg", "mpga": "audio/mpeg", "pcm": "audio/pcm",
              "aac": "audio/aac"}
IMAGE_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def extension(name: str | None) -> str:
    return os.path.splitext((name or "").lower())[1].lstrip(".")


def sniff_audio(data: bytes) -> str | None:
    """The container of ``data`` (wav, flac, ogg, mp3, webm, mp4), or None when it is no audio we know."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None


def sniff_image(data: bytes) -> str | None:
    head = data[:16]
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def is_audio_name(name: str | None) -> bool:
    return extension(name) in AUDIO_FORMATS


def is_audio_type(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower().startswith("audio/")


def audio_type_allowed(content_type: str | None) -> bool:
    """A declared type that may carry audio (clients often send octet-stream, or video/* for mp4 and webm)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return not kind or kind.startswith("audio/") or kind in ("application/octet-stream", "video/mp4", "video/webm",
                                                              "video/mpeg", "video/ogg")
