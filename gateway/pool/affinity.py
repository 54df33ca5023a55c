"""Key affinity and cache-aware routing for the worker pool.

A prompt-cache key lives on one worker (its KV snapshots are in that process's memory), so every
request and control-plane call carrying the key must go there: ``owner`` pins keys to workers.
Without a key, a worker that recently served a request sharing a long message prefix with this one
probably still holds that prefix's KV state (its automatic snapshots), so sending the request there
skips most of the prefill. The gateway keeps, per worker, the fingerprints of its recent requests'
message prefixes; matching them costs no round trip to the workers.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson

# Prefix fingerprints remembered per worker: about the last 64 requests of up to 16 messages each
# (a worker itself keeps only ~8 automatic snapshots plus its named keys, so older ones rarely pay).
HISTORY_PER_WORKER = 64 * 16
HISTORY_ROOTS = 64  # conversation starts remembered per worker, to spread new sessions
MAX_PINNED_KEYS = 8192  # clients may invent a key per conversation: bound the table (LRU)

# (fingerprint of messages[0..i] plus tools, characters covered by that prefix)
Prefix = tuple[str, int]


class _Worker(Protocol):
    identity: bytes
    alive: bool


def _canon(value: Any) -> bytes:
    # Sorted keys: the same message written by two clients with another key order is the same prefix.
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return repr(value).encode("utf-8", "replace")


def prefix_fingerprints(messages: Sequence[Any], tools: Sequence[Any] | None = None) -> tuple[Prefix, ...]:
    """A sha256 chain: entry i names messages[0..i] with the tools (which templates render first)."""
    h = hashlib.sha256(b"acore-prefix:1" + _canon(list(tools or []))).digest()
    out: list[Prefix] = []
    size = 0
    for message in messages:
        data = _canon(message)
        size += len(data)
        h = hashlib.sha256(h + data).digest()
        out.append((h.hex()[:32], size))
    return tuple(out)


class Affinity:
    """Which worker holds a key, and which worker recently saw which message prefixes."""

    def __init__(self, cache_aware: bool = True, history: int = HISTORY_PER_WORKER,
                 max_keys: int = MAX_PINNED_KEYS) -> None:
        self.cache_aware = cache_aware
        self.history = history
        self.max_keys = max_keys
        self._owners: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (model, key) -> worker identity
        self._seen: dict[bytes, OrderedDict[str, int]] = {}  # worker identity -> prefix fingerprint -> size
        self._counts: Counter[bytes] = Counter()  # worker identity -> keys pinned to it
        # worker identity -> first-message fingerprints (~ sessions: system prompt + tools) it served
        self._roots: dict[bytes, OrderedDict[str, None]] = {}

    # ------------------------------------------------------------------ keys

    def owner(self, model: str, key: str) -> bytes | None:
        identity = self._owners.get((model, key))
        if identity is not None:
            self._owners.move_to_end((model, key))
        return identity

    def pin(self, model: str, key: str, identity: bytes) -> None:
        self.unpin(model, key)
        self._owners[(model, key)] = identity
        self._counts[identity] += 1
        while len(self._owners) > self.max_keys:
            _, old = self._owners.popitem(last=False)
            self._counts[old] -= 1

    def unpin(self, model: str, key: str) -> None:
        identity = self._owners.pop((model, key), None)
        if identity is not None:
            self._counts[identity] -= 1

    def unpin_worker(self, model: str, identity: bytes) -> None:
        """After a clear-all on a worker: none of its keys exist any more."""
        for k in [k for k, v in self._owners.items() if k[0] == model and v == identity]:
            self.unpin(*k)

    def key_count(self, identity: bytes) -> int:
        return self._counts[identity]

    # ------------------------------------------------------------------ choosing

    def eligible(self, workers: Iterable[_Worker], model: str, key: str | None,
                 forced: bytes | None = None) -> list[Any] | None:
        """The workers this request may use among ``workers``, or None for "any of them".

        A forced worker (a control-plane call to every worker) or a key's live owner narrows the
        choice to that one worker, even when it is busy: the caller then waits for it. A key whose
        owner died is re-pinned on assignment (its snapshots died with the process).
        """
        target = forced
        if target is None and key is not None:
            target = self.owner(model, key)
        if target is None:
            return None
        return [w for w in workers if w.identity == target]

    def owner_alive(self, model: str, key: str, live: Iterable[_Worker]) -> bool:
        identity = self._owners.get((model, key))
        return identity is not None and any(w.identity == identity and w.alive for w in live)

    def root_count(self, identity: bytes) -> int:
        """How many distinct conversation starts a worker served recently: a new one goes to the
        worker with the fewest, so sessions are spread instead of piling up (and evicting) on one."""
        return len(self._roots.get(identity, ()))

    def best_prefix(self, workers: Sequence[Any], prefix: Sequence[Prefix]) -> tuple[list[Any], int]:
        """The workers sharing the longest recorded prefix with the request (all when none matches),
        and the characters that prefix covers (0: no match)."""
        if not self.cache_aware or not prefix or len(workers) < 2:
            return list(workers), 0
        best: list[Any] = []
        best_size = 0
        for worker in workers:
            seen = self._seen.get(worker.identity)
            size = 0
            if seen:
                for fingerprint, covered in reversed(prefix):
                    if fingerprint in seen:
                        size = covered
                        break
            if size > best_size:
                best, best_size = [worker], size
            elif size == best_size and size > 0:
                best.append(worker)
        return (best, best_size) if best else (list(workers), 0)

    def assigned(self, worker: _Worker, model: str, key: str | None, prefix: Sequence[Prefix]) -> None:
        """A request went to ``worker``: it now holds the key and (soon) the request's prefix states."""
        if key is not None:
            self.pin(model, key, worker.identity)
        if prefix:
            seen = self._seen.setdefault(worker.identity, OrderedDict())
            for fingerprint, size in prefix:
                seen[fingerprint] = size
                seen.move_to_end(fingerprint)
            while len(seen) > self.history:
                seen.popitem(last=False)
            roots = self._roots.setdefault(worker.identity, OrderedDict())
            roots[prefix[0][0]] = None
            roots.move_to_end(prefix[0][0])
            while len(roots) > HISTORY_ROOTS:
                roots.popitem(last=False)

    def forget_worker(self, identity: bytes) -> None:
        """A dead worker's caches are gone: drop its keys and prefixes."""
        self._seen.pop(identity, None)
        self._roots.pop(identity, None)
        for k in [k for k, v in self._owners.items() if v == identity]:
            self.unpin(*k)
        self._counts.pop(identity, None)
