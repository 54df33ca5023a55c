"""Reading multipart uploads (the audio and image routes, the Files API) under the upload cap.

A part is read chunk by chunk and refused the moment it passes the cap, so an oversized upload
is never held whole; files are checked by their bytes (``media.audio``), not by their names.
"""

from __future__ import annotations

import asyncio

from aiohttp import BodyPartReader, web

from gateway.errors import GatewayError, bad_request
from gateway.providers.media import Upload
from media.attachments import safe_name
from media.audio import (
    AUDIO_FORMATS,
    IMAGE_FORMATS,
    IMAGE_MIME,
    audio_type_allowed,
    extension,
    sniff_audio,
    sniff_image,
)

MAX_FIELD_BYTES = 64 * 1024  # a text field (prompt, language, ...)
MAX_PARTS = 32
READ_TIMEOUT_S = 120.0  # a 25 MB upload on a slow link, not a client that stalls forever
_CHUNK = 256 * 1024


def too_large(what: str, limit: int) -> GatewayError:
    return GatewayError(413, f"{what} is larger than the upload limit of {limit} bytes ({limit // (1 << 20)} MB).",
                        param="file", code="file_too_large")


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    data = bytearray()
    while True:
        chunk = await part.read_chunk(_CHUNK)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise too_large(what, limit)


async def read_form(request: web.Request, max_file_bytes: int) -> tuple[dict[str, str | list[str]], list[Upload]]:
    """The text fields (repeated ones as lists) and the files of a multipart/form-data body."""
    if not request.content_type.startswith("multipart/form-data"):
        raise bad_request(f"Unsupported Content-Type {request.content_type or 'none'!r}: send multipart/form-data.")
    # The whole body may hold a little more than one file (the other fields, the boundaries); a body
    # sent without Content-Length (chunked) is held to the same total while it is read.
    body_limit = max_file_bytes + (1 << 20)
    if request.content_length is not None and request.content_length > body_limit:
        raise too_large("The request body", max_file_bytes)
    fields: dict[str, str | list[str]] = {}
    uploads: list[Upload] = []
    total = 0
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            reader = await request.multipart()
            count = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                count += 1
                if count > MAX_PARTS or not isinstance(part, BodyPartReader):
                    raise bad_request("The form has too many or nested parts.")
                name = part.name or ""
                if part.filename is not None:
                    data = await _read_part(part, min(max_file_bytes, body_limit - total),
                                            f"The file {safe_name(part.filename)!r}")
                    total += len(data)
                    content_type = part.headers.get("Content-Type", "application/octet-stream")
                    uploads.append(Upload(name, safe_name(part.filename, "upload"), content_type, data))
                    continue
                raw = await _read_part(part, min(MAX_FIELD_BYTES, body_limit - total), f"The field {name!r}")
                total += len(raw)
                text = raw.decode("utf-8", "replace")
                previous = fields.get(name)
                if previous is None:
                    fields[name] = text
                else:
                    fields[name] = [*previous, text] if isinstance(previous, list) else [previous, text]
    except TimeoutError:
        raise GatewayError(408, "Timed out reading the upload.", code="request_timeout") from None
    except ValueError as exc:  # a malformed multipart body
        raise bad_request(f"The multipart body is malformed: {exc}.") from None
    return fields, uploads


def check_audio(upload: Upload) -> Upload:
    """An audio file in a format the transcription routes take, whatever name or type it came with."""
    supported = ", ".join(AUDIO_FORMATS)
    kind = sniff_audio(upload.data)
    if not upload.data:
        raise bad_request(f"The file {upload.filename!r} is empty.", param="file")
    if kind is None or extension(upload.filename) not in AUDIO_FORMATS or not audio_type_allowed(upload.content_type):
        raise bad_request(f"Invalid file format of {upload.filename!r}. Supported formats: {supported}.",
                          param="file", code="invalid_file_format")
    return upload


def check_image(upload: Upload, param: str = "image") -> Upload:
    kind = sniff_image(upload.data)
    if kind is None:
        raise bad_request(f"Invalid image {upload.filename!r}: send a {', '.join(IMAGE_FORMATS)} file.", param=param,
                          code="invalid_image_format")
    # The bytes decide the type (a client may send image/* or octet-stream for any of them).
    return Upload(upload.field, upload.filename, IMAGE_MIME[kind], upload.data)
