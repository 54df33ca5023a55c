"""Decoding for the transformers backend: one request's state, and several requests in one ``generate``.

``RowGeneration`` is everything one chat request decodes with: its prompt tokens, its sampling
(workers/chat.py ``Sampling``, its own seeded generator), its detokenizer and ``ChatOutput``
(stop strings, reasoning, tool calls), its limits and its ``emit``/``cancelled``. The backend's
single-request loop (workers/transformers_backend.py) and the batched path below drive the same
object, so a request decodes alike either way.

Batched: ``generate_together`` runs transformers' own ``model.generate`` over the left-padded
prompts (attention mask, so each row keeps its own positions). ``RowSampler`` (a LogitsProcessor)
picks each row's token with that row's own sampling from the row's raw logits and masks every
other token, so greedy ``generate`` takes exactly that token. ``RowStops`` (a StoppingCriteria)
hands each row its new token: EOS, stop strings, max_tokens and aborts end that row alone (it
returns a per-row bool tensor); the other rows go on. The token handling lives in the stopping
criteria rather than a streamer because ``generate`` calls the criteria first with every new token
and the streamer only afterwards: a stop string seen there ends its row in the same step.

Measured on CPU (docs/benchmarks.md): a padded ``generate`` over 4 prompts runs ~3x the tokens/s of
4 one after another, while transformers' continuous batching (``generate_batch``, paged attention)
is slower than sequential there; it is not used. On CUDA ``init_continuous_batching`` may pay off,
but nothing here was measured on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol.messages import FinishReason, Generate, Usage
from workers.backend import Cancelled, Emit, GenerationResult
from workers.chat import ChatOutput, Sampling, finish_reason

# llama.cpp's default window for repeat_penalty (prompt and output alike).
REPEAT_LAST_N = 64

# (logits of one position, sampling, logit bias, recent tokens, token counts, generator) -> token id
TokenChooser = Callable[[Any, Sampling, dict[int, float], list[int], dict[int, int], Any], int]


class TextDecoder(Protocol):
    """Token ids -> text as it becomes final (transformers_backend.IncrementalDecoder)."""

    def add(self, token: int) -> str: ...

    def flush(self) -> str: ...


@dataclass(slots=True)
class RowGeneration:
    """One request's decoding: choose a token from its logits, accept it, and in the end its result."""

    request: Generate
    emit: Emit
    cancelled: Cancelled
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    bias: dict[int, float]
    output: ChatOutput
    decoder: TextDecoder
    eos: frozenset[int]
    choose_token: TokenChooser
    cached_tokens: int = 0  # prompt tokens a reused KV cache already held
    completion: int = 0
    finish: FinishReason = FinishReason.LENGTH
    done: bool = False
    recent: list[int] = field(default_factory=list)  # the repeat_penalty window
    counts: dict[int, int] = field(default_factory=dict)  # output token counts (presence/frequency)
    generator: Any = None  # made on the logits' device (the last GPU under device_map="auto")

    def __post_init__(self) -> None:
        self.recent = self.prompt[-REPEAT_LAST_N:]

    def choose(self, logits: Any) -> int:
        """The next token from this row's logits (one position, vocabulary-sized)."""
        if self.generator is None and self.sampling.seed is not None:
            import torch

            self.generator = torch.Generator(device=logits.device).manual_seed(int(self.sampling.seed) & 0xFFFFFFFFFFFF)
        return self.choose_token(logits, self.sampling, self.bias, self.recent, self.counts, self.generator)

    def accept(self, token: int) -> bool:
        """Take the chosen token (streamed through ``emit``); True when the generation ends with it."""
        if token in self.eos:
            self.finish, self.done = FinishReason.STOP, True
            return True
        if not self.completion:  # the first Delta tells the gateway the prompt's size
            self.output.prompt_tokens, self.output.cached_tokens = len(self.prompt), self.cached_tokens
        self.completion += 1
        self.counts[token] = self.counts.get(token, 0) + 1
        self.recent = [*self.recent[1 - REPEAT_LAST_N:], token]
        self.emit(self.output.feed(self.decoder.add(token)))
        if self.output.stopped:
            self.finish, self.done = FinishReason.STOP, True
        elif self.completion >= self.max_tokens:
            self.done = True
        return self.done

    def abort(self) -> None:
        self.finish, self.done = FinishReason.ABORTED, True

    def result(self) -> GenerationResult:
        """Emit what the detokenizer and the stop-string filter still held; the finish reason and usage."""
        finish = self.finish
        if finish != FinishReason.ABORTED:
            last, called = self.output.finish("" if self.output.stopped else self.decoder.flush())
            if last is not None:
                self.emit(last)
            if self.output.stopped:
                finish = FinishReason.STOP
            finish = finish_reason(finish, called)
        usage = Usage(prompt_tokens=len(self.prompt), completion_tokens=self.completion,
                      cached_tokens=self.cached_tokens)
        return GenerationResult(finish_reason=finish, usage=usage, stop_sequence=self.output.stop_sequence)


# RowSampler and RowStops have the call shapes of transformers' LogitsProcessor and StoppingCriteria,
# which generate() only calls: not subclassing them keeps transformers unimported until load().


class RowSampler:
    """Per-row sampling inside ``generate``: every live row's own choice, everything else masked (a
    finished row gets the pad token: generate keeps feeding it until every row is done)."""

    def __init__(self, rows: list[RowGeneration], pad_token: int) -> None:
        self.rows = rows
        self.pad_token = pad_token

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        tokens = [self.pad_token if row.done else row.choose(scores[i]) for i, row in enumerate(self.rows)]
        chosen = torch.full_like(scores, float("-inf"))
        rows = torch.arange(len(tokens), device=scores.device)
        chosen[rows, torch.tensor(tokens, device=scores.device)] = 0.0
        return chosen


class RowStops:
    """Each row's new token goes to its RowGeneration; True for the rows that have ended (EOS, a stop
    string, max_tokens, or an abort checked after every token, as the single-request loop does).
    A row that ends is handed to ``ended`` at once: its answer does not wait for the other rows."""

    def __init__(self, rows: list[RowGeneration], ended: Callable[[RowGeneration], None]) -> None:
        self.rows = rows
        self.ended = ended
        self.reported: set[int] = set()  # rows already handed to ``ended``

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if not row.done and not row.accept(int(token)) and row.cancelled():
                row.abort()
        self.report()
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def report(self, everyone: bool = False) -> None:
        """Hand the rows that have ended (``everyone``: all rows, generate has returned) to ``ended``."""
        for index, row in enumerate(self.rows):
            if (row.done or everyone) and index not in self.reported:
                self.reported.add(index)
                row.done = True
                self.ended(row)


@contextlib.contextmanager
def _neutral_generation_config(model: Any) -> Iterator[Any]:
    """generate() fills every setting left unset from ``model.generation_config`` (a checkpoint's
    repetition_penalty, suppress_tokens, ...), and those processors would run before RowSampler on the
    raw logits; the rows' own sampling already applies the model's defaults. So: a blank config."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield model.generation_config
    finally:
        model.generation_config = saved


def generate_together(model: Any, rows: list[RowGeneration], pad_token: int, device: Any,
                      ended: Callable[[RowGeneration], None]) -> None:
    """Decode every row in one ``model.generate`` over the left-padded prompts; each row streams through
    its own ``emit`` and is handed to ``ended`` as soon as it ends (``RowGeneration.result`` then gives
    its outcome)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    longest = max(len(row.prompt) for row in rows)
    ids = [[pad_token] * (longest - len(row.prompt)) + row.prompt for row in rows]
    mask = [[0] * (longest - len(row.prompt)) + [1] * len(row.prompt) for row in rows]
    config = GenerationConfig(max_new_tokens=max(row.max_tokens for row in rows), do_sample=False,
                              pad_token_id=pad_token, eos_token_id=None)
    stops = RowStops(rows, ended)
    with torch.inference_mode(), _neutral_generation_config(model):
        model.generate(input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
                       generation_config=config, logits_processor=LogitsProcessorList([RowSampler(rows, pad_token)]),
                       stopping_criteria=StoppingCriteriaList([stops]))
    stops.report(everyone=True)  # rows still open when generate stopped by its own length limit: as they are
