"""Secrets out of everything the gateway writes: log lines, access lines, payload and verbatim logs.

Two layers. ``Redactor.text`` masks the configured keys wherever they appear, then anything
shaped like a key (``Bearer ...``, ``sk-...``, ``api_key=...`` and the common vendor token
forms). ``Redactor.value`` walks a JSON value first: fields named like a credential lose their
value whatever it looks like, and data URLs (attachments, images) become ``{type, size,
sha256}``, so a log neither leaks a key the patterns would miss nor holds megabytes of base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.ops.logs import RedactingJSONFormatter, mask_key_shapes

MASK = "[REDACTED]"

# JSON fields and headers whose value is a credential, compared lower-case with "-" read as "_".
SECRET_FIELDS = frozenset({
    "api_key", "apikey", "x_api_key", "x_provider_api_key", "authorization", "proxy_authorization", "cookie",
    "set_cookie", "password", "client_secret", "access_token", "refresh_token", "secret", "token",
})

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,([A-Za-z0-9+/=%._~-]{32,})")


def is_secret_field(name: str) -> bool:
    return name.lower().replace("-", "_") in SECRET_FIELDS


def data_url_summary(url: str) -> dict[str, Any] | None:
    """``{type, size, sha256}`` of a data URL's decoded bytes; None when ``url`` is not one."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        return None
    media_type = head[5:].split(";", 1)[0] or "text/plain"
    raw: bytes
    if head.endswith(";base64"):
        try:
            raw = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raw = payload.encode("utf-8", "replace")
    else:
        raw = payload.encode("utf-8", "replace")
    return {"type": media_type, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _inline_data_url(match: re.Match[str]) -> str:
    summary = data_url_summary(match.group(0)) or {}
    return f"[data URL {summary.get('type')} {summary.get('size')} bytes sha256={summary.get('sha256')}]"


class Redactor:
    """Masks known secrets and key-shaped strings (the patterns of ops/logs.py, which the log formatter
    uses too); ``value`` also strips credential fields and data URLs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these too from now on (keys of a reloaded configuration)."""
        self.secrets = sorted({*self.secrets, *(s for s in secrets if s and len(s) >= 4)}, key=len, reverse=True)

    def known(self, text: str) -> str:
        """Only the configured secrets (the cheap half of ``text``)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def text(self, text: str, extra: Iterable[str] = ()) -> str:
        for secret in extra:
            if secret and len(secret) >= 4:
                text = text.replace(secret, MASK)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return mask_key_shapes(text, MASK)

    def value(self, value: Any) -> Any:
        """A copy of a JSON value with credential fields masked and data URLs summarised."""
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and is_secret_field(k) and v else self.value(v))
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, str) and "data:" in value:
            if value.startswith("data:"):
                summary = data_url_summary(value)
                if summary is not None:
                    return summary
            return _DATA_URL.sub(_inline_data_url, value)
        return value

    def json_line(self, value: Any, extra: Iterable[str] = ()) -> bytes:
        """``value`` redacted both ways, as one JSON line."""
        text = orjson.dumps(self.value(value), default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return (self.text(text, extra) + "\n").encode()


def redacted_headers(headers: Any) -> dict[str, str]:
    return {str(k): (MASK if is_secret_field(k) else str(v)) for k, v in headers.items()}


def text_line(entry: dict[str, Any], lead: tuple[str, ...] = ()) -> str:
    """``2026-01-02T03:04:05.678Z LEVEL logger: msg key=value ...`` for ``--log-format text``."""
    ts = entry.get("ts")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z" \
        if isinstance(ts, float | int) else "-"
    parts = [stamp, str(entry.get("level", "info")).upper(), f"{entry.get('logger', 'acore')}:",
             *(str(entry[k]) for k in lead if entry.get(k) is not None)]
    if entry.get("msg"):
        parts.append(str(entry["msg"]))
    skip = {"ts", "level", "logger", "msg", *lead}
    for key, value in entry.items():
        if key in skip or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, dict | list):
            value = orjson.dumps(value, default=str).decode()
        text = str(value)
        parts.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    return " ".join(parts)


class RedactingTextFormatter(RedactingJSONFormatter):
    """``--log-format text``: the fields of the JSON lines as one readable line, redacted the same way."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
                                 "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        line = text_line(entry)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)
