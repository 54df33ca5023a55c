"""A tiny random llama in transformers' format (``save_pretrained``), for tests and benchmarks.

Same tokenizer and ChatML template as the tiny MLX model (workers/mlx_tiny.py: a byte-level BPE
trained in-process), a ``LlamaForCausalLM`` with random weights drawn from a fixed seed, saved as
config.json + model.safetensors + tokenizer files: what a Hub repo of a real model holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.mlx_tiny import CHATML_TEMPLATE, _train_tokenizer


def write_tiny_transformers_model(path: str | Path, *, layers: int = 2, hidden: int = 64, seed: int = 0,
                                  vocab_size: int = 400, context_length: int = 4096, std: float = 0.1) -> Path:
    """Write the model into ``path`` (created) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer(vocab_size), bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out))
    eos_id: int = fast.convert_tokens_to_ids("<|im_end|>")  # type: ignore[assignment]
    heads = max(1, hidden // 16)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=context_length, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, eos_token_id=eos_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # std 0.1 rather than 0.02 (as mlx_tiny): attention then moves the output, so a broken prefix
    # cache changes greedy text and the tests notice
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)
    model.generation_config.eos_token_id = eos_id
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random transformers llama model + tokenizer.")
    parser.add_argument("out", nargs="?", default=".cache/models/tiny-transformers")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args(argv)
    print(write_tiny_transformers_model(args.out, layers=args.layers, hidden=args.hidden))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
