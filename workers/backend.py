"""The interface every model backend implements (llama.cpp, MLX, sentence-transformers).

The worker loop (workers/loop.py) owns the sockets and threads; a backend only
sees decoded messages and runs on the model thread. One backend = one module.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.messages import (
    CacheOp,
    Capabilities,
    Embed,
    ErrorCode,
    Generate,
    GenerateImage,
    Speak,
    Tokenize,
    Transcribe,
    Usage,
)


class WorkerError(Exception):
    """A request-level failure with a protocol error code (the worker keeps running)."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class ModelLoadError(Exception):
    """The model cannot be loaded (missing file, wrong format): the worker exits with this message."""


@dataclass(slots=True)
class Delta:
    """Output produced since the last emit (the loop coalesces deltas into Chunk frames)."""

    text: str = ""
    reasoning: str = ""
    n_tokens: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0  # the first Delta of a generation: its prompt's size (Chunk.prompt_tokens)
    cached_tokens: int = 0


Emit = Callable[[Delta], None]
Cancelled = Callable[[], bool]
EmitAudio = Callable[[np.ndarray, int], None]  # (mono samples, float32 or int16; sample rate)


@dataclass(slots=True)
class GenerationResult:
    finish_reason: str
    usage: Usage
    stop_sequence: str = ""  # the stop string that ended it (ChatOutput.stop_sequence)


@dataclass(slots=True)
class GenerationJob:
    """One Generate of a batch (``Backend.generate_batch``): its own output, abort check and answer.

    ``reply`` takes the request's result, or the WorkerError that failed it alone, once, as soon as
    that request ends (a short answer is not held until the batch's longest one ends)."""

    request: Generate
    emit: Emit
    cancelled: Cancelled
    reply: Callable[[GenerationResult | Exception], None]


@dataclass(slots=True)
class EmbedOutcome:
    """One Embed request's result: vectors (count, dims) float32 and per-input token counts, or an error."""

    vectors: np.ndarray | None = None
    token_counts: list[int] = field(default_factory=list)
    error: WorkerError | None = None


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What goes into the Ready message."""

    capabilities: Capabilities
    context_length: int = 0
    max_concurrency: int = 1
    embedding_dimensions: int = 0
    aliases: tuple[str, ...] = ()
    # Most Generate requests the loop hands to generate_batch at once; 1: one generate() at a time.
    max_batch: int = 1


class Backend(abc.ABC):
    """A loaded model. Every method is called on the model thread, one at a time, in arrival order."""

    provider: str = ""

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        self.model = model
        self.name = name
        self.options = options

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model (raise ModelLoadError with a clear message on failure)."""

    def unload(self) -> None:  # noqa: B027 - optional: a backend with nothing to free keeps this
        """Free the model; the loop calls load() again before the next request."""

    @property
    @abc.abstractmethod
    def loaded(self) -> bool: ...

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Capabilities and limits; must be answerable before load() (from metadata/options)."""

    def generate(self, request: Generate, emit: Emit, cancelled: Cancelled) -> GenerationResult:
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot chat")

    def generate_batch(self, jobs: list[GenerationJob]) -> None:
        """Several Generate requests decoded together, each answered through its job's ``reply``. The
        loop calls it only when ``info().max_batch`` > 1, with the requests already waiting; this
        default serves them one after another."""
        for job in jobs:
            try:
                result = self.generate(job.request, job.emit, job.cancelled)
            except WorkerError as exc:
                job.reply(exc)
            else:
                job.reply(result)

    def embed(self, batch: list[Embed]) -> list[EmbedOutcome]:
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot embed")

    def count_tokens(self, request: Tokenize) -> int:
        """Prompt tokens of the messages and tools as ``generate`` would render them."""
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot count chat tokens")

    # Media engines (whisper, tts, diffusers; workers/media_serving.py runs these and answers the gateway).

    def transcribe(self, request: Transcribe, audio: bytes) -> dict[str, Any]:
        """Speech-to-text of an uploaded file: ``{"text", "language", "duration", "segments"}``."""
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot transcribe")

    def speak(self, request: Speak, emit: EmitAudio, cancelled: Cancelled) -> None:
        """Text-to-speech: ``emit(samples, sample_rate)`` for each block as soon as it is synthesised."""
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot speak")

    def generate_images(self, request: GenerateImage, inputs: list[bytes]) -> list[bytes]:
        """``request.n`` PNG images; ``inputs`` holds the image (then the mask) of an edit."""
        raise WorkerError(ErrorCode.NOT_SUPPORTED, f"{self.provider} model {self.name} cannot make images")

    def cache_op(self, op: CacheOp) -> dict[str, Any]:
        """Prompt-cache control; unsupported backends answer the seed's {"supported": false} shape."""
        return {"supported": False, "error": f"{self.provider} backend has no prompt cache"}


def read_json_object(path: Path) -> dict[str, Any]:
    """A model directory's JSON config file as a dict; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# provider name (as on the command line) -> "module:Class", imported only when chosen
BACKENDS: dict[str, str] = {
    "llamacpp": "workers.llamacpp:LlamaCppBackend",
    "mlx": "workers.mlx_backend:MLXBackend",
    "sentence-transformers": "workers.sentence_transformers:SentenceTransformersBackend",
    "whisper": "workers.whisper_backend:WhisperBackend",
    "tts": "workers.tts_backend:TTSBackend",
    "diffusers": "workers.diffusers_backend:DiffusersBackend",
    "transformers": "workers.transformers_backend:TransformersBackend",
}
