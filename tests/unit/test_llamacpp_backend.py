"""LlamaCppBackend in-process on the tiny GGUF: template, sampling parameters, grammars, abort, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp as llama_cpp
import pytest

from protocol.messages import ErrorCode, FinishReason, Generate, SamplingParams
from workers.backend import Delta, GenerationResult, ModelLoadError, WorkerError
from workers.chat import StopStringFilter, merged_tool_calls
from workers.llamacpp import LlamaCppBackend
from workers.tiny_models import write_tiny_gguf

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="module")
def backend(tiny_gguf: Path) -> Iterator[LlamaCppBackend]:
    b = LlamaCppBackend(str(tiny_gguf), "tiny", {"threads": 1})
    b.load()
    yield b
    b.unload()


def run(b: LlamaCppBackend, messages: list[dict[str, Any]] = HELLO, cancel_after: int | None = None,
        **kw: Any) -> tuple[str, GenerationResult, list[Delta]]:
    deltas: list[Delta] = []
    params = SamplingParams(**{k: v for k, v in kw.items() if k in SamplingParams.__struct_fields__})
    rest = {k: v for k, v in kw.items() if k not in SamplingParams.__struct_fields__}
    req = Generate(request_id="r", messages=messages, params=params, **rest)
    calls = [0]

    def cancelled() -> bool:
        calls[0] += 1
        return cancel_after is not None and calls[0] > cancel_after

    result = b.generate(req, deltas.append, cancelled)
    return "".join(d.text for d in deltas), result, deltas


def test_info_before_load(tiny_gguf: Path) -> None:
    info = LlamaCppBackend(str(tiny_gguf), "tiny", {}).info()
    assert info.context_length == 4096
    assert info.capabilities.chat and info.capabilities.prompt_cache and info.capabilities.json_schema
    assert LlamaCppBackend(str(tiny_gguf), "tiny", {"n_ctx": 512}).info().context_length == 512


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppBackend(str(tmp_path / "missing.gguf"), "x", {}).load()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        LlamaCppBackend(str(bad), "x", {}).load()


def test_missing_template_falls_back_to_chatml(tmp_path: Path) -> None:
    b = LlamaCppBackend(str(write_tiny_gguf(tmp_path / "nt.gguf", with_template=False)), "nt", {"threads": 1, "n_ctx": 256})
    b.load()
    try:
        assert b.render(HELLO) == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    finally:
        b.unload()


def test_chat_template_applied(backend: LlamaCppBackend) -> None:
    prompt = backend.render([{"role": "system", "content": "be brief"}, *HELLO])
    assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    _, result, _ = run(backend, [{"role": "system", "content": "be brief"}, *HELLO], max_tokens=2, temperature=0)
    assert result.usage.prompt_tokens == len(backend.tokenize(prompt))


def test_text_parts_joined_and_images_refused(backend: LlamaCppBackend) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]
    assert backend.render(parts) == backend.render(HELLO)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    with pytest.raises(WorkerError) as e:
        run(backend, image, max_tokens=2)
    assert e.value.code == ErrorCode.NOT_SUPPORTED and "images" in e.value.message


def test_greedy_matches_llama_cpp_python(backend: LlamaCppBackend, tiny_gguf: Path) -> None:
    text, result, deltas = run(backend, max_tokens=24, temperature=0)
    ref = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=512, n_threads=1, verbose=False)
    try:
        want = ref.create_completion(backend.render(HELLO), max_tokens=24, temperature=0, repeat_penalty=1.0)
    finally:
        ref.close()
    # llama-cpp-python drops an invalid byte where we put U+FFFD (what a UTF-8 decoder should do)
    assert text.replace("\ufffd", "") == want["choices"][0]["text"]
    assert result.finish_reason == FinishReason.LENGTH == want["choices"][0]["finish_reason"]
    assert result.usage.completion_tokens == 24 == sum(d.n_tokens for d in deltas)
    assert len(deltas) == 24  # one Delta per token: the loop coalesces, not the backend


def test_seed_reproducible(backend: LlamaCppBackend) -> None:
    a, _, _ = run(backend, max_tokens=16, temperature=1.5, seed=42, top_k=0, top_p=1.0, min_p=0.0)
    b, _, _ = run(backend, max_tokens=16, temperature=1.5, seed=42, top_k=0, top_p=1.0, min_p=0.0)
    c, _, _ = run(backend, max_tokens=16, temperature=1.5, seed=7, top_k=0, top_p=1.0, min_p=0.0)
    assert a == b
    assert a != c


def test_stop_string_never_leaks(backend: LlamaCppBackend) -> None:
    full, _, _ = run(backend, max_tokens=30, temperature=0)
    stop = full[10:14]
    assert stop.strip(), full
    text, result, _ = run(backend, max_tokens=30, temperature=0, stop=[stop])
    assert result.finish_reason == FinishReason.STOP
    assert text == full[: full.index(stop)]


def test_stop_filter_holds_back_partial_match() -> None:
    f = StopStringFilter(["END"])
    assert f.feed("abcE") == ("abc", False)
    assert f.feed("N") == ("", False)
    assert f.feed("X") == ("ENX", False)
    assert f.feed("yyEN") == ("yy", False)
    assert f.feed("Dzz") == ("", True)


def test_logit_bias_forces_token(backend: LlamaCppBackend) -> None:
    hello = backend.tokenize("hello")[-1]  # "▁hello"
    text, _, _ = run(backend, max_tokens=3, temperature=0, logit_bias={str(hello): 100.0})
    assert text == " hello hello hello"
    with pytest.raises(WorkerError) as e:
        run(backend, max_tokens=3, logit_bias={"999999": 1.0})
    assert e.value.code == ErrorCode.BAD_REQUEST


def test_json_schema_output_parses(backend: LlamaCppBackend) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "blue"]}},
              "required": ["ok", "color"], "additionalProperties": False}
    text, result, _ = run(backend, max_tokens=60, temperature=0,
                          response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert result.finish_reason == FinishReason.STOP, text
    doc = json.loads(text)
    assert isinstance(doc["ok"], bool) and doc["color"] in ("red", "blue")


def test_utf8_from_byte_tokens(backend: LlamaCppBackend) -> None:
    # The grammar forces a string the vocabulary can only spell with byte-fallback tokens; every
    # delta must still be valid text (no replacement characters from split UTF-8 sequences).
    word = "Ünïcode ✓ 日本"
    schema = {"enum": [word]}
    text, result, deltas = run(backend, max_tokens=60, temperature=0,
                               response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert json.loads(text) == word
    assert all("\ufffd" not in d.text for d in deltas)
    assert result.usage.completion_tokens > len(word)  # byte tokens were really used


def test_abort_between_tokens(backend: LlamaCppBackend) -> None:
    _, result, _deltas = run(backend, max_tokens=50, temperature=0, cancel_after=4)
    assert result.finish_reason == FinishReason.ABORTED
    assert 1 <= result.usage.completion_tokens <= 4
    # the backend is still usable afterwards
    _, result, _ = run(backend, max_tokens=2, temperature=0)
    assert result.finish_reason == FinishReason.LENGTH


def test_max_tokens_default_is_remaining_context(tiny_gguf: Path) -> None:
    b = LlamaCppBackend(str(tiny_gguf), "tiny", {"threads": 1, "n_ctx": 64})
    b.load()
    try:
        hello = b.tokenize("hello")[-1]  # forced, so the random model cannot end early with EOS
        _, result, _ = run(b, temperature=0, logit_bias={str(hello): 100.0})
        assert result.finish_reason == FinishReason.LENGTH
        n_ctx = b.info().context_length  # llama.cpp rounds n_ctx up (to 256 here)
        assert 64 <= n_ctx <= 256
        assert result.usage.prompt_tokens + result.usage.completion_tokens == n_ctx
        with pytest.raises(WorkerError) as e:
            run(b, [{"role": "user", "content": "hello world " * 200}], max_tokens=2)
        assert e.value.code == ErrorCode.CONTEXT_OVERFLOW and str(n_ctx - 1) in e.value.message
    finally:
        b.unload()


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_tools_rendered_and_tool_call_converted(backend: LlamaCppBackend) -> None:
    assert "get_weather" in backend.render(HELLO, TOOLS)
    schema = {"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {"city": {"enum": ["Paris"]}}, "required": ["city"],
                      "additionalProperties": False}},
        "required": ["name", "arguments"], "additionalProperties": False}
    text, result, deltas = run(backend, max_tokens=60, temperature=0, tools=TOOLS,
                               response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert result.finish_reason == FinishReason.TOOL_CALLS
    assert text == ""  # held back, never leaked as content
    calls = merged_tool_calls([c for d in deltas for c in d.tool_calls])
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_plain_text_with_tools_is_text(backend: LlamaCppBackend) -> None:
    text, result, _ = run(backend, max_tokens=8, temperature=0, tools=TOOLS)
    assert result.finish_reason == FinishReason.LENGTH
    assert text.strip()
