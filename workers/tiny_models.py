"""Deterministic tiny random-weight llama GGUF models for tests, demos and benchmarks.

No model can be downloaded in CI, so tests generate a real GGUF (real tokenizer, ChatML template,
random weights) in a few milliseconds. The same arguments always give the same bytes.
Facts behind the recipe: the shared notes "tiny-models.md".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Common English words; every prefix of "▁word" is added too, because llama.cpp's SPM tokenizer
# only merges a bigram when the concatenation is itself in the vocabulary.
WORDS = (
    "the be to of and a in that have it for not on with he as you do at this but his by from they we say her "
    "she or an will my one all would there their what so up out if about who get which go me when make can "
    "like time no just him know take people into year your good some could them see other than then now look "
    "only come its over think also back after use two how our work first well way even new want because any "
    "these give day most us is are was were has had been hello world user assistant system tool call name "
    "arguments json true false null weather city answer question please thanks yes model test cache prompt "
    "token text write story short long code function value number list data file help sure here"
).split()

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Template with tool support: tools are listed in the system turn, as Qwen/Hermes-style templates do.
CHATML_TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Answer a call as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n{% endif %}'
    + CHATML_TEMPLATE
)

CONTROL_TOKENS = ("<s>", "</s>", "<|im_start|>", "<|im_end|>")

# gguf token types
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of the SentencePiece-style vocabulary (deterministic order)."""
    tokens: list[str] = ["<unk>"]
    types: list[int] = [_UNKNOWN]
    tokens += CONTROL_TOKENS
    types += [_CONTROL] * len(CONTROL_TOKENS)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    seen = set(tokens)
    pieces: list[str] = ["▁"] + [chr(c) for c in range(33, 127)]
    for word in WORDS:
        piece = "▁" + word
        pieces += [piece[:i] for i in range(2, len(piece) + 1)]
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(_NORMAL)
    # Negative rank: longer word pieces come later, so a lower score only breaks ties among merges.
    scores = [0.0] * (len(CONTROL_TOKENS) + 257) + [-float(i) for i in range(len(tokens) - len(CONTROL_TOKENS) - 257)]
    return tokens, scores, types


def write_tiny_gguf(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    ff: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    context_length: int = 4096,
    seed: int = 0,
    vocab: str = "spm",
    zero_special_rows: bool = False,
    tools_template: bool = True,
    with_template: bool = True,
    sampling: dict[str, float] | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny llama GGUF and return its path.

    ``zero_special_rows`` zeroes the output rows of byte-fallback and control tokens: their logit is
    then 0 while real pieces get random values, so greedy decoding never picks them in practice,
    never stops early and never emits incomplete UTF-8 (what a benchmark needs: every run reaches
    max_tokens). ``sampling`` writes the author's sampling defaults (general.sampling.*: temp, top_p,
    top_k, min_p, penalty_repeat), as recent conversions carry them. ``chat_template`` replaces the
    ChatML one (e.g. a template in another tool-call family's syntax).
    """
    import gguf  # test/dev dependency only: the worker never needs it

    if vocab != "spm":
        raise ValueError(f"unsupported vocab {vocab!r}: only 'spm' is built")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = spm_vocab()
    n_vocab = len(tokens)
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("acore-tiny")
    w.add_context_length(context_length)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(tokens.index("<s>"))
    # eos = <|im_end|>, so chat generation stops at the end of the assistant turn
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("</s>"))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    for key, value in (sampling or {}).items():
        getattr(w, f"add_sampling_{key}")(int(value) if key == "top_k" else float(value))
    if with_template:  # False: an old-style conversion without one (tests the fallback)
        w.add_chat_template(chat_template or (CHATML_TOOLS_TEMPLATE if tools_template else CHATML_TEMPLATE))

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(hidden, dtype=np.float32)
    w.add_tensor("token_embd.weight", normal(n_vocab, hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", normal(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal(hidden, ff))
    w.add_tensor("output_norm.weight", ones)
    output = normal(n_vocab, hidden)
    if zero_special_rows:
        special = [i for i, t in enumerate(types) if t != _NORMAL]
        # A zero row gives logit 0; the largest of ~400 random-sign normal logits is positive in
        # practice, so greedy decoding picks a normal piece (checked by the benchmark's token count).
        output[special] = 0.0
    w.add_tensor("output.weight", output)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BENCH = {"layers": 4, "hidden": 256, "ff": 1024, "heads": 8, "kv_heads": 4, "zero_special_rows": True}


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="make-tiny-gguf", description="Write a deterministic tiny random llama GGUF.")
    ap.add_argument("out", nargs="?", default=None, help="output path (default .cache/models/tiny.gguf)")
    ap.add_argument("--bench", action="store_true",
                    help="the 4-layer hidden-256 benchmark variant with zeroed special rows (tiny-bench.gguf)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context-length", type=int, default=4096)
    args = ap.parse_args(argv)
    out = args.out or (".cache/models/tiny-bench.gguf" if args.bench else ".cache/models/tiny.gguf")
    kw = dict(BENCH) if args.bench else {}
    path = write_tiny_gguf(out, seed=args.seed, context_length=args.context_length, **kw)  # type: ignore[arg-type]
    print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
