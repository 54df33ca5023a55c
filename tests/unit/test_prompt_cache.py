"""Prompt cache: the generic store, and the llama.cpp backend's reuse and control plane (AbstractCore shapes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.messages import CacheOp, ErrorCode, Generate, SamplingParams, Usage
from workers.backend import WorkerError
from workers.llamacpp import LlamaCppBackend
from workers.prompt_cache import CacheEntry, PromptCacheStore, as_tokens, common_prefix, module_chain
from workers.tiny_models import write_tiny_gguf

SYSTEM = {"role": "system", "content": "you are a helpful test model, answer the question please " * 20}


@pytest.fixture(scope="session")
def cache_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", context_length=4096)


@pytest.fixture
def backend(cache_gguf: Path) -> Iterator[LlamaCppBackend]:
    # function-scoped on purpose: loading takes ~10 ms and every test needs a cold cache
    b = LlamaCppBackend(str(cache_gguf), "tiny", {"threads": 1, "n_ctx": 2048})
    b.load()
    yield b
    b.unload()


def gen(b: LlamaCppBackend, messages: list[dict[str, Any]], key: str | None = None, n: int = 12) -> tuple[str, Usage]:
    out: list[str] = []
    req = Generate(request_id="r", messages=messages, params=SamplingParams(max_tokens=n, temperature=0),
                   prompt_cache_key=key)
    result = b.generate(req, lambda d: out.append(d.text), lambda: False)
    return "".join(out), result.usage


def op(b: LlamaCppBackend, name: str, **args: Any) -> dict[str, Any]:
    return b.cache_op(CacheOp(request_id="c", op=name, args=args))


def user(text: str) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": text}]


# ---------------------------------------------------------------- generic store


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix(np.array([5, 6]), [5, 6]) == 2


def test_store_lru_budget_and_auto_first() -> None:
    store = PromptCacheStore(max_bytes=3000)
    store.put("a", CacheEntry(tokens=as_tokens([1]), state=b"x" * 1000))
    store.put_auto(as_tokens([2, 3]), b"y" * 1000)
    store.put("b", CacheEntry(tokens=as_tokens([4]), state=b"z" * 1000))
    assert store.total_bytes <= 3000
    # the automatic snapshot went first: named keys are what clients asked to keep
    assert store.named_keys() == ["a", "b"] and store.stats()["entries"] == 2
    store.get("a")  # a is now most recently used
    store.put("c", CacheEntry(tokens=as_tokens([5]), state=b"w" * 1500))
    assert store.named_keys() == ["a", "c"]
    assert not store.put("huge", CacheEntry(tokens=as_tokens([1]), state=b"h" * 4000))
    assert "huge" not in store


def test_store_ttl_and_auto_superseded() -> None:
    store = PromptCacheStore()
    store.put("short", CacheEntry(tokens=as_tokens([1]), state=b"s", ttl_s=0.01))
    time.sleep(0.03)
    assert "short" not in store and store.total_bytes == 0
    store.put_auto(as_tokens([1, 2]), b"a")
    store.put_auto(as_tokens([1, 2, 3]), b"b")  # supersedes [1, 2]
    store.put_auto(as_tokens([9]), b"c")
    assert store.stats()["entries"] == 2
    assert store.best_prefix([1, 2, 3, 4])[1] == 3


def test_module_chain_is_stable_and_cumulative() -> None:
    mods = [{"module_id": "sys", "system_prompt": "hi"}, {"module_id": "tools", "tools": []}]
    a = module_chain("ns", mods)
    assert a == module_chain("ns", [dict(m) for m in mods])
    assert module_chain("ns", mods[:1]) == a[:1]  # a key names the prefix up to its module
    assert module_chain("ns", mods, version=2) != a
    assert all(k.startswith("ns:") and len(k) == 3 + 16 for k, _ in a)
    # pinned: sha256 chain from sha256("acore-prompt-cache:1") over canonical-JSON fingerprints,
    # so keys survive restarts and code changes (clients store them)
    assert a[0][0] == "ns:470a63337bf50ad5" and a[1][0] == "ns:55c5e7373450a12a"
    # normalized like AbstractCore: surrounding whitespace and an empty tools list do not change identity
    assert module_chain("ns", [{"module_id": " sys ", "system_prompt": "hi  ", "tools": []}])[0] == a[0]


# ---------------------------------------------------------------- llama.cpp backend


def test_cached_greedy_identical_to_uncached(backend: LlamaCppBackend, cache_gguf: Path) -> None:
    first, u1 = gen(backend, user("hello world"))
    assert u1.cached_tokens == 0
    gen(backend, [{"role": "user", "content": "something unrelated"}])  # evicts the live context
    again, u2 = gen(backend, user("hello world"))
    assert again == first
    assert u2.cached_tokens == u2.prompt_tokens - 1  # all but the token sampling needs fresh logits
    # a different question with the same system prompt: prefix reused, output as a cold model's
    other, u3 = gen(backend, user("what is the weather"))
    assert u3.cached_tokens > 200
    cold = LlamaCppBackend(str(cache_gguf), "cold", {"threads": 1, "n_ctx": 2048})
    cold.load()
    try:
        want, u4 = gen(cold, user("what is the weather"))
    finally:
        cold.unload()
    assert u4.cached_tokens == 0 and other == want


def test_key_continues_conversation(backend: LlamaCppBackend, cache_gguf: Path) -> None:
    turn1 = user("hello world")
    reply, u1 = gen(backend, turn1, key="session-1")  # a key never set: a fresh cache, not an error
    assert u1.cached_tokens == 0 and "session-1" in op(backend, "stats")["stats"]["keys"]
    turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "and then"}]
    gen(backend, [{"role": "user", "content": "other"}])  # someone else in between
    out, u2 = gen(backend, turn2, key="session-1")
    assert u2.cached_tokens >= u1.prompt_tokens - 1
    cold = LlamaCppBackend(str(cache_gguf), "cold", {"threads": 1, "n_ctx": 2048})
    cold.load()
    try:
        assert gen(cold, turn2)[0] == out
    finally:
        cold.unload()


def test_stats_set_and_default_key(backend: LlamaCppBackend) -> None:
    assert op(backend, "set", key="k", make_default=True, ttl_s=60) == {"supported": True, "ok": True}
    stats = op(backend, "stats")
    assert stats["supported"] is True
    assert stats["stats"]["default_key"] == "k" and stats["stats"]["keys"] == ["k"]
    assert set(stats["stats"]) >= {"entries", "bytes", "max_bytes", "default_key", "keys", "meta_by_key"}
    gen(backend, user("hello"))  # no key: the default key is used
    assert op(backend, "stats")["stats"]["meta_by_key"]["k"]["token_count"] > 200


def test_update_prefills_and_is_reused(backend: LlamaCppBackend) -> None:
    res = op(backend, "update", key="sys", system_prompt=SYSTEM["content"])
    assert res["ok"] is True and res["token_count"] > 200
    _, usage = gen(backend, user("hello"), key="sys")
    assert usage.cached_tokens == res["token_count"]
    # resending the same text does not duplicate it (never appended blindly)
    again = op(backend, "update", key="sys", messages=[SYSTEM])
    assert again["token_count"] == res["token_count"]


def test_fork_diverges_independently(backend: LlamaCppBackend) -> None:
    op(backend, "update", key="base", messages=[SYSTEM])
    assert op(backend, "fork", from_key="base", to_key="a")["ok"] is True
    assert op(backend, "fork", from_key="base", to_key="b")["ok"] is True
    a_out, ua = gen(backend, user("hello world"), key="a")
    a_tokens = backend.cache.get("a").tokens.copy()  # type: ignore[union-attr]
    _b_out, ub = gen(backend, user("what is the weather"), key="b")
    assert ua.cached_tokens > 200 and ub.cached_tokens > 200
    meta = op(backend, "stats")["stats"]["meta_by_key"]
    assert meta["a"]["forked_from"] == "base" and meta["b"]["forked_from"] == "base"
    assert meta["base"]["token_count"] < meta["a"]["token_count"]
    # b's generation left a's state (and the base) untouched
    assert np.array_equal(backend.cache.get("a").tokens, a_tokens)  # type: ignore[union-attr]
    assert not np.array_equal(backend.cache.get("b").tokens, a_tokens)  # type: ignore[union-attr]
    assert op(backend, "stats")["stats"]["meta_by_key"]["base"]["token_count"] == meta["base"]["token_count"]
    turn2 = [*user("hello world"), {"role": "assistant", "content": a_out}, {"role": "user", "content": "more"}]
    _, u2 = gen(backend, turn2, key="a")
    assert u2.cached_tokens >= ua.prompt_tokens - 1


def test_fork_errors(backend: LlamaCppBackend) -> None:
    with pytest.raises(WorkerError) as e:
        op(backend, "fork", from_key="nope", to_key="x")
    assert e.value.code == ErrorCode.NOT_FOUND
    op(backend, "set", key="x")
    op(backend, "set", key="y")
    with pytest.raises(WorkerError) as e:
        op(backend, "fork", from_key="x", to_key="y")
    assert e.value.code == ErrorCode.CONFLICT
    assert op(backend, "fork", from_key="x", to_key="y", overwrite=True)["ok"] is True
    with pytest.raises(WorkerError) as e:
        op(backend, "clear", key="nope")
    assert e.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(WorkerError) as e:
        op(backend, "bogus")
    assert e.value.code == ErrorCode.BAD_REQUEST


def test_clear_frees_bytes(backend: LlamaCppBackend) -> None:
    op(backend, "update", key="one", messages=[SYSTEM])
    op(backend, "update", key="two", messages=user("hello"))
    before = op(backend, "stats")["stats"]
    one = before["meta_by_key"]["one"]["bytes"]
    assert before["bytes"] >= one > 10_000
    op(backend, "clear", key="one")
    after = op(backend, "stats")["stats"]
    assert after["bytes"] == before["bytes"] - one and after["keys"] == ["two"]
    op(backend, "clear", key=None)
    assert op(backend, "stats")["stats"]["bytes"] == 0 == op(backend, "stats")["stats"]["entries"]


MODULES = [
    {"module_id": "system", "system_prompt": SYSTEM["content"]},
    {"module_id": "examples", "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
]


def test_prepare_modules_stable_and_reused(backend: LlamaCppBackend, cache_gguf: Path) -> None:
    res = op(backend, "prepare_modules", namespace="app", modules=MODULES)
    assert res["supported"] is True and res["version"] == 1 and res["reused_modules"] == 0
    keys = [m["cache_key"] for m in res["modules"]]
    assert res["final_cache_key"] == keys[-1] and all(k.startswith("app:") for k in keys)
    meta = op(backend, "stats")["stats"]["meta_by_key"]
    assert meta[keys[0]]["index"] == 0 and meta[keys[1]]["module_id"] == "examples"
    assert meta[keys[0]]["token_count"] < meta[keys[1]]["token_count"]
    assert {"namespace", "module_hash", "backend"} <= set(meta[keys[0]])
    # again: everything reused; one more module: only it is built
    assert op(backend, "prepare_modules", namespace="app", modules=MODULES)["reused_modules"] == 2
    more = op(backend, "prepare_modules", namespace="app", modules=[*MODULES, {"module_id": "x", "prompt": "hello"}])
    assert more["reused_modules"] == 2 and [m["cache_key"] for m in more["modules"][:2]] == keys
    # stable across processes/runs: a fresh backend computes the same keys
    other = LlamaCppBackend(str(cache_gguf), "other", {"threads": 1, "n_ctx": 2048})
    other.load()
    try:
        assert [m["cache_key"] for m in op(other, "prepare_modules", namespace="app", modules=MODULES)["modules"]] == keys
    finally:
        other.unload()
    # a session forked from the final key starts with the modules' tokens cached
    op(backend, "fork", from_key=keys[-1], to_key="s1")
    _, usage = gen(backend, [SYSTEM, *MODULES[1]["messages"], {"role": "user", "content": "bye"}], key="s1")
    assert usage.cached_tokens == meta[keys[1]]["token_count"]


def test_prepare_modules_over_budget(cache_gguf: Path) -> None:
    b = LlamaCppBackend(str(cache_gguf), "small", {"threads": 1, "n_ctx": 2048, "prompt_cache_bytes": 20_000})
    b.load()
    try:
        with pytest.raises(WorkerError) as e:
            op(b, "prepare_modules", namespace="app", modules=MODULES)
        assert e.value.code == ErrorCode.TOO_LARGE
        assert op(b, "stats")["stats"]["keys"] == []
        with pytest.raises(WorkerError) as e:
            op(b, "prepare_modules", namespace="app", modules=[])
        assert e.value.code == ErrorCode.BAD_REQUEST
    finally:
        b.unload()


def test_match_reports_prefix(backend: LlamaCppBackend) -> None:
    assert op(backend, "match", messages=user("hello"))["prefix_tokens"] == 0
    _, usage = gen(backend, user("hello"))
    n = op(backend, "match", messages=user("what is the weather"))["prefix_tokens"]
    assert 200 < n < usage.prompt_tokens
