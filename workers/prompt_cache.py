"""Engine-independent prompt cache: a host-memory LRU of KV snapshots keyed by token prefix.

A backend (llama.cpp here, MLX later) supplies opaque snapshot bytes plus the token ids they
cover; this module owns the bookkeeping: named keys (AbstractCore's control plane), automatic
snapshots without a key, the byte budget with LRU eviction, the TTL (measured from last access,
as AbstractCore does), longest-common-prefix lookup and the prepare_modules hash chain.

Semantics (docs/prompt-cache.md): the client sends the full conversation each time, the backend
reuses the longest common token prefix of a snapshot and evaluates the rest; nothing is appended
blindly.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.messages import ErrorCode
from workers.backend import WorkerError

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
AUTO_PREFIX = "\x00auto:"  # automatic entries live in the same LRU but are never shown as keys


@dataclass(slots=True)
class CacheEntry:
    """One snapshot: ``state`` covers exactly ``tokens`` (empty state = a fresh, named cache)."""

    tokens: np.ndarray  # int32 token ids
    state: bytes = b""
    ttl_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)
    last_access: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return len(self.state) + int(self.tokens.nbytes)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def expired(self, now: float) -> bool:
        return self.ttl_s is not None and now - self.last_access > self.ttl_s


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token sequences (vectorised: prompts are long)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


def as_tokens(tokens: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.array(list(tokens) if not isinstance(tokens, np.ndarray) else tokens, dtype=np.int32)


class PromptCacheStore:
    """Named and automatic snapshots under one byte budget. Not thread-safe: the model thread owns it."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        default_ttl_s: float | None = None,
        max_auto_entries: int = 8,
        backend: str = "",
    ) -> None:
        self.max_bytes = int(max_bytes)
        self.default_ttl_s = default_ttl_s
        self.max_auto_entries = max_auto_entries
        self.backend = backend
        self.default_key: str | None = None
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0

    # ------------------------------------------------------------ basic access

    def __contains__(self, key: str) -> bool:
        self._expire()
        return key in self._entries

    def get(self, key: str) -> CacheEntry | None:
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_access = time.monotonic()
            self._entries.move_to_end(key)
        return entry

    def require(self, key: str) -> CacheEntry:
        entry = self.get(key)
        if entry is None:
            raise WorkerError(ErrorCode.NOT_FOUND, f"unknown prompt cache key {key!r}", param="key")
        return entry

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def named_keys(self) -> list[str]:
        self._expire()
        return [k for k in self._entries if not k.startswith(AUTO_PREFIX)]

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store (replacing) ``key``; evict LRU entries to fit. False when it can never fit."""
        if entry.nbytes > self.max_bytes:
            self.remove(key)
            return False
        self.remove(key)
        if entry.ttl_s is None:
            entry.ttl_s = self.default_ttl_s
        self._entries[key] = entry
        self._bytes += entry.nbytes
        self._evict(protect=key)
        return True

    def remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.nbytes
        if key == self.default_key:
            self.default_key = None
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self.default_key = None

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.expired(now)]:
            self.remove(key)

    def _evict(self, protect: str) -> None:
        self._expire()
        # Automatic snapshots go first: a named key is something a client asked to keep.
        autos = [k for k in self._entries if k.startswith(AUTO_PREFIX) and k != protect]
        while len(autos) > self.max_auto_entries:
            self.remove(autos.pop(0))
        for key in autos + [k for k in list(self._entries) if not k.startswith(AUTO_PREFIX)]:
            if self._bytes <= self.max_bytes:
                return
            if key != protect:
                self.remove(key)

    # ------------------------------------------------------------ automatic snapshots and lookup

    def put_auto(self, tokens: np.ndarray, state: bytes) -> None:
        """Remember the state after a request without a key, dropping snapshots it supersedes."""
        for key in [k for k in self._entries if k.startswith(AUTO_PREFIX)]:
            old = self._entries[key]
            # An older snapshot that is a prefix of this one can serve nothing this one cannot.
            if old.n_tokens <= len(tokens) and common_prefix(old.tokens, tokens) == old.n_tokens:
                self.remove(key)
        digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
        self.put(AUTO_PREFIX + digest, CacheEntry(tokens=tokens, state=state, meta={"backend": self.backend}))

    def best_prefix(self, tokens: Sequence[int] | np.ndarray, key: str | None = None) -> tuple[str | None, int]:
        """The entry (the given key's first, then any) sharing the longest token prefix with ``tokens``."""
        self._expire()
        best_key, best = None, 0
        candidates = [key] if key is not None and key in self._entries else []
        candidates += [k for k in self._entries if k != key]
        for k in candidates:
            entry = self._entries[k]
            if not entry.state:
                continue
            n = common_prefix(entry.tokens, tokens)
            if n > best:
                best_key, best = k, n
        return best_key, best

    # ------------------------------------------------------------ control plane (AbstractCore shapes)

    def set_key(self, key: str, make_default: bool = True, ttl_s: float | None = None) -> None:
        entry = self.get(key)
        if entry is None:
            self.put(key, CacheEntry(tokens=as_tokens([]), ttl_s=ttl_s, meta={"backend": self.backend}))
        elif ttl_s is not None:
            entry.ttl_s = ttl_s
        if make_default:
            self.default_key = key

    def fork(self, from_key: str, to_key: str, *, overwrite: bool = False, make_default: bool = False,
             ttl_s: float | None = None) -> CacheEntry:
        src = self.require(from_key)
        if to_key in self._entries and not overwrite:
            raise WorkerError(ErrorCode.CONFLICT, f"prompt cache key {to_key!r} exists (pass overwrite)", param="to_key")
        # bytes are immutable and the token array is copied: later writes to either key replace
        # that key's entry, so the two sessions can never see each other's state.
        meta = {**src.meta, "forked_from": from_key}
        entry = CacheEntry(tokens=src.tokens.copy(), state=src.state, ttl_s=ttl_s if ttl_s is not None else src.ttl_s,
                           meta=meta)
        if not self.put(to_key, entry):
            raise WorkerError(ErrorCode.TOO_LARGE, "prompt cache entry is larger than the cache budget")
        if make_default:
            self.default_key = to_key
        return entry

    def stats(self) -> dict[str, Any]:
        self._expire()
        keys = self.named_keys()
        meta_by_key = {}
        for k in keys:
            e = self._entries[k]
            meta_by_key[k] = {"backend": self.backend, **e.meta, "token_count": e.n_tokens, "bytes": e.nbytes,
                              "ttl_s": e.ttl_s}
        return {
            "entries": len(self._entries),
            "named_entries": len(keys),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "default_ttl_s": self.default_ttl_s,
            "default_key": self.default_key,
            "keys": keys,
            "meta_by_key": meta_by_key,
        }


# ---------------------------------------------------------------- prepare_modules hash chain

def normalize_module(module: dict[str, Any]) -> dict[str, Any]:
    """AbstractCore's PromptCacheModule.normalized(): what a module's identity is made of."""

    def text(v: Any) -> str | None:
        return str(v).strip() if isinstance(v, str) and v else None

    messages = []
    for m in module.get("messages") or []:
        if isinstance(m, dict) and str(m.get("role") or "").strip():
            msg = {"role": str(m["role"]).strip().lower(), "content": m.get("content")}
            msg.update({k: m[k] for k in ("name", "tool_call_id", "tool_calls", "function_call") if k in m})
            messages.append(msg)
    scope = str(module.get("scope") or "private").strip().lower()
    return {
        "module_id": str(module.get("module_id") or "").strip(),
        "system_prompt": text(module.get("system_prompt")),
        "prompt": text(module.get("prompt")),
        "messages": messages or None,
        "tools": [dict(t) for t in module.get("tools") or [] if isinstance(t, dict)] or None,
        "add_generation_prompt": bool(module.get("add_generation_prompt")),
        "scope": scope if scope in ("private", "shared") else "private",
    }


def module_fingerprint(module: dict[str, Any], version: int = 1) -> str:
    """sha256 of the canonical JSON (sorted keys) of the normalized module (AbstractCore §2.3)."""
    doc = {"v": int(version), **normalize_module(module)}
    canon = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def module_chain(namespace: str, modules: list[dict[str, Any]], version: int = 1) -> list[tuple[str, str]]:
    """(cache_key, module_hash) per module; each key names the cumulative prefix up to that module."""
    h = hashlib.sha256(f"acore-prompt-cache:{version}".encode()).hexdigest()
    out = []
    for module in modules:
        fp = module_fingerprint(module, version)
        h = hashlib.sha256((h + fp).encode()).hexdigest()
        out.append((f"{namespace}:{h[:16]}", fp))
    return out


def prepare_modules(
    store: PromptCacheStore,
    args: dict[str, Any],
    restore: Callable[[CacheEntry | None], None],
    append: Callable[[dict[str, Any]], None],
    snapshot: Callable[[], CacheEntry],
) -> dict[str, Any]:
    """Build the chain of module snapshots, reusing the longest prefix already cached.

    The backend supplies three steps: ``restore`` a snapshot into the model (None = empty context),
    ``append`` one module's rendered tokens to the model's context, and take a ``snapshot``.
    """
    namespace = args.get("namespace")
    modules = args.get("modules")
    if not isinstance(namespace, str) or not namespace:
        raise WorkerError(ErrorCode.BAD_REQUEST, "namespace must be a non-empty string", param="namespace")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise WorkerError(ErrorCode.BAD_REQUEST, "modules must be a non-empty list of objects", param="modules")
    version = int(args.get("version") or 1)
    ttl_s = args.get("ttl_s")
    chain = module_chain(namespace, modules, version)

    start = 0
    for i in range(len(chain) - 1, -1, -1):
        if chain[i][0] in store:
            start = i + 1
            break
    restore(store.get(chain[start - 1][0]) if start else None)
    added: list[str] = []
    budget_used = 0
    for i in range(start, len(chain)):
        key, module_hash = chain[i]
        append(modules[i])
        entry = snapshot()
        budget_used += entry.nbytes
        entry.ttl_s = ttl_s
        entry.meta = {"namespace": namespace, "module_id": modules[i].get("module_id"), "module_hash": module_hash,
                      "index": i, "backend": store.backend, "token_count": entry.n_tokens}
        if budget_used > store.max_bytes or not store.put(key, entry):
            for k in added:
                store.remove(k)
            raise WorkerError(ErrorCode.TOO_LARGE, f"the modules need more than the prompt cache budget "
                              f"({store.max_bytes} bytes)", param="modules")
        added.append(key)
    if args.get("make_default"):
        store.default_key = chain[-1][0]
    return {
        "supported": True,
        "ok": True,
        "namespace": namespace,
        "version": version,
        "modules": [{"module_id": m.get("module_id"), "cache_key": k, "module_hash": h}
                    for m, (k, h) in zip(modules, chain, strict=True)],
        "final_cache_key": chain[-1][0],
        "reused_modules": start,
    }
