"""The Files API: POST /v1/files, GET /v1/files, GET|DELETE /v1/files/{id}, GET /v1/files/{id}/content.

Files are stored on disk under ``ACORE_FILES_DIR`` (default ``.acore/files``; the directory is made
0700 on the first upload), one ``<id>.bin`` each, within a total quota (``ACORE_FILES_MAX_BYTES``, default 1 GiB) and
a time to live (``ACORE_FILES_TTL_S``, default 7 days). Their metadata lives beside them
(``<id>.json``), or in Redis when ``ACORE_REDIS_URL`` is set, so several gateway processes see
the same files (the directory must then be one they share). Ids are ``file-`` + 24 hex digits and
are checked before any path is made from them. ``file_id`` in chat ``file`` parts and Responses
``input_file`` parts reads through ``FileStore.read``, under the attachment limits.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.doors.http import json_response
from gateway.doors.uploads import read_form
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, FILE_STORE
from media.audio import AUDIO_FORMATS, extension, sniff_image
from media.extract import SUPPORTED_EXT

DEFAULT_DIR = ".acore/files"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_TTL_S = 7 * 24 * 3600.0
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# What a stored file may be: an attachment type, an audio file, or JSON lines (batch, fine-tune).
ACCEPTED_EXT = {e.lstrip(".") for e in SUPPORTED_EXT} | set(AUDIO_FORMATS) | {"jsonl"}
FILE_ID = re.compile(r"file-[0-9a-f]{24}")

routes = web.RouteTableDef()


def file_not_found(file_id: str) -> GatewayError:
    return GatewayError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")


class FileIndex(Protocol):
    """Where the metadata of stored files lives (this directory, or Redis)."""

    async def put(self, meta: dict[str, Any]) -> None: ...

    async def get(self, file_id: str) -> dict[str, Any] | None: ...

    async def remove(self, file_id: str) -> None: ...

    async def all(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class DiskIndex:
    """``<id>.json`` beside each file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def put(self, meta: dict[str, Any]) -> None:
        path = self.directory / f"{meta['id']}.json"
        await asyncio.to_thread(_write_atomic, path, orjson.dumps(meta))

    async def get(self, file_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(_read_meta, self.directory / f"{file_id}.json")

    async def remove(self, file_id: str) -> None:
        await asyncio.to_thread((self.directory / f"{file_id}.json").unlink, True)

    async def all(self) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            found = (_read_meta(p) for p in self.directory.glob("file-*.json"))
            return [m for m in found if m is not None]

        return await asyncio.to_thread(scan)

    async def close(self) -> None:
        return None


class RedisIndex:
    """``acore:file:<id>`` (expiring with the file) plus the id set ``acore:files``."""

    KEY, SET = "acore:file:", "acore:files"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._errors = (redis.RedisError, OSError)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except self._errors as exc:
            raise GatewayError(503, f"The file store (Redis) did not answer: {type(exc).__name__}.",
                               type="server_error", headers={"Retry-After": "1"}) from None

    async def put(self, meta: dict[str, Any]) -> None:
        ttl = max(1, int(meta["expires_at"] - time.time()))
        await self._call(self._client.set, self.KEY + meta["id"], orjson.dumps(meta), ex=ttl)
        await self._call(self._client.sadd, self.SET, meta["id"])

    async def get(self, file_id: str) -> dict[str, Any] | None:
        data = await self._call(self._client.get, self.KEY + file_id)
        return orjson.loads(data) if data else None

    async def remove(self, file_id: str) -> None:
        await self._call(self._client.delete, self.KEY + file_id)
        await self._call(self._client.srem, self.SET, file_id)

    async def all(self) -> list[dict[str, Any]]:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await self._call(self._client.smembers, self.SET)]
        found = []
        for file_id in ids:
            meta = await self.get(file_id)
            if meta is None:
                await self._call(self._client.srem, self.SET, file_id)  # expired in Redis
            else:
                found.append(meta)
        return found

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except self._errors:
            pass


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _setting(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        raise GatewayError(500, f"{name} must be a number.") from None


@dataclass(slots=True)
class FileStore:
    directory: Path
    index: FileIndex
    max_total_bytes: int
    ttl_s: float
    max_file_bytes: int

    def path(self, file_id: str) -> Path:
        if not FILE_ID.fullmatch(file_id):
            raise file_not_found(file_id)
        return self.directory / f"{file_id}.bin"

    async def _live(self) -> list[dict[str, Any]]:
        """Every unexpired file; expired ones are deleted on the way."""
        now = time.time()
        live = []
        for meta in await self.index.all():
            if meta.get("expires_at", 0) <= now:
                await self.delete(str(meta["id"]))
            else:
                live.append(meta)
        return live

    async def add(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        used = sum(int(m.get("bytes", 0)) for m in await self._live())
        if used + len(data) > self.max_total_bytes:
            raise GatewayError(413, f"The file store is full: {used} of {self.max_total_bytes} bytes are used "
                                    "(ACORE_FILES_MAX_BYTES); delete files first.", code="files_quota_exceeded")
        now = int(time.time())
        file_id = "file-" + secrets.token_hex(12)
        meta: dict[str, Any] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": now,
                "expires_at": now + int(self.ttl_s), "filename": filename, "purpose": purpose,
                "status": "processed", "status_details": None}
        await asyncio.to_thread(self.directory.mkdir, 0o700, True, True)  # made on first use, not at start
        await asyncio.to_thread(_write_atomic, self.path(file_id), data)
        await self.index.put(meta)
        return meta

    async def get(self, file_id: str) -> dict[str, Any]:
        self.path(file_id)  # the id's shape first
        meta = await self.index.get(file_id)
        if meta is None or meta.get("expires_at", 0) <= time.time():
            if meta is not None:
                await self.delete(file_id)
            raise file_not_found(file_id)
        return meta

    async def read(self, file_id: str) -> tuple[bytes, str]:
        """(content, filename) of a stored file: 404 when there is none."""
        meta = await self.get(file_id)
        try:
            data = await asyncio.to_thread(self.path(file_id).read_bytes)
        except FileNotFoundError:
            raise file_not_found(file_id) from None
        return data, str(meta.get("filename") or file_id)

    async def delete(self, file_id: str) -> bool:
        path = self.path(file_id)
        existed = await self.index.get(file_id) is not None
        await self.index.remove(file_id)
        await asyncio.to_thread(path.unlink, True)
        return existed

    async def list(self, purpose: str | None) -> list[dict[str, Any]]:
        return [m for m in await self._live() if purpose is None or m.get("purpose") == purpose]


async def inline_stored_files(store: FileStore | None, body: dict[str, Any]) -> dict[str, Any]:
    """A Responses body for a provider's own /v1/responses: ``input_file`` / ``input_image`` parts naming
    a file this gateway stores go inline (the provider cannot know acore's ids); any other id is the
    provider's own and passes through."""
    items = body.get("input")
    if store is None or not isinstance(items, list):
        return body
    changed = False
    new_items: list[Any] = []
    for item in items:
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list):
            new_items.append(item)
            continue
        parts = []
        for part in content:
            file_id = part.get("file_id") if isinstance(part, dict) else None
            if isinstance(file_id, str) and FILE_ID.fullmatch(file_id) and await store.index.get(file_id):
                data, name = await store.read(file_id)
                inline = base64.b64encode(data).decode()
                rest = {k: v for k, v in part.items() if k != "file_id"}
                if part.get("type") == "input_image":
                    kind = sniff_image(data) or "png"
                    part = {**rest, "image_url": f"data:image/{kind};base64,{inline}"}
                else:
                    part = {**rest, "filename": rest.get("filename") or name,
                            "file_data": f"data:application/octet-stream;base64,{inline}"}
                changed = True
            parts.append(part)
        new_items.append({**item, "content": parts})
    return {**body, "input": new_items} if changed else body


def check_upload(data: bytes, filename: str, purpose: str) -> None:
    """The purpose's kind of file, known by its name and, for images, its bytes."""
    if not data:
        raise bad_request(f"The file {filename!r} is empty.", param="file")
    ext = extension(filename)
    if ext not in ACCEPTED_EXT:
        raise bad_request(f"Files of type .{ext or '(none)'} are not accepted. Accepted: "
                          f"{', '.join(sorted(ACCEPTED_EXT))}.", param="file", code="invalid_file_format")
    if purpose in ("batch", "fine-tune", "evals") and ext != "jsonl":
        raise bad_request(f"Files with purpose {purpose} must be JSON lines (.jsonl).", param="file",
                          code="invalid_file_format")
    if purpose == "vision" and sniff_image(data) is None:
        raise bad_request("Files with purpose vision must be png, jpeg or webp images.", param="file",
                          code="invalid_file_format")


@routes.post("/v1/files")
async def create_file(request: web.Request) -> web.Response:
    store = request.app[FILE_STORE]
    fields, uploads = await read_form(request, store.max_file_bytes)
    purpose = fields.get("purpose")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise bad_request(f"purpose is required and must be one of: {', '.join(PURPOSES)}.", param="purpose")
    files = [u for u in uploads if u.field == "file"]
    if len(files) != 1:
        raise bad_request("Upload exactly one file, as multipart field 'file'.", param="file")
    check_upload(files[0].data, files[0].filename, purpose)
    return json_response(await store.add(files[0].data, files[0].filename, purpose))


@routes.get("/v1/files")
async def list_files(request: web.Request) -> web.Response:
    query = request.query
    try:
        limit = int(query.get("limit", "10000"))
    except ValueError:
        raise bad_request("limit must be a number.", param="limit") from None
    if not 1 <= limit <= 10000:
        raise bad_request("limit must be between 1 and 10000.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc.", param="order")
    found = sorted(await request.app[FILE_STORE].list(query.get("purpose")),
                   key=lambda m: (m["created_at"], m["id"]), reverse=order == "desc")
    after = query.get("after")
    if after:
        ids = [m["id"] for m in found]
        found = found[ids.index(after) + 1:] if after in ids else []
    page = found[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(found) > limit})


@routes.get("/v1/files/{file_id}")
async def retrieve_file(request: web.Request) -> web.Response:
    return json_response(await request.app[FILE_STORE].get(request.match_info["file_id"]))


@routes.get("/v1/files/{file_id}/content")
async def file_content(request: web.Request) -> web.Response:
    data, _name = await request.app[FILE_STORE].read(request.match_info["file_id"])
    return web.Response(body=data, content_type="application/octet-stream")


@routes.delete("/v1/files/{file_id}")
async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    if not await request.app[FILE_STORE].delete(file_id):
        raise file_not_found(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def files_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("ACORE_FILES_DIR") or DEFAULT_DIR).expanduser()


async def files_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    env = config.env
    directory = files_dir(env)
    index: FileIndex = RedisIndex(config.redis_url) if config.redis_url else DiskIndex(directory)
    app[FILE_STORE] = FileStore(directory, index, int(_setting(env, "ACORE_FILES_MAX_BYTES", DEFAULT_MAX_BYTES)),
                                _setting(env, "ACORE_FILES_TTL_S", DEFAULT_TTL_S), config.limits.max_upload_bytes)
    yield
    await index.close()


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.cleanup_ctx.append(files_ctx)
