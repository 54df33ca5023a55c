"""State kept between requests: the responses behind ``store: true`` and ``previous_response_id``.

One small interface (``StateStore``: save, load, remove), two implementations: in this process's
memory (the default; bounded: entries expire after a TTL and the oldest go first past a count or
byte bound) and Redis (``ACORE_REDIS_URL``, redis-py's asyncio client; the TTL is Redis's EX),
which several gateway processes or hosts share, so a conversation continues on any of them.
Each entry keeps the whole conversation as Responses items (earlier turns + this input + this
output), so a continuation is one lookup, not a walk up a chain.
Settings: ACORE_RESPONSES_STORE_MAX (entries, memory), ACORE_RESPONSES_STORE_TTL_S,
ACORE_RESPONSES_STORE_MAX_BYTES (per entry in Redis, in all in memory); 0 entries turns storing off.
A Redis that stops answering makes ``StoreUnavailable`` (the door answers 503); nothing else is
affected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.config import ConfigError
from gateway.keys import CONFIG

DEFAULT_MAX_ENTRIES = 1000
DEFAULT_TTL_S = 3600.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class Stored:
    response: dict[str, Any]  # the Response object as answered
    items: list[dict[str, Any]]  # the conversation so far as Responses items
    input_count: int  # how many of ``items`` precede this response's output
    size: int
    expires: float


class StoreUnavailable(Exception):
    """The shared state store cannot be reached (the message says what failed)."""


class StateStore(Protocol):
    async def save(self, response: dict[str, Any], items: list[dict[str, Any]], input_count: int) -> None: ...

    async def load(self, response_id: str) -> Stored | None: ...

    async def remove(self, response_id: str) -> bool: ...

    async def close(self) -> None: ...


class ResponseStore:
    """The in-memory store (one process's)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_s: float = DEFAULT_TTL_S,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResponseStore:
        return cls(int(_number(env, "ACORE_RESPONSES_STORE_MAX", DEFAULT_MAX_ENTRIES)),
                   _number(env, "ACORE_RESPONSES_STORE_TTL_S", DEFAULT_TTL_S),
                   int(_number(env, "ACORE_RESPONSES_STORE_MAX_BYTES", DEFAULT_MAX_BYTES)))

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict[str, Any], items: list[dict[str, Any]], input_count: int) -> None:
        if self.max_entries <= 0:
            return
        size = len(orjson.dumps(items)) + len(orjson.dumps(response))
        if size > self.max_bytes:
            return  # one conversation larger than the whole store: not kept
        self._drop(response["id"])
        self._entries[response["id"]] = Stored(response, items, input_count, size, time.monotonic() + self.ttl_s)
        self._bytes += size
        self._evict()

    def get(self, response_id: str) -> Stored | None:
        self._evict()
        entry = self._entries.get(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        self._evict()
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def _evict(self) -> None:
        now = time.monotonic()
        # Entries are in insertion order and share one TTL, so the expired ones are at the front.
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if oldest.expires > now and len(self._entries) <= self.max_entries and self._bytes <= self.max_bytes:
                break
            self._drop(oldest_id)

    # The StateStore interface: nothing here waits, so these are the plain methods.

    async def save(self, response: dict[str, Any], items: list[dict[str, Any]], input_count: int) -> None:
        self.put(response, items, input_count)

    async def load(self, response_id: str) -> Stored | None:
        return self.get(response_id)

    async def remove(self, response_id: str) -> bool:
        return self.delete(response_id)

    async def close(self) -> None:
        return None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, "") or default)
    except ValueError:
        return default


class RedisResponseStore:
    """Responses in Redis under ``acore:response:<id>``, expiring with the TTL."""

    PREFIX = "acore:response:"

    def __init__(self, url: str, ttl_s: float = DEFAULT_TTL_S, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        import redis.asyncio as redis  # only a gateway with ACORE_REDIS_URL loads the client

        self.url = url
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._errors = (redis.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        except ValueError as exc:
            raise StoreUnavailable(f"ACORE_REDIS_URL {url!r} is not a Redis URL: {exc}") from None

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str]) -> RedisResponseStore:
        return cls(url, _number(env, "ACORE_RESPONSES_STORE_TTL_S", DEFAULT_TTL_S),
                   int(_number(env, "ACORE_RESPONSES_STORE_MAX_BYTES", DEFAULT_MAX_BYTES)))

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"Redis at {_safe_url(self.url)} did not answer: {type(exc).__name__}: {exc}")

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def save(self, response: dict[str, Any], items: list[dict[str, Any]], input_count: int) -> None:
        data = orjson.dumps({"response": response, "items": items, "input_count": input_count})
        if len(data) > self.max_bytes:
            return  # one conversation larger than the limit: not kept, as in memory
        try:
            await self._client.set(self.PREFIX + response["id"], data, ex=max(1, int(self.ttl_s)))
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def load(self, response_id: str) -> Stored | None:
        try:
            data = await self._client.get(self.PREFIX + response_id)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        if data is None:
            return None
        try:
            value = orjson.loads(data)
            return Stored(value["response"], value["items"], int(value["input_count"]), len(data), 0.0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not ours, or damaged: as good as absent

    async def remove(self, response_id: str) -> bool:
        try:
            return bool(await self._client.delete(self.PREFIX + response_id))
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except self._errors:
            pass


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def open_store(redis_url: str | None, env: Mapping[str, str]) -> StateStore:
    """The configured store; a Redis that does not answer now is StoreUnavailable (a start-up error)."""
    if not redis_url:
        return ResponseStore.from_env(env)
    store = RedisResponseStore.from_env(redis_url, env)
    try:
        await store.ping()
    except StoreUnavailable:
        await store.close()
        raise
    return store


STATE_STORE: web.AppKey[StateStore] = web.AppKey("state_store")


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    try:
        app[STATE_STORE] = await open_store(config.redis_url, config.env)
    except StoreUnavailable as exc:
        raise ConfigError(f"the state store is not reachable: {exc}") from None
    yield
    await app[STATE_STORE].close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(store_ctx)
