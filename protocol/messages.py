"""Messages between the gateway and its workers.

Every message is a frozen msgspec Struct in one tagged union, encoded as
msgpack. Large numeric payloads (embedding vectors) never go inside the
struct: they travel as extra raw frames after it. Nothing here is pickled.

Frame layout on the wire (DEALER side): ``[header, *binary_frames]`` where
``header`` is the msgpack encoding of one message below. The ROUTER side sees
the worker identity as an extra first frame.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

PROTOCOL_VERSION = 1


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    ABORTED = "aborted"


class ErrorCode(enum.StrEnum):
    """Why a worker refused or failed a request; the gateway maps each to HTTP."""

    BAD_REQUEST = "bad_request"  # 400: invalid parameters for this model
    CONTEXT_OVERFLOW = "context_overflow"  # 400: prompt longer than the window
    NOT_SUPPORTED = "not_supported"  # 400/501: the model cannot do this
    NOT_FOUND = "not_found"  # 404: e.g. unknown prompt-cache key
    CONFLICT = "conflict"  # 409: e.g. fork onto an existing key
    TOO_LARGE = "too_large"  # 413: over a budget
    OVERLOADED = "overloaded"  # 429/503: worker queue full
    INTERNAL = "internal"  # 500: backend crashed on this request
    WORKER_DEAD = "worker_dead"  # gateway-side: the worker went away


class Message(msgspec.Struct, frozen=True, tag_field="t", omit_defaults=True, forbid_unknown_fields=False):
    """Base of every worker message (never sent itself)."""


class Capabilities(msgspec.Struct, frozen=True, omit_defaults=True):
    chat: bool = False
    embeddings: bool = False
    vision: bool = False
    tools: bool = False
    prompt_cache: bool = False
    json_schema: bool = False
    transcription: bool = False  # Transcribe (speech-to-text)
    speech: bool = False  # Speak (text-to-speech)
    image_generation: bool = False  # GenerateImage


# ---------------------------------------------------------------- worker -> gateway


class Ready(Message, frozen=True, tag="ready"):
    """A worker announces itself; it gets no work before the gateway has seen this."""

    worker_id: str
    provider: str  # "llamacpp", "mlx", "sentence-transformers"
    model: str  # the name it is served under, e.g. "tiny" -> llamacpp/tiny
    aliases: list[str] = []
    capabilities: Capabilities = Capabilities()
    context_length: int = 0
    max_concurrency: int = 1
    embedding_dimensions: int = 0
    pid: int = 0
    protocol_version: int = PROTOCOL_VERSION
    host: str = ""  # the worker machine's hostname (shown in /providers)


class Heartbeat(Message, frozen=True, tag="hb"):
    """Both directions, once per interval. From a worker it carries its load.

    The gateway numbers its beats (``seq``); a worker answers each at once with ``echo`` set to
    that number, so the gateway measures the round-trip time to every worker."""

    sender: str  # worker id, or the gateway's session id
    active: int = 0
    queued: int = 0
    seq: int = 0
    echo: int = 0


class Goodbye(Message, frozen=True, tag="bye"):
    """A worker that stops cleanly says so, so the gateway drops it at once, not after missed beats."""

    sender: str


class Loading(Message, frozen=True, tag="loading"):
    """Worker -> gateway before its Ready, at least once a heartbeat interval: it is downloading its
    model (``state`` "downloading", bytes so far of ``total_bytes``, 0 when unknown) or loading it
    ("loading"). The gateway shows it in /providers and /v1/models until the worker's Ready."""

    worker_id: str
    provider: str  # the engine, as in Ready
    model: str  # the name it will be served under
    state: str  # "downloading" | "loading"
    source: str = ""  # what is downloaded: the Hub id as given
    done_bytes: int = 0
    total_bytes: int = 0
    rate_bytes_per_s: float = 0.0
    pid: int = 0
    host: str = ""


class Probe(Message, frozen=True, tag="probe"):
    """Gateway -> worker: "I do not know you, say Ready again" (after a gateway restart)."""

    session: str


class Fronts(Message, frozen=True, tag="fronts"):
    """Gateway -> worker, after its Ready: every HTTP front's worker socket (``--processes N``).

    A worker connects to those it has not dialled yet, so every front reaches every worker
    whichever one it was pointed at. tcp:// endpoints on a wildcard address are dialled on the
    host the worker already reached."""

    endpoints: list[str]


class Chunk(Message, frozen=True, tag="chunk"):
    """Incremental output of one generation. Tokens may be coalesced."""

    request_id: str
    text: str = ""
    reasoning: str = ""
    n_tokens: int = 0
    # OpenAI-shaped tool-call deltas: [{"index", "id", "type", "function": {"name", "arguments"}}]
    tool_calls: list[dict[str, Any]] = []
    # On a generation's first Chunk: its prompt's tokens and how many of them the prompt cache held,
    # known before the Final (Anthropic's message_start reports them; a stream left early counts them).
    prompt_tokens: int = 0
    cached_tokens: int = 0


class MediaChunk(Message, frozen=True, tag="media"):
    """Part of a media answer (speech audio as it is synthesised): the bytes follow as one raw frame.

    The first chunk of a request names the content type; a Final ends the request."""

    request_id: str
    content_type: str = ""


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Final(Message, frozen=True, tag="final"):
    request_id: str
    finish_reason: str = FinishReason.STOP
    usage: Usage = Usage()
    stop_sequence: str = ""  # the request's stop string that ended the generation, if one did
    # For embeddings: the vectors follow as one float32 frame of shape (count, dims).
    count: int = 0
    dims: int = 0
    token_counts: list[int] = []
    # For cache operations: a JSON-able result object.
    result: dict[str, Any] = {}


class Error(Message, frozen=True, tag="error"):
    request_id: str
    code: str = ErrorCode.INTERNAL
    message: str = ""
    param: str | None = None


# ---------------------------------------------------------------- gateway -> worker


class SamplingParams(msgspec.Struct, frozen=True, omit_defaults=True):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = []
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    logit_bias: dict[str, float] = {}


class Generate(Message, frozen=True, tag="gen"):
    """A chat generation. Messages are the canonical OpenAI chat messages."""

    request_id: str
    messages: list[dict[str, Any]]
    params: SamplingParams = SamplingParams()
    tools: list[dict[str, Any]] = []
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    thinking: str | None = None
    # After the first Chunk, the worker sends the next no sooner than this after the previous one
    # (tokens in between ride along): one frame per interval, not one per token. 0: as produced.
    stream_interval_ms: float = 0.0


class Embed(Message, frozen=True, tag="embed"):
    request_id: str
    texts: list[str]
    dimensions: int | None = None
    truncate: bool = False


class Abort(Message, frozen=True, tag="abort"):
    """Idempotent: aborting an unknown or finished request is a no-op."""

    request_id: str


class Unload(Message, frozen=True, tag="unload"):
    """Free the model; the worker reloads it on its next request."""

    request_id: str = ""


class CacheOp(Message, frozen=True, tag="cache"):
    """A prompt-cache control operation, run in order with generation on the model thread.

    ``op`` is one of stats, set, update, fork, clear, prepare_modules, match;
    ``args`` carries the AbstractCore request body of that operation.
    """

    request_id: str
    op: str
    args: dict[str, Any] = {}


class Transcribe(Message, frozen=True, tag="transcribe"):
    """Speech-to-text of one audio file, which follows as one raw frame (the uploaded bytes).

    Answered by one Final whose ``result`` is ``{"text", "language", "duration", "segments": [{"id",
    "start", "end", "text"}]}``; the gateway renders the response_format from it."""

    request_id: str
    task: str = "transcribe"  # or "translate" (into English)
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    filename: str = ""


class Speak(Message, frozen=True, tag="speak"):
    """Text-to-speech: MediaChunk frames as the audio is synthesised, then one Final."""

    request_id: str
    input: str
    voice: str | None = None
    speed: float | None = None
    response_format: str = "wav"  # wav | pcm (16-bit mono little-endian, 24 kHz)


class GenerateImage(Message, frozen=True, tag="image"):
    """Image generation (or an edit: the input image, then the mask if ``has_mask``, follow as raw
    frames). Answered by one Final with ``count`` PNG frames."""

    request_id: str
    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    edit: bool = False
    has_mask: bool = False


class Tokenize(Message, frozen=True, tag="tokenize"):
    """Count the prompt tokens of ``messages`` (and ``tools``) as a Generate of them would render them
    (the model's chat template and tokenizer). Answered by one Final whose ``usage.prompt_tokens`` is
    the count (POST /v1/messages/count_tokens)."""

    request_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = []


WorkerMessage = Ready | Heartbeat | Goodbye | Chunk | Final | Error | MediaChunk | Loading
GatewayMessage = Heartbeat | Probe | Fronts | Generate | Embed | Abort | Unload | CacheOp | Transcribe | Speak | GenerateImage | Tokenize
AnyMessage = (Ready | Heartbeat | Goodbye | Probe | Fronts | Chunk | Final | Error | Generate | Embed | Abort | Unload
              | CacheOp | MediaChunk | Transcribe | Speak | GenerateImage | Loading
              | Tokenize)
