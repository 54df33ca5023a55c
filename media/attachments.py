"""The attachment router: chat messages in, messages with verified media out.

Handles ``image_url`` parts, ``file`` parts (``file_data``/``filename`` or
``file_url``), and ``@path`` tokens in user text. Every byte is counted against
the per-file and per-request budgets; every parse happens in the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Protocol

from media.data_url import decode_base64, decode_data_url
from media.errors import MediaError, bad, too_large
from media.extract import SUPPORTED_EXT, Extracted, extract
from media.fetch import Fetcher
from media.policy import MediaPolicy

# ``@`` at the start of the text or after whitespace, then a path-like run. E-mail addresses never match
# (their ``@`` follows a letter); ``@app.get`` matches the pattern but resolves to no file, so it stays.
AT_TOKEN = re.compile(r"(?<!\S)@([^\s@]+)")
_TRAILING = ".,;:!?)]}'\""
MAX_AT_TOKENS = 64  # distinct path-like tokens looked up per message


class Executor(Protocol):
    async def run(self, fn: Any, *args: Any) -> Any: ...


class _Budget:
    def __init__(self, policy: MediaPolicy, charge: Callable[[int], None] | None = None) -> None:
        self.limit = policy.max_request_bytes
        self.used = 0
        self.charge = charge  # the caller's memory budget for decoded bytes (may raise)

    def spend(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise too_large(f"Attachments exceed {self.limit} bytes in total for one request.")
        if self.charge is not None:
            self.charge(size)


def safe_name(name: str | None, fallback: str = "attachment") -> str:
    """A display name: last path component, no control characters, bounded length."""
    base = os.path.basename((name or "").replace("\\", "/")) or fallback
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    return base[:200] or fallback


def message_needs_work(message: Any, policy: MediaPolicy) -> bool:
    """The fast path: plain text without '@' (or with no roots to resolve it) needs nothing."""
    if not isinstance(message, dict):
        return False
    content = message.get("content")
    if isinstance(content, str):
        return policy.local_enabled and message.get("role") == "user" and "@" in content
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("image_url", "file"):
                return True
            if kind == "text" and policy.local_enabled and message.get("role") == "user" and "@" in str(part.get("text", "")):
                return True
    return False


def needs_work(messages: Any, policy: MediaPolicy) -> bool:
    return isinstance(messages, list) and any(message_needs_work(m, policy) for m in messages)


async def _load(source: str, policy: MediaPolicy, fetcher: Fetcher, budget: _Budget,
                name: str | None) -> tuple[bytes, str, str]:
    """(bytes, mime, display name) from a data URL, an http(s) URL or a local path."""
    if source.startswith("data:"):
        data, mime = decode_data_url(source, policy.max_file_bytes)
        budget.spend(len(data))
        return data, mime, safe_name(name)
    scheme = source.split(":", 1)[0].lower() if ":" in source[:12] else ""
    if scheme in ("http", "https"):
        fetched = await fetcher.fetch(source)
        budget.spend(len(fetched.data))
        return fetched.data, fetched.content_type, safe_name(name or fetched.name)
    if scheme and not (len(scheme) == 1 and os.name == "nt"):
        raise bad(f"URL scheme {scheme!r} is not allowed; use http, https, data, or a server path.")
    data, real = await asyncio.to_thread(policy.read_local, source)  # blocking I/O off the loop
    budget.spend(len(data))
    return data, "", safe_name(name or real)


async def _convert(source: str, policy: MediaPolicy, fetcher: Fetcher, executor: Executor, budget: _Budget,
                   name: str | None, want_image: bool) -> Extracted:
    data, mime, display = await _load(source, policy, fetcher, budget, name)
    if not data:
        raise bad(f"{display} is empty.")
    result: Extracted = await executor.run(extract, data, display, mime, policy, want_image)
    return result


def _as_part(result: Extracted, detail: Any = None) -> dict[str, Any]:
    if result.image_url is not None:
        image: dict[str, Any] = {"url": result.image_url}
        if detail is not None:
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": result.text or ""}


async def _resolve_part(part: dict[str, Any], policy: MediaPolicy, fetcher: Fetcher, executor: Executor,
                        budget: _Budget) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url:
            raise bad("image_url.url must be a non-empty string.")
        detail = spec.get("detail") if isinstance(spec, dict) else None
        return _as_part(await _convert(url, policy, fetcher, executor, budget, None, True), detail)
    if kind == "file":
        spec = part.get("file")
        if isinstance(spec, dict) and spec.get("file_id") and not spec.get("file_data"):
            raise MediaError(501, "file_id references are not supported here; send file_data or file_url.",
                             code="not_implemented")
        if isinstance(spec, dict) and isinstance(spec.get("file_data"), str):
            name = spec.get("filename") if isinstance(spec.get("filename"), str) else None
            payload: str = spec["file_data"]
            if payload.startswith("data:"):
                return _as_part(await _convert(payload, policy, fetcher, executor, budget, name, False))
            data = decode_base64(payload, policy.max_file_bytes)
            budget.spend(len(data))
            display = safe_name(name)
            result: Extracted = await executor.run(extract, data, display, "", policy, False)
            return _as_part(result)
        url_spec = part.get("file_url")
        url = url_spec.get("url") if isinstance(url_spec, dict) else url_spec
        if isinstance(url, str) and url:
            name = url_spec.get("filename") if isinstance(url_spec, dict) else None
            return _as_part(await _convert(url, policy, fetcher, executor, budget, name, False))
        raise bad("A file part needs file.file_data or file_url.url.")
    return part


async def _resolve_text(text: str, policy: MediaPolicy, fetcher: Fetcher, executor: Executor,
                        budget: _Budget) -> list[dict[str, Any]]:
    """Parts for the files that ``@path`` tokens in ``text`` name (the text itself is not changed)."""
    parts: list[dict[str, Any]] = []
    seen: set[str] = set()
    tried: set[str] = set()
    for match in AT_TOKEN.finditer(text):
        token = match.group(1)
        for candidate in (token, token.rstrip(_TRAILING)):
            if not candidate or candidate in tried or os.path.splitext(candidate.lower())[1] not in SUPPORTED_EXT:
                continue
            if len(tried) >= MAX_AT_TOKENS:  # a message of 100 000 '@x.txt' must not cost 100 000 lookups
                return parts
            tried.add(candidate)
            real = await asyncio.to_thread(policy.is_allowed_file, candidate)
            if real is None:
                continue
            if real not in seen:
                seen.add(real)
                parts.append(_as_part(await _convert(real, policy, fetcher, executor, budget,
                                                     os.path.basename(real), False)))
            break
    return parts


async def resolve_messages(messages: list[dict[str, Any]], policy: MediaPolicy, fetcher: Fetcher,
                           executor: Executor, charge: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Return new messages where attachments are verified images or extracted text parts.

    Raises MediaError (400 bad, 403 forbidden, 413 too large, 422 unreadable, 408 fetch deadline).
    """
    budget = _Budget(policy, charge)
    out: list[dict[str, Any]] = []
    for message in messages:
        if not message_needs_work(message, policy):
            out.append(message)
            continue
        content = message.get("content")
        is_user = message.get("role") == "user"
        new_parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            extra = await _resolve_text(content, policy, fetcher, executor, budget) if is_user else []
            if not extra:
                out.append(message)
                continue
            new_parts = [{"type": "text", "text": content}, *extra]
        else:
            for part in content or ():
                if not isinstance(part, dict):
                    new_parts.append(part)
                    continue
                if part.get("type") == "text":
                    new_parts.append(part)
                    if is_user and "@" in str(part.get("text", "")):
                        new_parts.extend(await _resolve_text(str(part.get("text")), policy, fetcher, executor,
                                                             budget))
                    continue
                new_parts.append(await _resolve_part(part, policy, fetcher, executor, budget))
        out.append({**message, "content": new_parts})
    return out


def responses_part_to_chat(part: dict[str, Any]) -> dict[str, Any]:
    """Responses ``input_*`` content parts → the chat part forms that resolve_messages understands."""
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        if part.get("file_id") and not part.get("image_url"):  # a stored file: media/audio_parts.py reads it
            return {"type": "image_url", "image_url": {"file_id": part["file_id"], "detail": part.get("detail")}}
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise bad("input_image needs image_url.")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        filename = part.get("filename") if isinstance(part.get("filename"), str) else None
        if isinstance(part.get("file_data"), str):
            file: dict[str, Any] = {"file_data": part["file_data"]}
            if filename:
                file["filename"] = filename
            return {"type": "file", "file": file}
        url = part.get("file_url")
        if isinstance(url, dict):
            url = url.get("url")
        if isinstance(url, str) and url:
            spec: dict[str, Any] = {"url": url}
            if filename:
                spec["filename"] = filename
            return {"type": "file", "file_url": spec}
        if part.get("file_id"):  # a stored file: media/audio_parts.py reads it
            return {"type": "file", "file": {"file_id": part["file_id"]}}
        raise bad("input_file needs file_data or file_url.")
    return part


def responses_parts_to_chat(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [responses_part_to_chat(p) if isinstance(p, dict) else p for p in parts]
