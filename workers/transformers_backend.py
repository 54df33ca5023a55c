"""transformers backend (engine "transformers", listed as ``huggingface/<name>``): causal LMs with torch.

``--provider huggingface --model ORG/REPO`` (a Hub id, downloaded by workers/hub.py) or a folder
written by ``save_pretrained``. The prompt is the tokenizer's chat template (tools rendered by it);
generation is a manual loop over ``model(...)`` with a ``DynamicCache``, one token at a time, so
the worker samples with every OpenAI/llama.cpp parameter itself, checks aborts and stop strings
between tokens and streams text through the shared chat semantics (workers/chat.py: stop strings,
reasoning, tool calls).

Prefix reuse: the KV cache of the previous request stays on the model; a request that starts with
the same tokens (a conversation resent with one more turn) is cropped to the longest common prefix
and only the rest is evaluated (``usage.prompt_tokens_details.cached_tokens``). A model whose cache
cannot be cropped evaluates every prompt in full.

Concurrent requests: the worker accepts up to ``--max-batch`` (default 8) at once (``max_concurrency``).
When the model thread picks a request, the requests already waiting behind it are decoded together
in one ``model.generate`` over their left-padded prompts, each with its own sampling, stop strings,
limits, abort and reply (workers/transformers_batch.py); a request alone takes the loop above and
reuses the previous prompt's cache (a batch evaluates its prompts in full). Measured on CPU in
docs/benchmarks.md.

Placement: ``device_map="auto"`` and the checkpoint's dtype when CUDA is present, float32 on CPU.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.messages import Capabilities, ErrorCode, Generate, Tokenize
from workers.backend import (
    Backend,
    BackendInfo,
    Cancelled,
    Emit,
    GenerationJob,
    GenerationResult,
    ModelLoadError,
    WorkerError,
    read_json_object,
)
from workers.chat import (
    THINK_TAGS,
    ChatOutput,
    Sampling,
    encode_prompt,
    opens_reasoning,
    prompt_tools,
    render_template,
    resolve_sampling,
    template_options,
)
from workers.prompt_cache import common_prefix
from workers.tool_calls import ToolCallParser, choose_parser
from workers.tool_calls.hermes import HermesParser
from workers.transformers_batch import RowGeneration, generate_together

log = logging.getLogger("acore.worker.transformers")

# Most requests decoded together (--max-batch): the gateway sends this many at once (max_concurrency).
DEFAULT_MAX_BATCH = 8
# Tokens an incomplete character may hold back before it is emitted as U+FFFD.
MAX_HELD = 4
# What a model without a chat template is given (as the llama.cpp backend does).
CHATML_FALLBACK = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GENERATION_CONFIG_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                          "repetition_penalty": "repeat_penalty"}
CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")



def config_context_length(directory: Path) -> int:
    config = read_json_object(directory / "config.json")
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    return next((int(config[k]) for k in CONTEXT_KEYS if isinstance(config.get(k), int)), 0)


def generation_defaults(directory: Path) -> dict[str, float]:
    """The sampling the model ships in generation_config.json (greedy when it says do_sample false)."""
    config = read_json_object(directory / "generation_config.json")
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    return {name: float(config[key]) for key, name in GENERATION_CONFIG_KEYS.items()
            if isinstance(config.get(key), int | float) and not isinstance(config.get(key), bool)}


class IncrementalDecoder:
    """Token ids -> text as it becomes final: a character split over tokens waits for its last byte.

    Decodes only a short window (from the last emitted boundary), so a long answer costs the same
    per token as a short one."""

    def __init__(self, tokenizer: Any, hidden: frozenset[int] = frozenset()) -> None:
        self.tokenizer = tokenizer
        self.hidden = hidden  # special tokens not shown (those a tool-call parser reads are shown)
        self.ids: list[int] = []
        self.prefix = 0  # start of the window
        self.read = 0  # end of what was emitted

    def _decode(self, ids: list[int]) -> str:
        shown = [t for t in ids if t not in self.hidden]
        return str(self.tokenizer.decode(shown, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        # a character still missing bytes ends in U+FFFD: wait for them, but not forever (a model
        # can emit bytes that never form one, and the window would grow with every token)
        if len(after) > len(before) and (not after.endswith("\ufffd") or len(self.ids) - self.read > MAX_HELD):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


class TransformersBackend(Backend):
    provider = "transformers"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._context_length = int(options.get("n_ctx") or 0)
        self._model_defaults: dict[str, float] = {}
        self._eos: set[int] = set()
        # The previous request's KV cache and the tokens it holds (reused by their common prefix).
        self._past: Any = None
        self._past_tokens: list[int] = []
        self._crop_ok = True
        self.tool_parser: type[ToolCallParser] = HermesParser
        self._hidden: frozenset[int] = frozenset()
        self._cache_arg = "past_key_values"  # transformers 5 names it "cache"
        self._last_logits: dict[str, int] = {}
        self._max_batch = max(1, int(options.get("max_batch") or DEFAULT_MAX_BATCH))

    # ------------------------------------------------------------ life cycle

    @property
    def _dir(self) -> Path:
        return Path(self.model).expanduser()

    def load(self) -> None:
        directory = self._dir
        if not (directory / "config.json").is_file():
            raise ModelLoadError(f"{self.model}: not a transformers model directory (no config.json); pass a "
                                 "Hugging Face Hub id (ORG/REPO) or a folder written by save_pretrained")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ModelLoadError(f"transformers is not installed ({exc.name}): pip install 'acore[transformers]'") from None
        hf_logging.disable_progress_bar()  # one "Loading weights" bar per load would clutter worker logs
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        cuda = torch.cuda.is_available()
        placement: dict[str, Any] = {"device_map": "auto", "dtype": "auto"} if cuda else {"dtype": torch.float32}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, **placement)
        except Exception as exc:
            raise ModelLoadError(f"transformers cannot load {self.model}: {type(exc).__name__}: {exc}") from None
        model.eval()
        if not getattr(tokenizer, "chat_template", None):
            log.warning("%s has no chat template; using ChatML", self.model)
            tokenizer.chat_template = CHATML_FALLBACK
        self._model, self._tokenizer = model, tokenizer
        # the model's tool-call syntax (its template tells, or --tool-parser); the special tokens it
        # reads (and <think> tags) stay in the text, every other special token is hidden
        self.tool_parser = choose_parser(self.options.get("tool_parser"), tokenizer.chat_template)
        wanted = set(self.tool_parser.preserved_tokens) | (set(THINK_TAGS) if self.tool_parser.think_tags else set())
        vocab = tokenizer.get_vocab()
        self._hidden = frozenset(int(t) for t in tokenizer.all_special_ids) - {vocab[w] for w in wanted if w in vocab}
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self._device = next(model.parameters()).device
        log.info("%s on %s (%s)", self.name, self._device, next(model.parameters()).dtype)
        self._context_length = self._context_length or config_context_length(directory)
        self._model_defaults = generation_defaults(directory)
        eos = getattr(model.generation_config, "eos_token_id", None)
        self._eos = {int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None}
        if tokenizer.eos_token_id is not None:
            self._eos.add(int(tokenizer.eos_token_id))

    def unload(self) -> None:
        self._model = self._tokenizer = self._past = None
        self._past_tokens = []
        import gc

        gc.collect()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def info(self) -> BackendInfo:
        ctx = self._context_length or config_context_length(self._dir)
        # the gateway sends up to max_concurrency requests at once: as many as one batch decodes
        return BackendInfo(capabilities=Capabilities(chat=True, tools=True), context_length=ctx,
                           max_concurrency=self._max_batch, max_batch=self._max_batch)

    # ------------------------------------------------------------ prompts

    def _template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  options: dict[str, Any] | None = None) -> str:
        return render_template(self._tokenizer, self.name, messages, tools, True, options)

    def _encode(self, text: str) -> list[int]:
        return encode_prompt(self._tokenizer, text)

    def count_tokens(self, request: Tokenize) -> int:
        return len(self._encode(self._template(request.messages, request.tools or None)))

    # ------------------------------------------------------------ sampling

    def _bias(self, request: Generate) -> dict[int, float]:
        vocab = int(self._model.config.get_text_config().vocab_size)
        try:
            bias = {int(k): float(v) for k, v in request.params.logit_bias.items()}
        except ValueError as exc:
            raise WorkerError(ErrorCode.BAD_REQUEST, "logit_bias keys must be token ids", param="logit_bias") from exc
        if any(not 0 <= k < vocab for k in bias):
            raise WorkerError(ErrorCode.BAD_REQUEST, f"logit_bias token ids must be below {vocab}", param="logit_bias")
        return bias

    @staticmethod
    def _next_token(logits: Any, sampling: Sampling, bias: dict[int, float], recent: list[int],
                    counts: dict[int, int], generator: Any) -> int:
        import torch

        logits = logits.float()
        for token, value in bias.items():
            logits[token] += value
        if sampling.repeat_penalty != 1.0 and recent:
            ids = torch.tensor(sorted(set(recent)), device=logits.device)
            picked = logits[ids]
            logits[ids] = torch.where(picked > 0, picked / sampling.repeat_penalty, picked * sampling.repeat_penalty)
        if (sampling.presence_penalty or sampling.frequency_penalty) and counts:
            ids = torch.tensor(list(counts), device=logits.device)
            seen = torch.tensor(list(counts.values()), device=logits.device, dtype=logits.dtype)
            logits[ids] -= sampling.presence_penalty + sampling.frequency_penalty * seen
        if sampling.greedy:
            return int(torch.argmax(logits))
        logits = logits / sampling.temperature
        if 0 < sampling.top_k < logits.shape[-1]:
            kth = torch.topk(logits, sampling.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if sampling.min_p > 0:
            probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0.0)
        if sampling.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            # keep the smallest set whose mass reaches top_p (the first token always stays)
            drop = (torch.cumsum(ordered, dim=-1) - ordered) >= sampling.top_p * ordered.sum()
            probs = probs.scatter(0, order, ordered.masked_fill(drop, 0.0))
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    # ------------------------------------------------------------ generation

    def _reuse(self, tokens: list[int]) -> tuple[Any, int]:
        """The KV cache to continue from and how many of ``tokens`` it already holds (at least one token
        is always evaluated: its logits give the first new token)."""
        from transformers import DynamicCache

        keep = min(common_prefix(self._past_tokens, tokens), len(tokens) - 1) if self._past is not None else 0
        if keep > 0 and self._crop_ok:
            try:
                extra = int(self._past.get_seq_length()) - keep
                if extra > 0:
                    # a negative count removes that many tokens, in transformers 4 and 5 alike
                    self._past.crop(-extra)
                return self._past, keep
            except Exception as exc:  # sliding-window or hybrid caches: evaluate in full from now on
                log.info("%s: its KV cache cannot be cropped (%s); prompts are evaluated in full", self.name, exc)
                self._crop_ok = False
        self._past, self._past_tokens = None, []
        return DynamicCache(), 0

    def _start(self, request: Generate, emit: Emit, cancelled: Cancelled) -> RowGeneration:
        """The request's prompt tokens, limits and sampling checked (a WorkerError fails it alone)."""
        p = request.params
        rendered = self._template(request.messages, prompt_tools(request), template_options(request))
        tokens = self._encode(rendered)
        ctx = self._context_length or 1 << 30
        if len(tokens) >= ctx:
            raise WorkerError(ErrorCode.CONTEXT_OVERFLOW, f"the prompt has {len(tokens)} tokens; the context of "
                              f"{self.name} is {ctx}", param="messages")
        max_tokens = min(p.max_tokens if p.max_tokens is not None else ctx, ctx - len(tokens))
        if max_tokens < 1:
            raise WorkerError(ErrorCode.BAD_REQUEST, "max_tokens must be at least 1", param="max_tokens")
        return RowGeneration(request=request, emit=emit, cancelled=cancelled, prompt=tokens, max_tokens=max_tokens,
                             sampling=resolve_sampling(p, self._model_defaults), bias=self._bias(request),
                             output=ChatOutput(request, reasoning_open=opens_reasoning(rendered),
                                               parser=self.tool_parser),
                             decoder=IncrementalDecoder(self._tokenizer, self._hidden), eos=frozenset(self._eos),
                             choose_token=self._next_token)

    def generate(self, request: Generate, emit: Emit, cancelled: Cancelled) -> GenerationResult:
        return self._generate_alone(self._start(request, emit, cancelled))

    def _generate_alone(self, row: RowGeneration) -> GenerationResult:
        """One request, one token at a time over ``model(...)``, continuing from the previous prompt's cache."""
        import torch

        tokens = row.prompt
        past, reused = self._reuse(tokens)
        row.cached_tokens = reused
        fed = tokens[:reused]  # the tokens the cache holds
        pending = tokens[reused:]
        self._past = None  # half-written while we run: reused only once the loop ends cleanly
        with torch.inference_mode():
            while True:
                if row.cancelled():
                    row.abort()
                    break
                ids = torch.tensor([pending], device=self._device)
                # the cache object is updated in place; logits of the last position only
                out = self._model(input_ids=ids, use_cache=True, **{self._cache_arg: past}, **self._last_logits)
                fed += pending
                token = row.choose(out.logits[0, -1, :])
                if row.accept(token):
                    break
                pending = [token]
        self._past, self._past_tokens = past, fed
        return row.result()

    def generate_batch(self, jobs: list[GenerationJob]) -> None:
        """Requests waiting together: one alone keeps the prefix-reusing loop; several go through one
        ``model.generate`` over their left-padded prompts (workers/transformers_batch.py), each answered
        as soon as it ends."""
        rows: list[RowGeneration] = []
        replies: dict[int, Callable[[GenerationResult | Exception], None]] = {}
        for job in jobs:
            try:
                row = self._start(job.request, job.emit, job.cancelled)
            except WorkerError as exc:  # this request alone: the others go on
                job.reply(exc)
                continue
            rows.append(row)
            replies[id(row)] = job.reply
        if len(rows) == 1:
            replies[id(rows[0])](self._generate_alone(rows[0]))
        elif rows:
            generate_together(self._model, rows, self._pad_token(), self._device,
                              ended=lambda row: replies[id(row)](row.result()))

    def _pad_token(self) -> int:
        """What fills the left of a shorter prompt (masked out): the tokenizer's pad token, else an EOS."""
        for pad in (self._tokenizer.pad_token_id, self._tokenizer.eos_token_id):
            if pad is not None:
                return int(pad)
        return min(self._eos, default=0)
