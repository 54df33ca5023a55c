"""MLXBackend in-process on the tiny random llama model (workers/mlx_tiny.py), mlx[cpu] on Linux."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from protocol.messages import CacheOp, ErrorCode, Generate, SamplingParams
from workers.backend import Delta, GenerationResult, ModelLoadError, WorkerError
from workers.chat import StopStringFilter
from workers.mlx_backend import MLXBackend
from workers.mlx_tiny import write_tiny_mlx_model

SYSTEM = "You are a helpful assistant. Please write a short story about a cat and a dog. " * 8
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello world, how are you today?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mlx_model(tmp_path_factory.mktemp("mlx") / "tiny-mlx")


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> MLXBackend:
    b = MLXBackend(str(model_dir), "tiny-mlx", {})
    b.load()
    return b


@pytest.fixture(autouse=True)
def _empty_cache(backend: MLXBackend) -> None:
    backend.store.clear()


def run(backend: MLXBackend, messages: list[dict[str, Any]] | None = None,
        cancelled: Callable[[], bool] = lambda: False, tools: list[dict[str, Any]] | None = None,
        key: str | None = None, **params: Any) -> tuple[str, list[Delta], GenerationResult]:
    deltas: list[Delta] = []
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    request = Generate(request_id="r", messages=messages or CHAT, params=SamplingParams(**params),
                       tools=tools or [], prompt_cache_key=key)
    result = backend.generate(request, deltas.append, cancelled)
    return "".join(d.text for d in deltas), deltas, result


def op(backend: MLXBackend, name: str, **args: Any) -> dict[str, Any]:
    return backend.cache_op(CacheOp(request_id="c", op=name, args=args))


def test_output_depends_on_the_whole_prompt(backend: MLXBackend) -> None:
    """Cache tests compare outputs: they only mean something if the early context matters."""
    outs = {run(backend, [{"role": "system", "content": f"The {w} is here. " + SYSTEM}, CHAT[1]])[0]
            for w in ("cat", "dog", "king")}
    assert len(outs) == 3


def test_generator_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    again = write_tiny_mlx_model(tmp_path / "again")
    other = write_tiny_mlx_model(tmp_path / "other", seed=1)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (model_dir, again, other)]
    assert digest[0] == digest[1] != digest[2]
    assert (model_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_info_before_load(model_dir: Path) -> None:
    info = MLXBackend(str(model_dir), "tiny-mlx", {}).info()
    assert info.capabilities.chat and info.capabilities.prompt_cache and info.capabilities.tools
    assert info.context_length == 4096
    assert info.max_concurrency == 1


def test_missing_model_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        MLXBackend(str(tmp_path / "nope"), "nope", {}).load()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        MLXBackend(str(tmp_path), "empty", {}).load()


def test_loads_an_id_from_the_local_hf_cache(tmp_path: Path, model_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id resolves offline through the Hugging Face cache layout (refs/main -> snapshot)."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "models--local--tiny-mlx" / "snapshots" / ("0" * 40)
    shutil.copytree(model_dir, snapshot)
    (tmp_path / "models--local--tiny-mlx" / "refs").mkdir()
    (tmp_path / "models--local--tiny-mlx" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    by_id = MLXBackend("local/tiny-mlx", "tiny", {})
    assert by_id.info().context_length == 4096
    by_id.load()
    assert run(by_id, max_tokens=3)[2].usage.completion_tokens == 3
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        MLXBackend("local/not-there", "x", {}).load()


def test_chat_template_applied(backend: MLXBackend) -> None:
    tok = backend._tokenizer
    expected = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHello world, how are you today?<|im_end|>\n" \
               "<|im_start|>assistant\n"
    _, _, result = run(backend, max_tokens=2)
    assert result.usage.prompt_tokens == len(tok.encode(expected, add_special_tokens=False))
    assert tok.encode("<|im_start|>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<|im_start|>")]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    _, _, with_tools = run(backend, tools=tools, max_tokens=2)
    assert with_tools.usage.prompt_tokens > result.usage.prompt_tokens  # the template rendered the tools


def test_streaming_matches_mlx_lm(backend: MLXBackend) -> None:
    """Greedy deltas, joined, are exactly mlx-lm's own stream_generate text for the same prompt."""
    text, deltas, result = run(backend, max_tokens=40)
    prompt = backend._tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = backend._tokenizer.encode(prompt, add_special_tokens=False)
    reference = "".join(r.text for r in mlx_lm.stream_generate(backend._model, backend._tokenizer, ids, max_tokens=40,
                                                               sampler=make_sampler(temp=0.0)))
    assert text == reference
    assert len(deltas) >= 40  # one delta per token: streamed, not collected
    assert sum(d.n_tokens for d in deltas) == result.usage.completion_tokens == 40
    assert result.finish_reason == "length"


def test_max_tokens_gives_length(backend: MLXBackend) -> None:
    for n in (1, 7):
        _, deltas, result = run(backend, max_tokens=n)
        assert result.finish_reason == "length"
        assert result.usage.completion_tokens == n == sum(d.n_tokens for d in deltas)


def test_seed_temperature_top_p_reproducible(backend: MLXBackend) -> None:
    a, _, _ = run(backend, temperature=1.0, top_p=0.9, seed=7, max_tokens=30)
    b, _, _ = run(backend, temperature=1.0, top_p=0.9, seed=7, max_tokens=30)
    c, _, _ = run(backend, temperature=1.0, top_p=0.9, seed=8, max_tokens=30)
    greedy, _, _ = run(backend, temperature=0.0, max_tokens=30)
    assert a == b
    assert a != c
    assert a != greedy
    # min_p and the repetition penalty reach the sampler: they change a seeded / greedy run
    d, _, _ = run(backend, temperature=1.0, min_p=0.5, seed=7, max_tokens=30)
    assert d != a
    e, _, _ = run(backend, temperature=0.0, repeat_penalty=5.0, max_tokens=30)
    assert e != greedy


def test_stop_string_cuts_and_holds_back(backend: MLXBackend) -> None:
    full, _, _ = run(backend, max_tokens=40, temperature=1.0, seed=3)
    stop = full[12:15]
    cut = full.find(stop)
    assert len(stop) == 3 and cut > 0
    text, deltas, result = run(backend, max_tokens=40, temperature=1.0, seed=3, stop=["never", stop])
    assert text == full[:cut]
    assert result.finish_reason == "stop"
    assert all(stop not in d.text for d in deltas)


def test_stop_matcher_tail() -> None:
    m = StopStringFilter(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("N") == ("", False)
    assert m.feed("x") == ("ENx", False)
    assert m.feed("xEND tail") == ("x", True)


def test_abort_between_tokens(backend: MLXBackend) -> None:
    seen: list[int] = []

    def cancelled() -> bool:
        seen.append(1)
        return len(seen) > 4

    _, deltas, result = run(backend, max_tokens=200, cancelled=cancelled)
    assert result.finish_reason == "aborted"
    assert result.usage.completion_tokens == sum(d.n_tokens for d in deltas) <= 5


def test_cache_reuse_identical_greedy_output(backend: MLXBackend) -> None:
    cold, _, first = run(backend, key="s", max_tokens=30)
    assert first.usage.cached_tokens == 0
    warm, _, second = run(backend, key="s", max_tokens=30)
    assert warm == cold
    assert second.usage.cached_tokens == second.usage.prompt_tokens - 1

    # the next turn resends the whole conversation: the prefix is reused, nothing appended twice
    turn2 = [*CHAT, {"role": "assistant", "content": cold}, {"role": "user", "content": "And then?"}]
    cached, _, third = run(backend, turn2, key="s", max_tokens=30)
    assert third.usage.cached_tokens >= first.usage.prompt_tokens
    stats = op(backend, "stats")["stats"]
    assert stats["meta_by_key"]["s"]["token_count"] == third.usage.prompt_tokens + 30
    backend.store.clear()
    uncached, _, fresh = run(backend, turn2, max_tokens=30)
    assert fresh.usage.cached_tokens == 0
    assert cached == uncached


def test_no_key_reuses_automatically(backend: MLXBackend) -> None:
    cold, _, _ = run(backend, max_tokens=20)
    warm, _, result = run(backend, max_tokens=20)
    assert warm == cold
    assert result.usage.cached_tokens == result.usage.prompt_tokens - 1
    assert op(backend, "stats")["stats"]["keys"] == []  # automatic snapshots are not keys


def test_penalties_see_the_cached_prefix(backend: MLXBackend) -> None:
    cold, _, _ = run(backend, key="p", repeat_penalty=3.0, max_tokens=30)
    warm, _, result = run(backend, key="p", repeat_penalty=3.0, max_tokens=30)
    assert result.usage.cached_tokens > 0
    assert warm == cold


def test_update_fork_diverge(backend: MLXBackend) -> None:
    assert op(backend, "update", key="base", system_prompt=SYSTEM)["ok"]
    base_tokens = op(backend, "stats")["stats"]["meta_by_key"]["base"]["token_count"]
    assert op(backend, "fork", from_key="base", to_key="a")["ok"]
    assert op(backend, "fork", from_key="base", to_key="b")["ok"]
    a_msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about the king."}]
    b_msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
    a1, _, ra = run(backend, a_msgs, key="a", max_tokens=20)
    b1, _, rb = run(backend, b_msgs, key="b", max_tokens=20)
    # b may reuse a little more than the base: a's state also shares "<|im_start|>user\n" with it
    assert ra.usage.cached_tokens == base_tokens <= rb.usage.cached_tokens
    assert a1 != b1
    stats = op(backend, "stats")["stats"]["meta_by_key"]
    assert stats["a"]["forked_from"] == stats["b"]["forked_from"] == "base"
    assert stats["base"]["token_count"] == base_tokens  # the source is untouched
    assert stats["a"]["token_count"] == ra.usage.prompt_tokens + 20
    assert stats["b"]["token_count"] == rb.usage.prompt_tokens + 20
    # each session's next turn continues on its own state, and equals an uncached run
    a_next = [*a_msgs, {"role": "assistant", "content": a1}, {"role": "user", "content": "Why?"}]
    b_next = [*b_msgs, {"role": "assistant", "content": b1}, {"role": "user", "content": "Why?"}]
    a2, _, ra2 = run(backend, a_next, key="a", max_tokens=20)
    b2, _, rb2 = run(backend, b_next, key="b", max_tokens=20)
    # (>=: the re-tokenized reply may differ from the generated tokens, as with any BPE)
    assert ra2.usage.cached_tokens >= ra.usage.prompt_tokens
    assert rb2.usage.cached_tokens >= rb.usage.prompt_tokens
    backend.store.clear()
    assert run(backend, a_next, max_tokens=20)[0] == a2
    backend.store.clear()
    assert run(backend, b_next, max_tokens=20)[0] == b2


def test_fork_errors(backend: MLXBackend) -> None:
    op(backend, "set", key="x")
    with pytest.raises(WorkerError) as exc:
        op(backend, "fork", from_key="missing", to_key="y")
    assert exc.value.code == ErrorCode.NOT_FOUND
    op(backend, "set", key="y", make_default=False)
    with pytest.raises(WorkerError) as exc:
        op(backend, "fork", from_key="x", to_key="y")
    assert exc.value.code == ErrorCode.CONFLICT
    assert op(backend, "fork", from_key="x", to_key="y", overwrite=True)["ok"]
    with pytest.raises(WorkerError) as exc:
        op(backend, "clear", key="missing")
    assert exc.value.code == ErrorCode.NOT_FOUND


def test_set_default_key_applies(backend: MLXBackend) -> None:
    op(backend, "set", key="d", make_default=True)
    _, _, first = run(backend, max_tokens=5)
    stats = op(backend, "stats")["stats"]
    assert stats["default_key"] == "d"
    assert stats["meta_by_key"]["d"]["token_count"] == first.usage.prompt_tokens + 5


def test_clear_frees_bytes(backend: MLXBackend) -> None:
    run(backend, key="k1", max_tokens=10)
    run(backend, key="k2", max_tokens=10)
    stats = op(backend, "stats")["stats"]
    k1 = stats["meta_by_key"]["k1"]["bytes"]
    assert k1 > 0 and stats["bytes"] >= k1 + stats["meta_by_key"]["k2"]["bytes"]
    gc.collect()
    before = mx.get_active_memory()
    assert op(backend, "clear", key="k1")["bytes"] == stats["bytes"] - k1
    gc.collect()
    # the KV arrays themselves are released, not only the bookkeeping
    assert before - mx.get_active_memory() >= 0.9 * (k1 - 8 * stats["meta_by_key"]["k1"]["token_count"])
    op(backend, "clear")
    assert op(backend, "stats")["stats"]["bytes"] == 0


def test_byte_budget_evicts(model_dir: Path) -> None:
    small = MLXBackend(str(model_dir), "tiny-mlx", {"prompt_cache_bytes": 400_000})
    small.load()
    for key in ("a", "b", "c"):
        run(small, key=key, max_tokens=5)
    stats = op(small, "stats")["stats"]
    assert stats["bytes"] <= 400_000
    assert "c" in stats["keys"] and "a" not in stats["keys"]


def test_prepare_modules_stable_and_reused(backend: MLXBackend) -> None:
    modules = [{"module_id": "sys", "system_prompt": SYSTEM},
               {"module_id": "tools", "messages": [{"role": "user", "content": "Numbers: 0 1 2 3"}]}]
    first = op(backend, "prepare_modules", namespace="ns", modules=modules)
    assert first["final_cache_key"].startswith("ns:") and len(first["final_cache_key"]) == 3 + 16
    again = op(backend, "prepare_modules", namespace="ns", modules=modules)
    assert [m["cache_key"] for m in again["modules"]] == [m["cache_key"] for m in first["modules"]]
    assert again["reused_modules"] == 2
    backend.store.clear()
    assert op(backend, "prepare_modules", namespace="ns", modules=modules)["final_cache_key"] == first["final_cache_key"]
    # a chat whose prompt starts with the modules reuses them
    op(backend, "fork", from_key=first["final_cache_key"], to_key="session")
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Numbers: 0 1 2 3"},
            {"role": "user", "content": "hi"}]
    _, _, result = run(backend, msgs, key="session", max_tokens=3)
    n_final = op(backend, "stats")["stats"]["meta_by_key"][first["final_cache_key"]]["token_count"]
    assert result.usage.cached_tokens == n_final
    assert op(backend, "match", messages=msgs)["prefix_tokens"] >= n_final


def test_context_overflow(model_dir: Path) -> None:
    small = MLXBackend(str(model_dir), "tiny-mlx", {"n_ctx": 64})
    small.load()
    assert small.info().context_length == 64
    with pytest.raises(WorkerError) as exc:
        run(small)
    assert exc.value.code == ErrorCode.CONTEXT_OVERFLOW
