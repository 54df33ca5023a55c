"""LocalProvider: the Provider interface over the worker pool (llamacpp/, mlx/, huggingface/).

It sends the canonical request's Generate (ChatRequest.to_generate) to a worker, streams
Chunk frames back as chat.completion.chunk objects, and answers non-streaming requests
with the collected stream (providers/collect.py). When the consumer stops early (client
gone), the request is aborted in the worker and its slot is freed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.ops.stats import current, note_retry
from gateway.pool.client import WorkerPool
from gateway.pool.lease import Lease, Reply
from gateway.pool.media import local_media
from gateway.pool.scheduler import RequestInfo, WorkerState
from gateway.providers.base import (
    Capabilities,
    ChatCall,
    EmbedCall,
    EmbedResult,
    ModelInfo,
    ModelType,
    ProviderState,
    ProviderStatus,
    Unload,
)
from gateway.providers.collect import complete_from_stream
from gateway.providers.media import MediaCall, MediaReply
from protocol.codec import MalformedFrame, frame_to_vectors
from protocol.local import listed_under
from protocol.messages import Capabilities as WorkerCapabilities
from protocol.messages import Chunk, Embed, ErrorCode, Final, Generate, Loading, Tokenize, Usage
from protocol.messages import Unload as UnloadMessage

# How often a request whose worker died before answering is sent to another worker.
MAX_FAILOVERS = 2
# The type a configured model is listed with before its worker said what it does (Ready).
ENGINE_TYPES = {"sentence-transformers": ModelType.EMBEDDING, "whisper": ModelType.AUDIO_TRANSCRIPTION,
                "tts": ModelType.AUDIO_SPEECH, "diffusers": ModelType.IMAGE_GENERATION}


def model_type(caps: WorkerCapabilities) -> ModelType:
    """What /v1/models lists a worker's model as, by what its Ready says it does."""
    if caps.chat:
        return ModelType.TEXT
    if caps.transcription:
        return ModelType.AUDIO_TRANSCRIPTION
    if caps.speech:
        return ModelType.AUDIO_SPEECH
    if caps.image_generation:
        return ModelType.IMAGE_GENERATION
    return ModelType.EMBEDDING if caps.embeddings else ModelType.TEXT


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def progress(message: Loading) -> dict[str, Any]:
    """A download's progress as /providers and /v1/models show it (bytes, percent, rate)."""
    out: dict[str, Any] = {"done_bytes": message.done_bytes, "total_bytes": message.total_bytes,
                           "rate_bytes_per_s": round(message.rate_bytes_per_s)}
    if message.total_bytes:
        out["percent"] = round(100 * message.done_bytes / message.total_bytes, 1)
    if message.source:
        out["source"] = message.source
    return out


def _merged_delta(chunks: list[Chunk]) -> dict[str, Any]:
    """One OpenAI delta for consecutive worker Chunks (text and reasoning joined, tool-call fragments of
    the same call merged, a new call's first fragment given an id if it has none)."""
    if len(chunks) == 1:  # the common case on a quiet gateway: no joining to do
        only = chunks[0]
        text, reasoning, fragments = only.text, only.reasoning, list(only.tool_calls)
    else:
        text = "".join(c.text for c in chunks)
        reasoning = "".join(c.reasoning for c in chunks)
        fragments = [f for c in chunks for f in c.tool_calls]
    delta: dict[str, Any] = {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if text:
        delta["content"] = text
    if fragments:
        calls: list[dict[str, Any]] = []
        for fragment in fragments:
            function = fragment.get("function") or {}
            last = calls[-1] if calls else None
            if last is not None and last.get("index") == fragment.get("index") and not function.get("name"):
                last_function = last.setdefault("function", {})
                last_function["arguments"] = last_function.get("arguments", "") + (function.get("arguments") or "")
                continue
            if function.get("name") and not fragment.get("id"):
                fragment = {**fragment, "id": f"call_{fragment.get('index', 0)}_{secrets.token_hex(6)}"}
            calls.append({**fragment, "function": dict(function)} if function else dict(fragment))
        delta["tool_calls"] = calls
    return delta


class LocalProvider:
    """Provider over local workers. Whether a model can chat, embed or see is its worker's to say
    (Ready.capabilities, checked per request); the provider offers every door to them."""

    capabilities = Capabilities(vision=False, embeddings=True, prompt_cache=True, unload=Unload.FREE,
                                live_status=True, audio_transcription=True, audio_speech=True,
                                image_generation=True, count_tokens=True)

    def __init__(self, name: str, pool: WorkerPool, config: GatewayConfig) -> None:
        self.name = name
        self.pool = pool
        self._limits = config.limits

    # ------------------------------------------------------------------ plumbing

    def _request_id(self, request_id: str) -> str:
        # Client ids (x-request-id) may repeat across concurrent requests; the suffix keeps routing unique.
        return f"{request_id}.{secrets.token_hex(3)}"

    def _check_capability(self, model: str, want: str) -> None:
        workers = [w for w in self.pool.scheduler.check_known(self.name, model)]
        if not workers:
            return  # a supervised worker is still starting; it will say if it cannot do this
        caps = workers[-1].ready.capabilities
        if want == "chat" and not caps.chat:
            kind = model_type(caps).value  # text-embedding, audio-speech, ...
            raise bad_request(f"The model '{self.name}/{model}' is a {kind} model: it cannot chat.", param="model")
        if want == "embeddings" and not caps.embeddings:
            raise bad_request(f"The model '{self.name}/{model}' cannot create embeddings.", param="model")

    async def _lease(self, model: str, request_id: str, generate: Generate | None = None) -> Lease:
        if generate is None:
            info = RequestInfo(request_id, self.name, model)
        else:
            info = RequestInfo(request_id, self.name, model, generate.prompt_cache_key, generate.messages,
                               generate.tools)
        return await self.pool.lease(info, self._limits.first_byte_timeout_s)

    def _timeout(self, call: ChatCall) -> float:
        if call.timeout_s and call.timeout_s > 0:
            return float(call.timeout_s)
        return self._limits.stream_idle_timeout_s

    # ------------------------------------------------------------------ chat

    async def _replies(self, call: ChatCall) -> AsyncIterator[list[Chunk | Final]]:
        """The worker's Chunks then its Final, in batches of what arrived together; aborts in the
        worker when closed early."""
        self._check_capability(call.model, "chat")
        request_id = self._request_id(call.request_id)
        interval_ms = self._limits.stream_interval_ms
        message = call.request.to_generate(request_id, interval_ms)
        timeout = self._timeout(call)
        # a non-streaming answer is collected whole: no reason to hold its batches back
        interval = interval_ms / 1000 if call.stream else 0.0
        stats = current()
        clock = time.perf_counter
        for attempt in range(MAX_FAILOVERS + 1):
            started = clock()
            lease = await self._lease(call.model, request_id, message)
            if stats is not None:  # waiting for a free worker slot is waiting on the workers
                stats.upstream_s += clock() - started
            answered = False
            async with lease:
                await lease.send(message)
                while True:
                    started = clock()
                    try:
                        batch = await lease.next_batch(timeout, interval)
                    except GatewayError as exc:
                        # Nothing reached the client yet: the request can run again on another worker.
                        if exc.code == ErrorCode.WORKER_DEAD and not answered and attempt < MAX_FAILOVERS:
                            note_retry("worker_failover")
                            break
                        raise
                    finally:
                        if stats is not None:
                            stats.upstream_s += clock() - started
                    answered = True
                    messages = [reply.message for reply in batch]
                    yield messages  # type: ignore[misc]
                    if isinstance(messages[-1], Final):
                        return

    async def _chunks(self, call: ChatCall, with_usage: bool) -> AsyncIterator[dict[str, Any]]:
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": call.requested_model, "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        replies = self._replies(call)
        generated = 0  # tokens the worker reported so far: the usage of a stream the client leaves early
        try:
            first = True
            async for batch in replies:
                pieces = [m for m in batch if isinstance(m, Chunk)]
                for piece in pieces:
                    generated += piece.n_tokens
                    if piece.prompt_tokens and call.usage is None:  # before the Final: the Messages door's message_start
                        call.usage = {"prompt_tokens": piece.prompt_tokens,
                                      "prompt_tokens_details": {"cached_tokens": piece.cached_tokens}}
                if first:
                    # Sent only once the worker answered, so an early error keeps its HTTP status.
                    first = False
                    yield chunk({"role": "assistant", "content": ""})
                # Tokens that arrived together go out as one event: one SSE frame, not one per token.
                delta = _merged_delta(pieces)
                if delta:
                    yield chunk(delta)
                final = batch[-1]
                if isinstance(final, Final):
                    call.usage = usage_json(final.usage)  # counted even when the client asked for no usage
                    last = chunk({}, str(final.finish_reason))
                    if final.stop_sequence:  # which stop string ended it, as vLLM says it
                        last["choices"][0]["stop_reason"] = final.stop_sequence
                    yield last
                    if with_usage:
                        yield {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                               "model": call.requested_model, "system_fingerprint": None, "choices": [],
                               "usage": usage_json(final.usage)}
        finally:
            await replies.aclose()  # type: ignore[attr-defined]
            if generated and (call.usage is None or "completion_tokens" not in call.usage):
                call.usage = {**(call.usage or {}), "completion_tokens": generated}  # no Final: the output so far

    def chat_stream(self, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(call, call.include_usage)

    async def chat(self, call: ChatCall) -> dict[str, Any]:
        return await complete_from_stream(self._chunks(call, True))

    # ------------------------------------------------------------------ media (whisper/, tts/, diffusers/)

    def media(self, call: MediaCall) -> AbstractAsyncContextManager[MediaReply]:
        return local_media(self, call)

    def check_media(self, model: str, want: str, route: str) -> None:
        """400 when the model's workers cannot do ``want`` (a Ready.capabilities field)."""
        workers = list(self.pool.scheduler.check_known(self.name, model))
        if workers and not getattr(workers[-1].ready.capabilities, want):
            raise bad_request(f"The model '{self.name}/{model}' cannot serve {route}.", param="model",
                              code="model_not_supported")

    def media_request_id(self, request_id: str) -> str:
        return self._request_id(request_id)

    @property
    def idle_timeout_s(self) -> float:
        return self._limits.stream_idle_timeout_s

    async def media_lease(self, model: str, request_id: str) -> Lease:
        return await self._lease(model, request_id)

    async def count_tokens(self, call: ChatCall) -> int:
        """Prompt tokens with the model's own chat template and tokenizer: a Tokenize to one of its workers."""
        self._check_capability(call.model, "chat")
        request_id = self._request_id(call.request_id)
        message = Tokenize(request_id=request_id, messages=call.request.messages, tools=list(call.request.tools or []))
        async with await self._lease(call.model, request_id) as lease:
            await lease.send(message)
            reply = await lease.next(self._timeout(call))
        if not isinstance(reply.message, Final):
            raise GatewayError(502, "The worker ended the request without an answer.", type="server_error")
        return reply.message.usage.prompt_tokens

    # ------------------------------------------------------------------ embeddings

    async def embed(self, call: EmbedCall) -> EmbedResult:
        self._check_capability(call.model, "embeddings")
        request_id = self._request_id(call.request_id)
        message = Embed(request_id=request_id, texts=call.texts, dimensions=call.dimensions, truncate=call.truncate)
        reply: Reply | None = None
        stats = current()
        started = time.perf_counter()
        for attempt in range(MAX_FAILOVERS + 1):
            async with await self._lease(call.model, request_id) as lease:
                await lease.send(message)
                try:
                    # An embedding sends nothing until it is done: allow time in proportion to its size.
                    reply = await lease.next(max(self._limits.stream_idle_timeout_s, 0.25 * len(call.texts)))
                except GatewayError as exc:
                    if exc.code == ErrorCode.WORKER_DEAD and attempt < MAX_FAILOVERS:
                        note_retry("worker_failover")
                        continue  # embeddings are idempotent: ask another worker
                    raise
            break
        if stats is not None:
            stats.upstream_s += time.perf_counter() - started
        if reply is None or not isinstance(reply.message, Final):
            raise GatewayError(502, "The worker ended the request without an answer.", type="server_error")
        final = reply.message
        if not reply.frames:
            raise GatewayError(502, "The worker sent no vectors.", type="server_error")
        try:
            vectors = frame_to_vectors(reply.frames[0], final.count, final.dims)
        except MalformedFrame as exc:
            raise GatewayError(502, f"The worker sent bad vectors: {exc}", type="server_error") from None
        return EmbedResult(vectors=vectors, prompt_tokens=sum(final.token_counts) or final.usage.prompt_tokens)

    # ------------------------------------------------------------------ discovery and control

    def _workers(self) -> list[WorkerState]:
        return [w for w in self.pool.scheduler.workers.values() if listed_under(w.ready.provider) == self.name]

    async def status(self) -> ProviderStatus:
        workers = self._workers()
        models: dict[str, list[WorkerState]] = {}
        for worker in workers:
            if worker.alive:
                models.setdefault(worker.ready.model, []).append(worker)
        infos = []
        for model, group in sorted(models.items()):
            caps = group[0].ready.capabilities
            kind = model_type(caps)
            extra: dict[str, Any] = {
                "workers": len(group),
                "active": sum(len(w.requests) for w in group),
                "waiting": self.pool.scheduler.waiting(self.name, model),
                "context_length": group[0].ready.context_length,
            }
            if group[0].ready.embedding_dimensions:
                extra["dimensions"] = group[0].ready.embedding_dimensions
            extra["state"] = "ready"
            infos.append(ModelInfo(id=model, type=kind, owned_by="local", extra=extra))
        # Workers downloading or loading their model (Loading, before their Ready), with its progress.
        loading = [m for m, _ in self.pool.loading.values() if listed_under(m.provider) == self.name]
        for message in loading:
            if message.model not in models and all(info.id != message.model for info in infos):
                kind = ModelType.EMBEDDING if message.provider == "sentence-transformers" else ModelType.TEXT
                infos.append(ModelInfo(id=message.model, type=kind, owned_by="local",
                                       extra={"workers": 0, "state": message.state, "progress": progress(message)}))
        # Configured models without a live worker yet are listed too, with what keeps them (a client
        # asking now waits in the queue while one loads; a model that cannot load fails fast).
        for engine, name in sorted(self.pool.expected_models):
            if name in models or listed_under(engine) != self.name or any(info.id == name for info in infos):
                continue
            failed = self.pool.scheduler.failure(name)
            pending: dict[str, Any] = {"workers": 0, "state": "failed" if failed else "loading"}
            if failed:
                pending["error"] = failed
            infos.append(ModelInfo(id=name, type=ENGINE_TYPES.get(engine, ModelType.TEXT), owned_by="local",
                                   extra=pending))
        extra_status = {"workers": [w.describe() for w in workers], **self.pool.describe()}
        if loading:
            extra_status["loading"] = [{"id": m.worker_id, "model": m.model, "provider": m.provider, "pid": m.pid,
                                        "host": m.host or None, "state": m.state, "progress": progress(m)}
                                       for m in loading]
        if not workers and not infos:
            hint = f"no local worker connected; start one with: acore-worker --connect {self.pool.endpoint} ..."
            return ProviderStatus(ProviderState.NOT_CONFIGURED, (), detail=hint, extra=extra_status)
        return ProviderStatus(ProviderState.AVAILABLE, tuple(infos), extra=extra_status)

    async def unload(self, model: str, base_url: str | None) -> None:
        """Free the model in its workers; each reloads it on its next request (in order, after queued work)."""
        for worker in self.pool.live_workers():
            if worker.serves(self.name, model):
                await self.pool.send(worker, UnloadMessage(request_id=""))
