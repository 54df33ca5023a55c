"""The bounded response store: TTL, entry and byte bounds, delete."""

from __future__ import annotations

import time

import pytest

from gateway.ops.store import ResponseStore


def put(store: ResponseStore, response_id: str, text: str = "x") -> None:
    store.put({"id": response_id, "object": "response"}, [{"role": "user", "content": text}], 1)


def test_oldest_go_first_past_max_entries() -> None:
    store = ResponseStore(max_entries=2)
    for name in ("a", "b", "c"):
        put(store, name)
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    assert len(store) == 2


def test_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResponseStore(ttl_s=10)
    put(store, "a")
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    assert store.get("a") is None and len(store) == 0


def test_byte_bound_and_oversized_entries() -> None:
    store = ResponseStore(max_bytes=400)
    put(store, "big", "y" * 1000)
    assert store.get("big") is None  # larger than the whole store: never kept
    for name in ("a", "b", "c", "d", "e"):
        put(store, name, "z" * 50)
    assert store.get("a") is None and store.get("e") is not None


def test_delete_and_off() -> None:
    store = ResponseStore()
    put(store, "a")
    assert store.delete("a") and not store.delete("a")
    off = ResponseStore.from_env({"ACORE_RESPONSES_STORE_MAX": "0"})
    put(off, "a")
    assert off.get("a") is None
