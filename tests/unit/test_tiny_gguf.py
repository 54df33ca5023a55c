"""The tiny GGUF generator: deterministic bytes, a real tokenizer, and a template llama.cpp reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import llama_cpp as llama_cpp
import pytest

from workers.tiny_models import spm_vocab, write_tiny_gguf


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf")
    b = write_tiny_gguf(tmp_path / "b.gguf")
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=1)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


def test_vocabulary_shape() -> None:
    tokens, scores, types = spm_vocab()
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types)
    assert tokens[:5] == ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert "<0x00>" in tokens and "<0xFF>" in tokens
    # every prefix of a word piece exists, or llama.cpp's SPM could not merge up to the word
    assert all(p in tokens for p in ("▁h", "▁he", "▁hel", "▁hell", "▁hello"))


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    model = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    yield model
    model.close()


def test_llama_cpp_reads_it(llm) -> None:
    assert llm.metadata["llama.context_length"] == "4096"
    assert llm.chat_format == "chat_template.default"  # the template came from the GGUF
    assert llm._model.token_get_text(llm.token_eos()) == "<|im_end|>"


def test_text_round_trips(llm) -> None:
    text = "hello world Ünïcode ✓\n{\"a\": 1}"
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert llm.detokenize(ids).decode() == " " + text  # SPM adds the space prefix
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [3]


def test_zero_special_rows_never_emits_special_tokens(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "bench.gguf", zero_special_rows=True)
    model = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        tokens, _, types = spm_vocab()
        prompt = model.tokenize(b"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", add_bos=False,
                                special=True)
        out = []
        for tok in model.generate(prompt, temp=0.0):
            out.append(tok)
            if len(out) == 100:
                break
        assert len(out) == 100
        assert all(types[t] == 1 for t in out), [tokens[t] for t in out if types[t] != 1]
    finally:
        model.close()
