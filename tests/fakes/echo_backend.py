"""A deterministic backend for fault tests (abort, kill -9 mid-stream, queue full).

Enabled only with ACORE_TEST_BACKENDS=1 (``acore-worker --provider echo``). The
model string holds options as ``key=value`` pairs separated by commas:

- ``delay=S``: seconds to sleep before each token (default 0)
- ``tokens=N``: tokens per answer without max_tokens (default 8)
- ``load=S``: seconds load() takes (default 0)

It answers "tok0 tok1 ..." and announces itself as a llamacpp worker, so it is
reached as ``llamacpp/<name>``. A user message "fail" gives a bad_request
error, "crash" an unexpected exception, "slow-start" waits 1.5 s before the
first token (a request in prefill, for fail-over tests). Embeddings are deterministic vectors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from protocol.messages import Capabilities, Embed, ErrorCode, Generate, Usage
from workers.backend import (
    Backend,
    BackendInfo,
    Cancelled,
    Delta,
    EmbedOutcome,
    Emit,
    GenerationResult,
    ModelLoadError,
    WorkerError,
)

DIMS = 8


def parse_options(model: str) -> dict[str, float]:
    options: dict[str, float] = {}
    for part in filter(None, model.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            continue  # a bare word (e.g. a name) carries no option
        try:
            options[key.strip()] = float(value)
        except ValueError:
            raise ModelLoadError(f"echo model option {part!r} is not key=number") from None
    return options


class EchoBackend(Backend):
    provider = "llamacpp"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self.settings = parse_options(model)
        self._loaded = False
        self.loads = 0

    def load(self) -> None:
        time.sleep(self.settings.get("load", 0.0))
        self._loaded = True
        self.loads += 1

    def unload(self) -> None:
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def info(self) -> BackendInfo:
        return BackendInfo(capabilities=Capabilities(chat=True, embeddings=True), context_length=4096,
                           max_concurrency=1, embedding_dimensions=DIMS)

    def generate(self, request: Generate, emit: Emit, cancelled: Cancelled) -> GenerationResult:
        last = request.messages[-1].get("content") if request.messages else ""
        if last == "fail":
            raise WorkerError(ErrorCode.BAD_REQUEST, "the echo model refuses 'fail'", param="messages")
        if last == "crash":
            raise RuntimeError("echo backend crashed on purpose")
        if last == "slow-start":
            for _ in range(30):
                if cancelled():
                    break
                time.sleep(0.05)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request.messages)
        limit = request.params.max_tokens
        count = limit if limit is not None else int(self.settings.get("tokens", 8))
        delay = self.settings.get("delay", 0.0)
        produced = 0
        for index in range(count):
            if cancelled():
                break
            if delay:
                time.sleep(delay)
            emit(Delta(text=f"tok{index}" if index == 0 else f" tok{index}", n_tokens=1,
                       prompt_tokens=prompt_tokens if index == 0 else 0))
            produced += 1
        finish = "length" if limit is not None and produced == limit else "stop"
        return GenerationResult(finish, Usage(prompt_tokens=prompt_tokens, completion_tokens=produced,
                                              cached_tokens=1 if request.prompt_cache_key else 0))

    def embed(self, batch: list[Embed]) -> list[EmbedOutcome]:
        outcomes = []
        for request in batch:
            rows = [[float((len(text) + i) % 7) for i in range(DIMS)] for text in request.texts]
            outcomes.append(EmbedOutcome(np.asarray(rows, dtype=np.float32),
                                         [len(text.split()) for text in request.texts]))
        return outcomes
