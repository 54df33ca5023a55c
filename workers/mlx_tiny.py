"""A tiny random llama model + byte-level BPE tokenizer in mlx-lm's directory format.

Nothing can be downloaded in tests, so the MLX backend is exercised on a model built here: a
2-layer, 64-wide llama with random N(0, 0.02) weights and a BPE tokenizer trained in-process on a
fixed corpus. The same arguments always give the same files (fixed seed, fixed corpus), so greedy
outputs are reproducible across runs and machines of the same kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# ChatML, as Qwen and many llama fine-tunes use; tools are rendered into the system turn so a
# request with tools yields a different (longer) prompt, which the tests can observe.
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% endif %}"
    "# Tools\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small fixed corpus: common English words so merges form real word pieces.
_CORPUS = """
The quick brown fox jumps over the lazy dog. Hello world, hello there! How are you today?
I am a helpful assistant. You are a user asking a question about the weather and the news.
Please write a short story about a cat, a dog and a bird who live in a small house by the sea.
Once upon a time there was a king who had three daughters and a large garden full of flowers.
What is the capital of France? Paris is the capital of France. Berlin is the capital of Germany.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Code: def main(): return x + y * 2 if a else b.
system user assistant tool function call arguments name content role message response
"""


def _train_tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # every byte symbol is in the vocabulary, so any UTF-8 text round-trips
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines()] * 4
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def write_tiny_mlx_model(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    vocab_size: int = 400,
    context_length: int = 4096,
    std: float = 0.1,
) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into ``path``; return it."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model
    from transformers import PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = _train_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out))
    eos_id = fast.convert_tokens_to_ids("<|im_end|>")

    heads = max(1, hidden // 16)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 4,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "rms_norm_eps": 1e-5,
        "vocab_size": len(fast),
        "max_position_embeddings": context_length,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": eos_id,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Weights N(0, std), norms 1; sorted names keep the draw order fixed. std 0.1 rather than the
    # usual 0.02: at 0.02 attention barely moves the residual stream, so greedy output ignores
    # everything but the last token and a broken prompt cache would go unnoticed by the tests.
    from mlx.utils import tree_flatten, tree_unflatten

    params: list[tuple[str, Any]] = []
    value: Any
    for name, value in sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0]):
        if name.endswith("norm.weight"):
            params.append((name, mx.ones(value.shape, dtype=mx.float32)))
        else:
            params.append((name, mx.random.normal(value.shape, dtype=mx.float32) * std))
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    save_model(out, model, donate_model=True)
    save_config(config, config_path=out / "config.json")
    # generation_config lets mlx-lm/transformers agree on the stop token
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random MLX llama model + tokenizer.")
    parser.add_argument("out", nargs="?", default=".cache/models/tiny-mlx")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_mlx_model(args.out, layers=args.layers, hidden=args.hidden, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
