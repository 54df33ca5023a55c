"""Data URLs and raw base64 payloads: parsed in one place, length-checked before decoding."""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from media.errors import bad, too_large


def split_data_url(url: str) -> tuple[str, bool, str]:
    """``data:[mime][;base64],payload`` -> (mime, is base64, payload), nothing decoded yet."""
    if not url.startswith("data:"):
        raise bad("Not a data URL.")
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise bad("Malformed data URL: no comma.")
    params = head.split(";")
    mime = (params[0] or "text/plain").strip().lower()
    return mime, "base64" in (p.strip().lower() for p in params[1:]), payload


def base64_image(url: str) -> tuple[str, str]:
    """An image data URL as (media type, base64 payload), for APIs that take images inline.

    The payload is checked to start as base64, not decoded (the provider decodes it)."""
    mime, is_b64, payload = split_data_url(url)
    if not is_b64:
        raise bad("Image data URLs must be base64 (data:image/png;base64,...).")
    head = payload[:64]
    try:
        binascii.a2b_base64(head + "=" * (-len(head) % 4))
    except binascii.Error:
        raise bad("Image data URL is not valid base64.") from None
    return mime if mime != "text/plain" else "image/png", payload


def decode_data_url(url: str, max_bytes: int) -> tuple[bytes, str]:
    """``data:[mime][;base64],payload`` → (bytes, mime). The encoded length is checked before decoding."""
    mime, is_b64, payload = split_data_url(url)
    if is_b64:
        if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
            raise too_large(f"Data URL content is larger than {max_bytes} bytes.")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad("Data URL is not valid base64.") from None
    else:
        if len(payload) > max_bytes * 3:
            raise too_large(f"Data URL content is larger than {max_bytes} bytes.")
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise too_large(f"Data URL content is larger than {max_bytes} bytes.")
    return data, mime


def decode_base64(payload: str, max_bytes: int) -> bytes:
    """Raw base64 (OpenAI's file_data without a data: prefix), length checked first."""
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise too_large(f"File data is larger than {max_bytes} bytes.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad("File data is not valid base64.") from None
    if len(data) > max_bytes:
        raise too_large(f"File data is larger than {max_bytes} bytes.")
    return data
