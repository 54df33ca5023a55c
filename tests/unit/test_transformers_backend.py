"""The transformers backend in-process, on a tiny random llama written by workers/transformers_tiny.py.

Its text is gibberish: outputs are compared with transformers' own ``generate`` and with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from protocol.messages import ErrorCode, FinishReason, Generate, SamplingParams, Tokenize
from workers.backend import Delta, GenerationJob, GenerationResult, WorkerError
from workers.transformers_backend import TransformersBackend
from workers.transformers_tiny import write_tiny_transformers_model

SYSTEM = "You are a helpful assistant. Please write a short story about a cat and a dog. " * 6
CHAT: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello world"}]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    directory = write_tiny_transformers_model(tmp_path_factory.mktemp("tf") / "tiny")
    engine = TransformersBackend(str(directory), "tiny", {"threads": 1})
    engine.load()
    return engine


def run(backend: TransformersBackend, messages: list[dict[str, Any]] = CHAT,
        cancelled: Callable[[], bool] = lambda: False, tools: list[dict[str, Any]] | None = None,
        **params: Any) -> tuple[list[Delta], GenerationResult]:
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    deltas: list[Delta] = []
    request = Generate(request_id="r", messages=messages, params=SamplingParams(**params), tools=tools or [])
    result = backend.generate(request, deltas.append, cancelled)
    return deltas, result


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def test_greedy_stream_matches_transformers_generate(backend: TransformersBackend) -> None:
    deltas, result = run(backend, max_tokens=32)
    assert result.finish_reason == FinishReason.LENGTH and result.usage.completion_tokens == 32
    assert len([d for d in deltas if d.text]) > 1  # streamed, not one block
    prompt = backend._encode(backend._template(CHAT, None))
    reference = backend._model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    assert text(deltas) == backend._tokenizer.decode(reference[0, len(prompt):], skip_special_tokens=True)
    assert result.usage.prompt_tokens == len(prompt) == backend.count_tokens(Tokenize(request_id="t", messages=CHAT))


def test_the_previous_prompt_prefix_is_reused(backend: TransformersBackend) -> None:
    first, r1 = run(backend)
    again, r2 = run(backend)
    assert r2.usage.cached_tokens == r1.usage.prompt_tokens - 1 and text(again) == text(first)
    _, other = run(backend, messages=[{"role": "user", "content": "something else entirely"}])
    assert other.usage.cached_tokens < 5
    back, r3 = run(backend)
    assert text(back) == text(first) and r3.usage.cached_tokens < 5  # the detour replaced the cache


def test_stop_string_ends_the_answer_before_it(backend: TransformersBackend) -> None:
    full = text(run(backend, max_tokens=32)[0])
    stop = full[8:12]
    deltas, result = run(backend, max_tokens=32, stop=[stop])
    assert result.finish_reason == FinishReason.STOP and text(deltas) == full[: full.index(stop)]


def test_abort_stops_within_one_token(backend: TransformersBackend) -> None:
    emitted: list[int] = []

    def cancelled() -> bool:
        return len(emitted) >= 3

    deltas: list[Delta] = []

    def emit(delta: Delta) -> None:
        deltas.append(delta)
        emitted.append(1)

    request = Generate(request_id="r", messages=CHAT, params=SamplingParams(max_tokens=200, temperature=0.0))
    result = backend.generate(request, emit, cancelled)
    assert result.finish_reason == FinishReason.ABORTED and result.usage.completion_tokens == 3


def test_sampling_parameters_and_seed(backend: TransformersBackend) -> None:
    sampled = {"temperature": 0.9, "top_p": 0.9, "top_k": 50, "min_p": 0.02, "presence_penalty": 0.5,
               "frequency_penalty": 0.3, "repeat_penalty": 1.1, "max_tokens": 32}
    a = text(run(backend, seed=7, **sampled)[0])
    assert a == text(run(backend, seed=7, **sampled)[0])
    assert a != text(run(backend, seed=8, **sampled)[0])
    token = backend._tokenizer.encode(" the")[0]
    forced, _ = run(backend, max_tokens=5, logit_bias={str(token): 100.0})
    assert text(forced) == backend._tokenizer.decode([token]) * 5
    with pytest.raises(WorkerError) as err:
        run(backend, logit_bias={"not-a-token": 1.0})
    assert err.value.code == ErrorCode.BAD_REQUEST and err.value.param == "logit_bias"


def test_tools_are_rendered_by_the_template(backend: TransformersBackend) -> None:
    _, plain = run(backend, max_tokens=1)
    _, with_tools = run(backend, max_tokens=1, tools=TOOLS)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens


def test_context_overflow_is_a_clear_error(tmp_path: Path, backend: TransformersBackend) -> None:
    small = TransformersBackend(backend.model, "small", {"n_ctx": 32})
    small.load()
    assert small.info().context_length == 32
    with pytest.raises(WorkerError) as err:
        run(small)
    assert err.value.code == ErrorCode.CONTEXT_OVERFLOW


def test_a_tool_call_in_the_output_becomes_tool_calls(backend: TransformersBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's text goes through the shared tool-call parser (Hermes syntax for a ChatML template).
    The random model cannot write a call itself: its sampler is replaced by a script of tokens."""
    script = [*backend._tokenizer.encode('<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'),
              next(iter(backend._eos))]
    monkeypatch.setattr(backend, "_next_token", lambda *_args: script.pop(0))
    deltas, result = run(backend, tools=TOOLS, max_tokens=100)
    calls = [c for d in deltas for c in d.tool_calls]
    assert result.finish_reason == FinishReason.TOOL_CALLS and text(deltas) == ""
    assert calls[0]["function"]["name"] == "weather"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city": "Paris"}'


# ------------------------------------------------------------ several requests decoded together

PROMPTS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello world"}],
    CHAT,  # the longest: the others are left-padded to it
    [{"role": "user", "content": "something else entirely, a longer question about cats"}],
]


@dataclass
class Row:
    """One request of a batch: its job, what it streamed, and its answer (in the order answers came)."""

    job: GenerationJob
    deltas: list[Delta]
    answers: list[GenerationResult | Exception]

    @property
    def text(self) -> str:
        return text(self.deltas)


def row(index: int, answered: list[int] | None = None, **params: Any) -> Row:
    params.setdefault("temperature", 0.0)
    answers: list[GenerationResult | Exception] = []

    def reply(outcome: GenerationResult | Exception) -> None:
        answers.append(outcome)
        if answered is not None:
            answered.append(index)

    deltas: list[Delta] = []
    request = Generate(request_id=f"row{index}", messages=PROMPTS[index], params=SamplingParams(**params))
    return Row(GenerationJob(request, deltas.append, lambda: False, reply), deltas, answers)


def alone(backend: TransformersBackend, index: int, **params: Any) -> tuple[str, GenerationResult]:
    one = row(index, **params)
    result = backend.generate(one.job.request, one.job.emit, one.job.cancelled)
    return one.text, result


def batch(backend: TransformersBackend, rows: list[Row]) -> list[GenerationResult]:
    backend.generate_batch([one.job for one in rows])
    assert all(len(one.answers) == 1 for one in rows)  # each answered once
    results = [one.answers[0] for one in rows]
    assert all(isinstance(result, GenerationResult) for result in results), results
    return results  # type: ignore[return-value]


def same_answer(result: GenerationResult, reference: GenerationResult) -> bool:
    return (result.finish_reason, result.usage.prompt_tokens, result.usage.completion_tokens) == \
        (reference.finish_reason, reference.usage.prompt_tokens, reference.usage.completion_tokens)


def test_a_batch_gives_each_request_its_answer_alone(backend: TransformersBackend) -> None:
    limits = [8, 30, 17]
    references = [alone(backend, i, max_tokens=n) for i, n in enumerate(limits)]
    answered: list[int] = []
    rows = [row(i, answered, max_tokens=n) for i, n in enumerate(limits)]
    results = batch(backend, rows)
    for one, result, (reference_text, reference) in zip(rows, results, references, strict=True):
        assert one.text == reference_text and same_answer(result, reference)
        assert len([d for d in one.deltas if d.text]) > 1  # each row streamed, not one block at the end
        # the batch evaluates its prompts in full: the prefix cache the last request left is not used
        assert result.usage.cached_tokens == 0 and result.finish_reason == FinishReason.LENGTH
    assert answered == [0, 2, 1]  # each answered as it ended, not when the longest did
    assert backend.info().max_batch == backend.info().max_concurrency == 8  # the default
    assert TransformersBackend(backend.model, "t", {"max_batch": 3}).info().max_concurrency == 3


def test_a_stop_string_or_eos_ends_only_its_row(backend: TransformersBackend) -> None:
    full = [alone(backend, i, max_tokens=30) for i in range(3)]
    stop = full[0][0][6:10]
    eos = str(next(iter(backend._eos)))
    rows = [row(0, max_tokens=30, stop=[stop]), row(1, max_tokens=30, logit_bias={eos: 100.0}), row(2, max_tokens=30)]
    stopped, ended, untouched = batch(backend, rows)
    assert stopped.finish_reason == FinishReason.STOP and stopped.stop_sequence == stop
    assert rows[0].text == full[0][0][: full[0][0].index(stop)]
    assert ended.finish_reason == FinishReason.STOP and ended.usage.completion_tokens == 0  # EOS at once
    assert rows[2].text == full[2][0] and same_answer(untouched, full[2][1])


def test_a_cancelled_row_ends_alone_and_the_others_complete(backend: TransformersBackend) -> None:
    references = [alone(backend, i, max_tokens=24) for i in range(3)]
    rows = [row(0, max_tokens=24), row(1, max_tokens=200), row(2, max_tokens=24)]
    emitted = rows[1].deltas
    rows[1].job.cancelled = lambda: len(emitted) >= 3  # the client goes away after its third token
    first, aborted, last = batch(backend, rows)
    assert aborted.finish_reason == FinishReason.ABORTED and aborted.usage.completion_tokens == 3
    assert rows[1].text == references[1][0][: len(rows[1].text)]
    for index, result in ((0, first), (2, last)):
        assert rows[index].text == references[index][0] and same_answer(result, references[index][1])


def test_each_row_samples_with_its_own_parameters_and_seed(backend: TransformersBackend) -> None:
    sampled = {"temperature": 0.9, "top_p": 0.9, "top_k": 50, "min_p": 0.02, "presence_penalty": 0.5,
               "frequency_penalty": 0.3, "repeat_penalty": 1.1, "max_tokens": 24}

    def run_batch() -> list[str]:
        rows = [row(0, seed=7, **sampled), row(1, max_tokens=24), row(2, seed=8, **sampled)]
        batch(backend, rows)
        return [one.text for one in rows]

    first = run_batch()
    assert run_batch() == first  # seeded rows reproduce
    assert first[0] == alone(backend, 0, seed=7, **sampled)[0]  # and sample as they do alone
    assert first[2] == alone(backend, 2, seed=8, **sampled)[0]
    assert first[1] == alone(backend, 1, max_tokens=24)[0]
    assert first[2] != alone(backend, 2, seed=9, **sampled)[0]


def test_a_request_that_fails_validation_fails_alone(backend: TransformersBackend) -> None:
    references = [alone(backend, i, max_tokens=12) for i in (1, 2)]
    rows = [row(0, max_tokens=12, logit_bias={"not-a-token": 1.0}), row(1, max_tokens=12), row(0, max_tokens=0),
            row(2, max_tokens=12)]
    backend.generate_batch([one.job for one in rows])
    (refused,), (served,), (too_short,), (also_served,) = (one.answers for one in rows)
    assert isinstance(refused, WorkerError) and refused.param == "logit_bias"
    assert isinstance(too_short, WorkerError) and too_short.param == "max_tokens"
    for (reference_text, reference), result, one in zip(references, (served, also_served), (rows[1], rows[3]),
                                                        strict=True):
        assert isinstance(result, GenerationResult) and same_answer(result, reference)
        assert one.text == reference_text and result.usage.cached_tokens == 0  # decoded as a batch of 2
