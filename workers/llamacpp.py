"""llama.cpp backend (llama-cpp-python): chat generation with its own token loop and a prompt cache.

Why a hand-written loop instead of ``create_chat_completion``: llama-cpp-python's streaming path
re-detokenizes a growing tail on each token (quadratic on incomplete UTF-8) and costs ~230 µs of
Python per token on top of the model; here each token is decoded once through a stateful UTF-8
decoder. Prompt reuse is ours too (workers/prompt_cache.py), so it survives unrelated requests
in between and never stores llama-cpp-python's logits array.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any

from protocol.messages import CacheOp, Capabilities, ErrorCode, FinishReason, Generate, Tokenize, Usage
from workers.backend import (
    Backend,
    BackendInfo,
    Cancelled,
    Emit,
    GenerationResult,
    ModelLoadError,
    WorkerError,
)
from workers.chat import (
    THINK_TAGS,
    ChatOutput,
    finish_reason,
    message_text,
    opens_reasoning,
    prompt_tools,
    resolve_sampling,
    template_options,
)
from workers.prompt_cache import DEFAULT_MAX_BYTES, CacheEntry, PromptCacheStore, as_tokens, common_prefix
from workers.prompt_cache import prepare_modules as build_modules
from workers.tool_calls import ToolCallParser, choose_parser
from workers.tool_calls.grammar import forced_tools, tool_call_grammar
from workers.tool_calls.hermes import HermesParser

log = logging.getLogger(__name__)

DEFAULT_CTX_CAP = 8192
CHATML_FALLBACK = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GGUF_MAGIC = b"GGUF"
# Requests whose prompt is shorter than this are not snapshotted automatically: re-evaluating a
# short prompt is cheaper than copying state around.
AUTO_SNAPSHOT_MIN_TOKENS = 64


# The model's own sampling defaults (GGUF general.sampling.*), by the names resolve_sampling uses.
GGUF_SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                      "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
                      "general.sampling.penalty_repeat": "repeat_penalty"}

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_context_length(path: Path) -> int | None:
    """``<arch>.context_length`` from a GGUF header, read without loading the model.

    info() must answer before load(), and the gguf package is only a test dependency. The key comes
    early in real files (before the tokenizer arrays), so the scan usually stops after a few reads.
    """
    with path.open("rb") as f:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("truncated GGUF header")
            return struct.unpack(fmt, data)[0]

        def read_str() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        def skip(vtype: int) -> None:
            if vtype == 8:
                f.seek(read("<Q"), 1)
            elif vtype == 9:
                itype, count = read("<I"), read("<Q")
                if itype in _GGUF_SCALARS:
                    f.seek(struct.calcsize(_GGUF_SCALARS[itype]) * count, 1)
                else:
                    for _ in range(count):
                        skip(itype)
            else:
                f.seek(struct.calcsize(_GGUF_SCALARS[vtype]), 1)

        if f.read(4) != GGUF_MAGIC or read("<I") < 2:
            raise ValueError("not a GGUF v2+ file")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, vtype = read_str(), read("<I")
            if key.endswith(".context_length") and vtype in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[vtype]))
            skip(vtype)
    return None


def model_sampling_defaults(metadata: dict[str, str]) -> dict[str, float]:
    """The sampling settings a GGUF's author recommends (llama-cpp-python gives metadata as strings)."""
    defaults = {}
    for key, name in GGUF_SAMPLING_KEYS.items():
        try:
            defaults[name] = float(metadata[key])
        except (KeyError, ValueError):
            continue
    return defaults


class LlamaCppBackend(Backend):
    provider = "llamacpp"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self.llama: Any = None
        self._formatters: dict[bool, Any] = {}
        self._pieces: dict[int, bytes] = {}
        self._n_ctx = 0
        self._model_defaults: dict[str, float] = {}
        self.tool_parser: type[ToolCallParser] = HermesParser
        self._preserved: frozenset[int] = frozenset()  # special tokens rendered as text for the parser
        self.cache = PromptCacheStore(
            max_bytes=int(options.get("prompt_cache_bytes") or DEFAULT_MAX_BYTES),
            default_ttl_s=options.get("prompt_cache_ttl_s"),
            backend=self.provider,
        )

    # ------------------------------------------------------------ life cycle

    def _check_file(self) -> Path:
        path = Path(self.model)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {self.model}")
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"not a GGUF model file: {self.model}")
        return path

    def _context_size(self) -> int:
        """n_ctx: the option, else the GGUF's trained length capped (bigger only wastes KV memory)."""
        if self.options.get("n_ctx"):
            return int(self.options["n_ctx"])
        cap = int(self.options.get("n_ctx_cap") or DEFAULT_CTX_CAP)
        try:
            train = gguf_context_length(self._check_file())
        except (OSError, ValueError, ModelLoadError):
            train = None
        return min(train or cap, cap)

    def load(self) -> None:
        path = self._check_file()
        try:
            import llama_cpp
        except ImportError as e:
            raise ModelLoadError("llama-cpp-python is not installed (pip install 'acore[llamacpp]')") from e
        threads = self.options.get("threads") or max(1, (os.cpu_count() or 2) // 2)
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self._context_size(),
                n_threads=int(threads),
                n_threads_batch=int(threads),
                verbose=False,
                logits_all=False,
            )
        except Exception as e:  # llama-cpp-python raises ValueError with little detail
            raise ModelLoadError(f"cannot load {self.model}: {e}") from e
        self.llama = llama
        self._n_ctx = llama.n_ctx()
        self._model_defaults = model_sampling_defaults(llama.metadata)
        self._vocab = llama._model.vocab
        self._pieces = {}
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            # Old conversions carry no template; ChatML is the most common format and at least
            # keeps roles apart (llama-cpp-python would guess llama-2).
            log.warning("%s has no tokenizer.chat_template; using ChatML", self.model)
            template = CHATML_FALLBACK
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def tok_text(tid: int) -> str:
            return llama._model.token_get_text(tid) if tid >= 0 else ""

        bos, eos = tok_text(llama.token_bos()), tok_text(llama.token_eos())
        self.tool_parser = choose_parser(self.options.get("tool_parser"), template)
        wanted = set(self.tool_parser.preserved_tokens) | (set(THINK_TAGS) if self.tool_parser.think_tags else set())
        self._preserved = frozenset(t for t in range(llama.n_vocab()) if tok_text(t) in wanted) if wanted \
            else frozenset()
        self._formatters = {
            gen: Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=gen)
            for gen in (True, False)
        }

    def unload(self) -> None:
        if self.llama is not None:
            self.llama.close()
        self.llama = None
        # Unloading is a request to give memory back; snapshots can be large, so they go too.
        self.cache.clear()

    def reset_context(self) -> None:
        """Forget the live context (snapshots stay): the next request evaluates from its cached prefix only."""
        if self.llama is not None:
            self._restore(None)

    @property
    def loaded(self) -> bool:
        return self.llama is not None

    def info(self) -> BackendInfo:
        return BackendInfo(
            capabilities=Capabilities(chat=True, tools=True, prompt_cache=True, json_schema=True),
            context_length=self._n_ctx or self._context_size(),
            max_concurrency=1,
        )

    # ------------------------------------------------------------ prompt building

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, options: dict[str, Any] | None = None) -> str:
        msgs = []
        for m in messages:
            msg = dict(m)
            msg["content"] = message_text(m.get("content"))
            msgs.append(msg)
        try:
            return self._formatters[add_generation_prompt](messages=msgs, tools=tools or None, **(options or {})).prompt
        except WorkerError:
            raise
        except Exception as e:  # template raise_exception() or a Jinja error on odd input
            raise WorkerError(ErrorCode.BAD_REQUEST, f"chat template failed: {e}", param="messages") from e

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, request: Tokenize) -> int:
        return len(self.tokenize(self.render(request.messages, request.tools or None)))

    def _piece(self, token: int) -> bytes:
        # Own call: LlamaModel.token_to_piece returns its whole 32-byte buffer, NULs included.
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            buf = ctypes.create_string_buffer(64)
            special = token in self._preserved  # a marker the tool-call parser reads (<|channel|>, ...)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:  # a longer piece: llama.cpp returns minus the size it needs
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    # ------------------------------------------------------------ KV state (seq 0 only: no logits)

    def _snapshot(self) -> CacheEntry:
        import llama_cpp

        ctx = self.llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        # string_at makes the one copy the store keeps (states can be hundreds of MB on real models)
        return CacheEntry(tokens=as_tokens(self.llama.input_ids[: self.llama.n_tokens]), state=ctypes.string_at(buf, n))

    def _restore(self, entry: CacheEntry | None) -> None:
        import llama_cpp

        llama = self.llama
        llama._ctx.kv_cache_seq_rm(0, -1, -1)
        llama.n_tokens = 0
        if entry is None or not entry.state:
            return
        # llama.cpp only reads the buffer, so the immutable bytes are passed without a copy
        buf = ctypes.cast(ctypes.c_char_p(entry.state), ctypes.POINTER(ctypes.c_uint8))
        if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buf, len(entry.state), 0) != len(entry.state):
            llama._ctx.kv_cache_seq_rm(0, -1, -1)
            raise WorkerError(ErrorCode.INTERNAL, "prompt cache state could not be restored")
        llama.input_ids[: entry.n_tokens] = entry.tokens
        llama.n_tokens = entry.n_tokens

    def _prefill(self, tokens: list[int], key: str | None) -> int:
        """Bring the context to ``tokens[:-1]`` evaluated (the last token is left for sampling's eval).

        Reuses the longest prefix of the current context or of a snapshot; returns its length.
        """
        llama = self.llama
        current = common_prefix(llama.input_ids[: llama.n_tokens], tokens)
        best_key, best = self.cache.best_prefix(tokens, key)
        if best_key is not None and best > current:
            self._restore(self.cache.get(best_key))
            current = best
        # Keep at least one token to evaluate: sampling needs fresh logits from a live decode.
        reuse = min(current, len(tokens) - 1)
        llama.n_tokens = reuse  # eval() removes KV cells from n_tokens on: never appends blindly
        return reuse

    def _eval(self, tokens: list[int], cancelled: Cancelled | None = None) -> bool:
        """Evaluate in n_batch chunks; False when cancelled in between (long prompts abort promptly)."""
        step = self.llama.n_batch
        for i in range(0, len(tokens), step):
            if cancelled is not None and cancelled():
                return False
            self.llama.eval(tokens[i : i + step])
        return True

    # ------------------------------------------------------------ generation

    def _sampler(self, request: Generate, reasoning_open: bool = False) -> Any:
        from llama_cpp import LlamaGrammar
        from llama_cpp._internals import LlamaSampler
        from llama_cpp.llama_grammar import JSON_GBNF

        p = request.params
        llama = self.llama
        sampler = LlamaSampler()
        if p.logit_bias:
            try:
                bias = {int(k): float(v) for k, v in p.logit_bias.items()}
            except ValueError as e:
                raise WorkerError(ErrorCode.BAD_REQUEST, "logit_bias keys must be token ids", "logit_bias") from e
            if any(not 0 <= t < llama.n_vocab() for t in bias):
                raise WorkerError(ErrorCode.BAD_REQUEST, "logit_bias token id out of range", "logit_bias")
            sampler.add_logit_bias(llama.n_vocab(), bias)
        penalties = resolve_sampling(p, self._model_defaults)
        sampler.add_penalties(
            n_vocab=llama.n_vocab(),
            penalty_last_n=64,
            penalty_repeat=penalties.repeat_penalty,
            penalty_freq=penalties.frequency_penalty,
            penalty_present=penalties.presence_penalty,
        )
        rf = request.response_format or {}
        kind = rf.get("type")
        forced = forced_tools(request.tools, request.tool_choice)
        if forced:  # tool_choice required / named: a call in the model's own syntax, nothing else
            gbnf = tool_call_grammar(self.tool_parser.family, forced, close_reasoning=reasoning_open)
            try:
                sampler.add_grammar(llama._model, LlamaGrammar.from_string(gbnf, verbose=False))
            except Exception as e:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"cannot constrain the tool call: {e}", "tools") from e
        elif kind in ("json_object", "json_schema"):
            schema = (rf.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
            try:
                grammar = (LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) if schema
                           else LlamaGrammar.from_string(JSON_GBNF, verbose=False))
            except Exception as e:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"unsupported JSON schema: {e}", "response_format") from e
            sampler.add_grammar(llama._model, grammar)
        elif kind not in (None, "text"):
            raise WorkerError(ErrorCode.BAD_REQUEST, f"unsupported response_format type {kind!r}", "response_format")
        sampling = resolve_sampling(p, self._model_defaults)
        if sampling.greedy:
            sampler.add_greedy()
        else:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
            if sampling.top_k > 0:
                sampler.add_top_k(sampling.top_k)
            if sampling.top_p < 1.0:
                sampler.add_top_p(sampling.top_p, 1)
            if sampling.min_p > 0.0:
                sampler.add_min_p(sampling.min_p, 1)
            sampler.add_temp(sampling.temperature)
            sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    def generate(self, request: Generate, emit: Emit, cancelled: Cancelled) -> GenerationResult:
        import llama_cpp

        llama = self.llama
        rendered = self.render(request.messages, prompt_tools(request), options=template_options(request))
        prompt = self.tokenize(rendered)
        limit = self._n_ctx - 1
        if len(prompt) > limit:
            raise WorkerError(ErrorCode.CONTEXT_OVERFLOW,
                              f"prompt is {len(prompt)} tokens; this model's context allows at most {limit}",
                              param="messages")
        if not prompt:
            raise WorkerError(ErrorCode.BAD_REQUEST, "empty prompt", param="messages")
        max_tokens = request.params.max_tokens
        room = self._n_ctx - len(prompt)
        max_tokens = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        reasoning_open = opens_reasoning(rendered)
        sampler = self._sampler(request, reasoning_open)
        key = request.prompt_cache_key or self.cache.default_key

        cached = self._prefill(prompt, key)
        if not self._eval(prompt[cached:], cancelled):
            return GenerationResult(FinishReason.ABORTED, Usage(prompt_tokens=len(prompt), cached_tokens=cached))

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        output = ChatOutput(request, reasoning_open=reasoning_open, parser=self.tool_parser)
        output.prompt_tokens, output.cached_tokens = len(prompt), cached
        finish = FinishReason.LENGTH
        n_out = 0
        vocab, ctx, raw_sampler = self._vocab, llama._ctx, sampler
        while n_out < max_tokens:
            if cancelled():
                finish = FinishReason.ABORTED
                break
            token = raw_sampler.sample(ctx, -1)  # llama_sampler_sample also accepts the token
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = FinishReason.STOP
                break
            n_out += 1
            emit(output.feed(decoder.decode(self._piece(token))))
            if output.stopped:
                finish = FinishReason.STOP
                break
            if n_out < max_tokens:
                llama.eval([token])
        if finish != FinishReason.ABORTED:
            last, called = output.finish(decoder.decode(b"", final=True))
            if last is not None:
                emit(last)
            if output.stopped:
                finish = FinishReason.STOP
            finish = finish_reason(finish, called)
        self._remember(key, len(prompt))
        return GenerationResult(finish, Usage(prompt_tokens=len(prompt), completion_tokens=n_out,
                                              cached_tokens=cached), stop_sequence=output.stop_sequence)

    def _remember(self, key: str | None, n_prompt: int) -> None:
        """Snapshot the context after a request: under its key, or automatically for long prompts."""
        if key is None and n_prompt < AUTO_SNAPSHOT_MIN_TOKENS:
            return
        entry = self._snapshot()
        if key is not None:
            old = self.cache.get(key)
            if old is not None:
                entry.meta, entry.ttl_s = old.meta, old.ttl_s
            entry.meta = {**entry.meta, "backend": self.provider}
            self.cache.put(key, entry)
        else:
            self.cache.put_auto(entry.tokens, entry.state)

    # ------------------------------------------------------------ prompt-cache control plane

    def _fragment_tokens(self, args: dict[str, Any]) -> list[int]:
        """Tokens of an update/module body: system_prompt + messages (+ tools) through the template, then prompt."""
        messages = list(args.get("messages") or [])
        if args.get("system_prompt"):
            messages.insert(0, {"role": "system", "content": args["system_prompt"]})
        text = ""
        if messages or args.get("tools"):
            text = self.render(messages, args.get("tools"), bool(args.get("add_generation_prompt")))
        if args.get("prompt"):
            text += str(args["prompt"])
        if not text:
            raise WorkerError(ErrorCode.BAD_REQUEST, "nothing to cache: give prompt, messages, system_prompt or tools")
        return self.tokenize(text)

    def _extend(self, tokens: list[int]) -> None:
        """Make the context hold exactly ``tokens`` (reusing what is already there)."""
        if len(tokens) > self._n_ctx:
            raise WorkerError(ErrorCode.CONTEXT_OVERFLOW, f"{len(tokens)} tokens exceed the context ({self._n_ctx})")
        llama = self.llama
        keep = common_prefix(llama.input_ids[: llama.n_tokens], tokens)
        llama.n_tokens = keep
        self._eval(tokens[keep:])

    def cache_op(self, op: CacheOp) -> dict[str, Any]:
        a = op.args or {}
        store = self.cache
        if op.op == "stats":
            return {"supported": True, "ok": True, "stats": store.stats()}
        if op.op == "set":
            key = self._key(a, "key")
            store.set_key(key, make_default=bool(a.get("make_default", True)), ttl_s=a.get("ttl_s"))
            return {"supported": True, "ok": True}
        if op.op == "fork":
            entry = store.fork(self._key(a, "from_key"), self._key(a, "to_key"), overwrite=bool(a.get("overwrite")),
                               make_default=bool(a.get("make_default")), ttl_s=a.get("ttl_s"))
            return {"supported": True, "ok": True, "token_count": entry.n_tokens}
        if op.op == "clear":
            if a.get("key") is None:
                store.clear()
            elif not store.remove(self._key(a, "key")):
                raise WorkerError(ErrorCode.NOT_FOUND, f"unknown prompt cache key {a['key']!r}", param="key")
            return {"supported": True, "ok": True, "bytes": store.total_bytes}
        if not self.loaded:
            self.load()
        if op.op == "update":
            key = self._key(a, "key")
            frag = self._fragment_tokens(a)
            current = store.get(key)
            base = [int(t) for t in current.tokens] if current is not None else []
            # The full conversation resent (it extends the key's tokens, or is a prefix of them)
            # replaces; anything else is a new fragment and is appended, as AbstractCore does.
            shared = common_prefix(base, frag)
            tokens = frag if shared in (len(base), len(frag)) else base + frag
            self._restore(current if current is not None and current.state else None)
            self._extend(tokens)
            new = self._snapshot()
            new.meta = {**(current.meta if current else {}), "backend": self.provider}
            new.ttl_s = a.get("ttl_s") if a.get("ttl_s") is not None else (current.ttl_s if current else None)
            if not store.put(key, new):
                raise WorkerError(ErrorCode.TOO_LARGE, "the key's state is larger than the prompt cache budget")
            return {"supported": True, "ok": True, "token_count": new.n_tokens}
        if op.op == "prepare_modules":
            return build_modules(store, a, restore=self._restore,
                                 append=lambda m: self._extend(
                                     [int(t) for t in self.llama.input_ids[: self.llama.n_tokens]]
                                     + self._fragment_tokens(m)),
                                 snapshot=self._snapshot)
        if op.op == "match":
            tokens = self.tokenize(self.render(a.get("messages") or [], a.get("tools")))
            live = common_prefix(self.llama.input_ids[: self.llama.n_tokens], tokens)
            _, best = store.best_prefix(tokens, a.get("key"))
            return {"supported": True, "ok": True, "prefix_tokens": max(live, best)}
        raise WorkerError(ErrorCode.BAD_REQUEST, f"unknown prompt cache operation {op.op!r}")

    @staticmethod
    def _key(args: dict[str, Any], name: str) -> str:
        key = args.get(name)
        if not isinstance(key, str) or not key:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"{name} must be a non-empty string", param=name)
        return key
