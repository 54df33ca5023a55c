"""MLX backend (provider "mlx"): mlx-lm models with a prefix-reusing prompt cache.

Generation drives mlx-lm's ``generate_step`` token by token so the worker can stop, abort and
detokenize between tokens. The prompt cache keeps per-layer KV caches (``make_prompt_cache``) in
the engine-independent store of workers/prompt_cache.py. The client sends the full conversation
each time: we reuse the longest common token prefix of a cached state (``trim_prompt_cache`` cuts
the rest) and evaluate only the remainder, so resent history is never appended twice (the bug in
AbstractCore's MLX provider).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol.messages import CacheOp, Capabilities, ErrorCode, FinishReason, Generate, Tokenize, Usage
from workers.backend import Backend, BackendInfo, Cancelled, Emit, GenerationResult, ModelLoadError, WorkerError
from workers.chat import (
    ChatOutput,
    encode_prompt,
    finish_reason,
    opens_reasoning,
    prompt_tools,
    render_template,
    resolve_sampling,
    template_options,
)
from workers.prompt_cache import (
    AUTO_PREFIX,
    DEFAULT_MAX_BYTES,
    CacheEntry,
    PromptCacheStore,
    as_tokens,
    common_prefix,
    prepare_modules,
)
from workers.tool_calls import ToolCallParser, choose_parser
from workers.tool_calls.constrain import GrammarLogits
from workers.tool_calls.grammar import forced_tools, tool_call_grammar
from workers.tool_calls.hermes import HermesParser

PREFILL_STEP = 2048  # mlx-lm's default prefill chunk
# generation_config.json names -> the names resolve_sampling uses (the model's own defaults).
GENERATION_CONFIG_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                          "repetition_penalty": "repeat_penalty"}


class KVState:
    """A live list of mlx-lm per-layer caches, stored as a CacheEntry's ``state``.

    The generic store sizes a snapshot with ``len(state)`` (bytes for llama.cpp) and treats an
    empty state as "nothing to reuse"; ``__len__`` is therefore the arrays' byte size, and a fresh
    cache is 0 bytes and falsy. While a request uses a state it is taken out of the store and put
    back afterwards, so the store's byte total is always measured on a state that no longer changes.
    """

    __slots__ = ("layers",)

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers

    def __len__(self) -> int:
        return int(sum(c.nbytes for c in self.layers))

    @property
    def offset(self) -> int:
        return int(self.layers[0].offset) if self.layers else 0

    def copy(self, n_tokens: int | None = None) -> KVState:
        """A real copy of the first ``n_tokens`` positions (all by default).

        mlx arrays are values, but a KVCache writes into its buffers with slice assignment, which
        rebinds the array object it holds; sharing array objects between two caches would let one
        session's writes show up in the other. Slicing to the used length then multiplying by 1
        allocates a fresh buffer holding only what is used (a plain slice or mx.array() would be a
        view of the same memory, which clear() could then never free).
        """
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        n = self.offset if n_tokens is None else min(n_tokens, self.offset)
        out = []
        for layer in self.layers:
            if not isinstance(layer, KVCache):
                raise WorkerError(ErrorCode.NOT_SUPPORTED, f"cannot copy a {type(layer).__name__} prompt cache")
            fresh = KVCache()
            keys, values = layer.keys, layer.values
            if keys is not None and values is not None and n > 0:
                fresh.keys = keys[..., :n, :] * 1
                fresh.values = values[..., :n, :] * 1
                fresh.offset = n
            out.append(fresh)
        mx.eval([c.state for c in out if c.keys is not None])
        return KVState(out)


def _kv_of(entry: CacheEntry | None) -> KVState | None:
    """The live KV state of an entry (None for a missing entry or a fresh key's empty state)."""
    state: Any = entry.state if entry is not None else None
    return state if isinstance(state, KVState) and state.layers else None


def resolve_model_dir(model: str) -> Path:
    """A local directory, or a repo id already in the local Hugging Face cache (never downloads)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{model}: not an MLX model directory (no config.json)")
        return path
    if path.exists():
        raise ModelLoadError(f"{model}: an MLX model must be a directory (config.json + *.safetensors + tokenizer)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:
        raise ModelLoadError(
            f"{model}: no such directory, and not in the local Hugging Face cache "
            f"(acore never downloads models; fetch it first, e.g. `huggingface-cli download {model}`)"
        ) from exc


class MLXBackend(Backend):
    provider = "mlx"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._model: Any = None
        self._tokenizer: Any = None
        self._dir: Path | None = None
        self._context_length = int(options.get("n_ctx") or 0)
        self._model_defaults: dict[str, float] = {}
        self.tool_parser: type[ToolCallParser] = HermesParser
        # same option names as the llama.cpp backend
        max_bytes = int(options.get("prompt_cache_bytes") or DEFAULT_MAX_BYTES)
        ttl = options.get("prompt_cache_ttl_s")
        self.store = PromptCacheStore(max_bytes=max_bytes, default_ttl_s=float(ttl) if ttl else None, backend="mlx")
        # prepare_modules builds in this working state between its restore/append/snapshot steps
        self._work_tokens: list[int] = []
        self._work_kv: KVState | None = None

    # ------------------------------------------------------------ life cycle

    def load(self) -> None:
        self._dir = resolve_model_dir(self.model)
        try:
            import mlx_lm

            self._model, self._tokenizer = mlx_lm.load(str(self._dir))[:2]
        except ImportError as exc:
            raise ModelLoadError(f"mlx-lm is not installed: pip install 'acore[mlx]' ({exc})") from exc
        except Exception as exc:
            raise ModelLoadError(f"{self.model}: mlx-lm cannot load it: {exc}") from exc
        if not self._context_length:
            self._context_length = self._config_context_length(self._dir)
        self._model_defaults = self._generation_defaults(self._dir)
        self.tool_parser = choose_parser(self.options.get("tool_parser"), getattr(self._tokenizer, "chat_template", None))

    def unload(self) -> None:
        self._model = self._tokenizer = None
        self._work_kv = None
        # the KV arrays belong to this model: keeping them would hold memory the unload meant to free
        self.store.clear()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @staticmethod
    def _config_context_length(directory: Path) -> int:
        try:
            cfg = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            return 0
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
        return 0

    @staticmethod
    def _generation_defaults(directory: Path) -> dict[str, float]:
        """The sampling settings the model ships in generation_config.json (when it sets do_sample)."""
        try:
            cfg = json.loads((directory / "generation_config.json").read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(cfg, dict) or cfg.get("do_sample") is False:
            return {"temperature": 0.0} if isinstance(cfg, dict) and cfg.get("do_sample") is False else {}
        return {name: float(cfg[key]) for key, name in GENERATION_CONFIG_KEYS.items()
                if isinstance(cfg.get(key), int | float) and not isinstance(cfg.get(key), bool)}

    def info(self) -> BackendInfo:
        ctx = self._context_length
        if not ctx:
            try:
                ctx = self._config_context_length(self._dir or resolve_model_dir(self.model))
            except ModelLoadError:
                ctx = 0  # load() will report it
        return BackendInfo(capabilities=Capabilities(chat=True, tools=True, prompt_cache=True), context_length=ctx,
                           max_concurrency=1)

    # ------------------------------------------------------------ prompts

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                add_generation_prompt: bool) -> list[int]:
        return self._encode(self._template(messages, tools, add_generation_prompt))

    def count_tokens(self, request: Tokenize) -> int:
        return len(self._render(request.messages, request.tools or None, True))

    def _render_prompt(self, request: Generate) -> tuple[list[int], str]:
        """A generation's prompt as tokens, and as text (to see whether it opens a reasoning block)."""
        text = self._template(request.messages, prompt_tools(request), True, template_options(request))
        return self._encode(text), text

    def _template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  add_generation_prompt: bool, options: dict[str, Any] | None = None) -> str:
        return render_template(self._tokenizer, self.name, messages, tools, add_generation_prompt, options)

    def _encode(self, text: str) -> list[int]:
        return encode_prompt(self._tokenizer, text)

    def _render_fragment(self, args: dict[str, Any]) -> list[int]:
        """Tokens of an update / module body: system_prompt + messages (+ tools) templated, then prompt.

        Same rendering as the llama.cpp backend, so a key means the same context on either engine.
        """
        messages = list(args.get("messages") or [])
        if args.get("system_prompt"):
            messages.insert(0, {"role": "system", "content": args["system_prompt"]})
        tokens: list[int] = []
        if messages or args.get("tools"):
            tokens = self._render(messages, args.get("tools"), bool(args.get("add_generation_prompt")))
        if args.get("prompt"):
            tokens += self._encode(str(args["prompt"]))
        if not tokens:
            raise WorkerError(ErrorCode.BAD_REQUEST, "nothing to cache: give prompt, messages, system_prompt or tools")
        return tokens

    # ------------------------------------------------------------ KV helpers

    def _fresh_kv(self) -> KVState:
        from mlx_lm.models.cache import make_prompt_cache

        return KVState(make_prompt_cache(self._model))

    def _trim(self, kv: KVState, keep: int) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        extra = kv.offset - keep
        if extra > 0:
            if not can_trim_prompt_cache(kv.layers):
                raise WorkerError(ErrorCode.NOT_SUPPORTED, "this model's cache cannot be trimmed")
            trim_prompt_cache(kv.layers, extra)

    def _prefill(self, kv: KVState, tokens: list[int]) -> None:
        import mlx.core as mx

        for start in range(0, len(tokens), PREFILL_STEP):
            self._model(mx.array(tokens[start : start + PREFILL_STEP])[None], cache=kv.layers)
            mx.eval([c.state for c in kv.layers])

    def _checkout(self, key: str | None, tokens: list[int], limit: int) -> tuple[KVState, int, CacheEntry | None]:
        """The state to continue from (taken out of the store) and how many of ``tokens`` it reuses.

        Reuse stops at ``limit``: generation passes len(tokens) - 1, since the next token's logits
        come from evaluating at least the last prompt token.
        """
        best_key, best = self.store.best_prefix(tokens, key)
        entry = self.store.get(key) if key is not None else None
        if key is not None and entry is not None:
            # Out of the store while in use: the store sized it when it was put, and the entry is
            # about to change; _checkin puts it back with its new size.
            self._take(key)
        source = self.store.get(best_key) if best_key is not None and best_key != key else entry
        found = _kv_of(source) if best_key is not None else None
        n = min(best, limit)
        if found is None:
            kv, n = self._fresh_kv(), 0
        elif best_key == key:
            kv = found  # the key's own state: extended in place
        elif key is not None or not best_key.startswith(AUTO_PREFIX):  # type: ignore[union-attr]
            kv = found.copy(n)  # another key's state: copy the shared prefix, never write into it
        else:
            # an automatic snapshot is ours to consume: put_auto stores the extended state afterwards
            self.store.remove(best_key)  # type: ignore[arg-type]
            kv = found
        self._trim(kv, n)
        return kv, n, entry

    def _take(self, key: str) -> None:
        default = self.store.default_key
        self.store.remove(key)
        self.store.default_key = default  # remove() forgets the default; taking out is not deleting

    def _checkin(self, key: str | None, entry: CacheEntry | None, kv: KVState, tokens: list[int]) -> None:
        if kv.offset > len(tokens):
            self._trim(kv, len(tokens))
        tokens = tokens[: kv.offset]
        if key is None:
            self.store.put_auto(as_tokens(tokens), kv)  # type: ignore[arg-type]
            return
        default = self.store.default_key
        if entry is None:
            entry = CacheEntry(tokens=as_tokens([]), meta={"backend": "mlx"})
        entry.tokens, entry.state = as_tokens(tokens), kv  # type: ignore[assignment]
        entry.last_access = time.monotonic()
        self.store.put(key, entry)
        self.store.default_key = default

    # ------------------------------------------------------------ generation

    def generate(self, request: Generate, emit: Emit, cancelled: Cancelled) -> GenerationResult:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        p = request.params
        forced = forced_tools(request.tools, request.tool_choice)
        tokens, rendered = self._render_prompt(request)
        ctx = self._context_length or 1 << 30
        if len(tokens) >= ctx:
            raise WorkerError(ErrorCode.CONTEXT_OVERFLOW, f"the prompt has {len(tokens)} tokens; the context of "
                              f"{self.name} is {ctx}", param="messages")
        max_tokens = min(p.max_tokens if p.max_tokens is not None else ctx, ctx - len(tokens))
        if max_tokens < 1:
            raise WorkerError(ErrorCode.BAD_REQUEST, "max_tokens must be at least 1", param="max_tokens")

        sampling = resolve_sampling(p, self._model_defaults)
        sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p, min_p=sampling.min_p,
                               top_k=sampling.top_k)
        try:
            bias = {int(k): float(v) for k, v in p.logit_bias.items()} or None
        except ValueError as exc:
            raise WorkerError(ErrorCode.BAD_REQUEST, "logit_bias keys must be token ids", param="logit_bias") from exc
        processors = make_logits_processors(
            logit_bias=bias,
            repetition_penalty=sampling.repeat_penalty if sampling.repeat_penalty != 1.0 else None,
            presence_penalty=sampling.presence_penalty or None,
            frequency_penalty=sampling.frequency_penalty or None,
        )
        if forced:  # tool_choice required / named: a call in the model's own syntax, nothing else
            lark = tool_call_grammar(self.tool_parser.family, forced, opens_reasoning(rendered), dialect="lark")
            processors.append(GrammarLogits(getattr(self._tokenizer, "_tokenizer", self._tokenizer), lark))
        if sampling.seed is not None:
            mx.random.seed(int(sampling.seed) & 0xFFFFFFFF)

        key = request.prompt_cache_key or self.store.default_key
        kv, reused, entry = self._checkout(key, tokens, len(tokens) - 1)
        if processors:
            # generate_step only sees the tokens it evaluates; penalties must also see the reused
            # prefix, or cached and uncached runs would sample differently
            history = mx.array(tokens[max(0, reused - 256) : reused], dtype=mx.uint32)
            processors = [self._with_history(f, history) for f in processors]

        generated: list[int] = []
        completion = 0
        finish = FinishReason.LENGTH
        eos = set(self._tokenizer.eos_token_ids)
        detok = self._tokenizer.detokenizer
        output = ChatOutput(request, reasoning_open=opens_reasoning(rendered), parser=self.tool_parser)
        output.prompt_tokens, output.cached_tokens = len(tokens), reused
        steps: Iterator[tuple[Any, Any]] = generate_step(
            mx.array(tokens[reused:]), self._model, max_tokens=-1, sampler=sampler,
            logits_processors=processors or None, prompt_cache=kv.layers, prefill_step_size=PREFILL_STEP,
        )
        ok = False
        try:
            if cancelled():
                finish = FinishReason.ABORTED
            else:
                for token, _ in steps:
                    # generate_step feeds each token into the cache before yielding it, so the
                    # cache always holds prompt + generated (checked against kv.offset below)
                    generated.append(int(token))
                    if token in eos:
                        finish = FinishReason.STOP
                        break
                    completion += 1
                    detok.add_token(int(token))
                    emit(output.feed(detok.last_segment))
                    if output.stopped:
                        finish = FinishReason.STOP
                        break
                    if completion >= max_tokens:
                        break
                    if cancelled():
                        finish = FinishReason.ABORTED
                        break
            if finish != FinishReason.ABORTED:
                # the detokenizer may still hold a partial character, the filters a held-back tail
                detok.finalize()
                last, called = output.finish("" if output.stopped else detok.last_segment)
                if last is not None:
                    emit(last)
                if output.stopped:
                    finish = FinishReason.STOP
                finish = finish_reason(finish, called)
            ok = True
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()
            mx.eval([c.state for c in kv.layers if getattr(c, "keys", None) is not None])
            if ok:
                self._checkin(key, entry, kv, tokens + generated)
            elif entry is not None and key is not None:
                # the state may be half-written: drop it, but keep the key (its meta and ttl)
                entry.tokens, entry.state = as_tokens([]), b""
                self.store.put(key, entry)
        return GenerationResult(finish_reason=finish,
                                usage=Usage(prompt_tokens=len(tokens), completion_tokens=completion,
                                            cached_tokens=reused), stop_sequence=output.stop_sequence)

    @staticmethod
    def _with_history(processor: Any, history: Any) -> Any:
        import mlx.core as mx

        def run(tokens: Any, logits: Any) -> Any:
            return processor(mx.concatenate([history, tokens.astype(history.dtype)]), logits)

        return run

    # ------------------------------------------------------------ control plane

    def cache_op(self, op: CacheOp) -> dict[str, Any]:
        args = dict(op.args or {})
        handler = getattr(self, f"_op_{op.op}", None)
        if handler is None:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"unknown prompt cache operation {op.op!r}", param="op")
        if op.op in ("update", "prepare_modules", "match") and not self.loaded:
            self.load()  # after an Unload these need the tokenizer and model again
        result: dict[str, Any] = handler(args)
        return result

    @staticmethod
    def _key(args: dict[str, Any], name: str = "key") -> str:
        key = args.get(name)
        if not isinstance(key, str) or not key:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"{name} must be a non-empty string", param=name)
        return key

    def _op_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"supported": True, "ok": True, "stats": self.store.stats()}

    def _op_set(self, args: dict[str, Any]) -> dict[str, Any]:
        self.store.set_key(self._key(args), make_default=bool(args.get("make_default", True)),
                           ttl_s=args.get("ttl_s"))
        return {"supported": True, "ok": True}

    def _op_clear(self, args: dict[str, Any]) -> dict[str, Any]:
        key = args.get("key")
        if key is None:
            self.store.clear()
        elif not self.store.remove(str(key)):
            raise WorkerError(ErrorCode.NOT_FOUND, f"unknown prompt cache key {key!r}", param="key")
        return {"supported": True, "ok": True, "bytes": self.store.total_bytes}

    def _op_fork(self, args: dict[str, Any]) -> dict[str, Any]:
        src_key, dst_key = self._key(args, "from_key"), self._key(args, "to_key")
        src = self.store.require(src_key)
        if dst_key in self.store and not args.get("overwrite"):
            raise WorkerError(ErrorCode.CONFLICT, f"prompt cache key {dst_key!r} exists (pass overwrite)",
                              param="to_key")
        # the store's own fork shares the (immutable) llama.cpp bytes; a live KV list must be copied
        live = _kv_of(src)
        state: Any = live.copy() if live is not None else b""
        ttl = args.get("ttl_s")
        entry = CacheEntry(tokens=src.tokens.copy(), state=state, ttl_s=ttl if ttl is not None else src.ttl_s,
                           meta={**src.meta, "forked_from": src_key})  # type: ignore[arg-type]
        default = self.store.default_key
        if not self.store.put(dst_key, entry):
            raise WorkerError(ErrorCode.TOO_LARGE, "prompt cache entry is larger than the cache budget")
        self.store.default_key = dst_key if args.get("make_default") else default
        return {"supported": True, "ok": True, "token_count": entry.n_tokens}

    def _op_update(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key(args)
        fragment = self._render_fragment(args)
        entry = self.store.get(key)
        old = [int(t) for t in entry.tokens] if entry is not None else []
        # The full conversation (old tokens are its prefix) prefills only the rest; anything else
        # is a new turn appended after the key's context, as AbstractCore clients send it.
        tokens = fragment if common_prefix(old, fragment) == len(old) else old + fragment
        if len(tokens) >= (self._context_length or 1 << 30):
            raise WorkerError(ErrorCode.CONTEXT_OVERFLOW, f"{len(tokens)} tokens exceed the context", param="key")
        kv, reused, entry = self._checkout(key, tokens, len(tokens))
        try:
            self._prefill(kv, tokens[reused:])
        except Exception:
            if entry is not None:  # a half-written state is dropped; the key itself stays
                entry.tokens, entry.state = as_tokens([]), b""
                self.store.put(key, entry)
            raise
        self._checkin(key, entry, kv, tokens)
        stored = self.store.get(key)
        if stored is None:
            raise WorkerError(ErrorCode.TOO_LARGE, "the key's state is larger than the prompt cache budget")
        if args.get("ttl_s") is not None:
            stored.ttl_s = float(args["ttl_s"])
        return {"supported": True, "ok": True, "token_count": len(tokens), "cached_tokens": reused}

    def _op_prepare_modules(self, args: dict[str, Any]) -> dict[str, Any]:
        def restore(entry: CacheEntry | None) -> None:
            if entry is None or not isinstance(entry.state, KVState):
                self._work_tokens, self._work_kv = [], self._fresh_kv()
            else:
                self._work_tokens, self._work_kv = [int(t) for t in entry.tokens], entry.state.copy()

        def append(module: dict[str, Any]) -> None:
            assert self._work_kv is not None
            fragment = self._render_fragment(module)
            self._prefill(self._work_kv, fragment)
            self._work_tokens += fragment

        def snapshot() -> CacheEntry:
            assert self._work_kv is not None
            return CacheEntry(tokens=as_tokens(self._work_tokens), state=self._work_kv.copy())  # type: ignore[arg-type]

        try:
            return prepare_modules(self.store, args, restore, append, snapshot)
        finally:
            self._work_tokens, self._work_kv = [], None

    def _op_match(self, args: dict[str, Any]) -> dict[str, Any]:
        """How many prompt tokens of a would-be request this worker has cached (cache-aware routing)."""
        tokens = self._render(list(args.get("messages") or []), args.get("tools"), add_generation_prompt=True)
        key = args.get("key")
        _, best = self.store.best_prefix(tokens, key if isinstance(key, str) else None)
        return {"supported": True, "ok": True, "prefix_tokens": best}
