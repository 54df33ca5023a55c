"""A bounded in-memory store of responses for ``store: true`` and ``previous_response_id``.

Entries expire after a TTL and the oldest go first past a count or byte bound,
so a long-running gateway never grows without limit. Each entry keeps the
whole conversation as Responses items (earlier turns + this input + this
output), so a continuation is one lookup, not a walk up a chain.
Settings: ACORE_RESPONSES_STORE_MAX (entries), ACORE_RESPONSES_STORE_TTL_S,
ACORE_RESPONSES_STORE_MAX_BYTES; 0 entries turns storing off.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

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


class ResponseStore:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_s: float = DEFAULT_TTL_S,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResponseStore:
        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name, "") or default)
            except ValueError:
                return default

        return cls(int(number("ACORE_RESPONSES_STORE_MAX", DEFAULT_MAX_ENTRIES)),
                   number("ACORE_RESPONSES_STORE_TTL_S", DEFAULT_TTL_S),
                   int(number("ACORE_RESPONSES_STORE_MAX_BYTES", DEFAULT_MAX_BYTES)))

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
