"""A logits processor that holds an MLX generation to a grammar (tool_choice required / named).

llguidance computes, before each token, the set of tokens the grammar allows (a bitmask over the
vocabulary, from the model's own Hugging Face tokenizer); the processor sets every other logit
to -inf. mlx-lm calls processors with the tokens so far and the next token's logits: the token
sampled last step is committed to the matcher first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.messages import ErrorCode
from workers.backend import WorkerError


class GrammarLogits:
    def __init__(self, hf_tokenizer: Any, lark: str) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.lark = lark
        self.matcher: Any = None
        self.allowed: Any = None

    def _start(self, n_vocab: int) -> None:
        import llguidance.hf
        from llguidance import LLMatcher

        tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=n_vocab)
        self.matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(self.lark), log_level=0)
        if self.matcher.is_error():
            raise WorkerError(ErrorCode.BAD_REQUEST, f"cannot constrain the tool call: {self.matcher.get_error()}",
                              param="tools")

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        n_vocab = int(logits.shape[-1])
        if self.matcher is None:
            self._start(n_vocab)
        elif len(tokens):
            self.matcher.consume_token(int(tokens[-1]))  # the token sampled from the previous mask
        if self.matcher.is_error():
            return logits  # past the grammar's end (the engine stops on EOS): nothing left to hold
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:n_vocab].astype(bool)
        return mx.where(mx.array(allowed), logits, -float("inf"))
