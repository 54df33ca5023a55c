"""Hugging Face Hub ids as ``--model`` takes them, and where the Hub cache lives.

Both sides need the syntax: the gateway to name a configured worker before it runs, the worker
to download it (workers/hub.py). Nothing here touches the network or imports huggingface_hub.

- ``ORG/REPO``: the repo (MLX, sentence-transformers, transformers; llama.cpp picks a quant);
- ``ORG/REPO:QUANT``: a GGUF repo and a quant tag, as llama-server's ``-hf`` takes it;
- ``ORG/REPO/FILE.gguf`` (the file may sit in folders): one GGUF file, or the first part of a split
  GGUF (``…-00001-of-0000N.gguf``), whose other parts come with it;
- ``ORG/REPO/PATH/VOICE.onnx``: a Piper voice (``--provider tts``), its ``VOICE.onnx.json`` with it,
  as rhasspy/piper-voices publishes them.

A path that exists, or that starts with ``/``, ``.`` or ``~``, is a path, never a Hub id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# The Hub's own rule for a repo's owner and name: letters, digits, "-", "_" and ".", not starting with
# a separator.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?::(?P<quant>[A-Za-z0-9._-]+)|/(?P<file>[^:]+\.(?:gguf|onnx)))?$",
                     re.IGNORECASE)
# A split GGUF's part suffix: model-00001-of-00003.gguf
SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HubId:
    repo: str  # ORG/REPO
    quant: str | None = None  # ORG/REPO:QUANT
    file: str | None = None  # ORG/REPO/FILE.gguf (or a Piper VOICE.onnx): the path inside the repo

    @property
    def gguf(self) -> bool:
        """Names a GGUF (a quant or a file): served by llama.cpp."""
        return self.quant is not None or (self.file is not None and self.file.lower().endswith(".gguf"))

    @property
    def piper_voice(self) -> bool:
        """Names a Piper voice (an .onnx file): served by the tts worker."""
        return self.file is not None and self.file.lower().endswith(".onnx")

    @property
    def default_name(self) -> str:
        """The name it is served under without --name: the GGUF file's stem (without a split suffix),
        else the repo's last path part."""
        if self.piper_voice:
            return Path(self.file or "").stem
        if self.file is not None:
            return SPLIT_GGUF.sub("", Path(self.file).name).removesuffix(".gguf").removesuffix(".GGUF")
        return self.repo.split("/", 1)[1]

    def __str__(self) -> str:
        if self.quant is not None:
            return f"{self.repo}:{self.quant}"
        return f"{self.repo}/{self.file}" if self.file is not None else self.repo


def parse_hub_id(model: str) -> HubId | None:
    """The Hub id ``model`` spells, or None when it is (or looks like) a local path."""
    if not model or model.startswith(("/", ".", "~")) or Path(model).exists():
        return None
    match = _HUB_ID.match(model)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        return None
    return HubId(repo=match["repo"], quant=match["quant"], file=match["file"])


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, by its own rules (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_snapshots(repo: str) -> list[Path]:
    """The repo's snapshot folders already in the local cache (newest first), without the network."""
    folder = hub_cache_dir() / ("models--" + repo.replace("/", "--")) / "snapshots"
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
