"""Speech-to-text worker (``acore-worker --provider whisper --model DIR``, listed as ``whisper/<name>``).

transformers' Whisper (WhisperForConditionalGeneration + WhisperProcessor) from a local directory,
strictly offline, loaded once. Audio is decoded (workers/audio.py), resampled to the feature
extractor's rate and transcribed in 30-second windows, each window one segment (its start and end
are the window's), which is what the srt/vtt/verbose_json renderings use.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

from protocol.messages import Capabilities, ErrorCode, Transcribe
from workers.audio import decode_audio, resample
from workers.backend import Backend, BackendInfo, ModelLoadError, WorkerError

log = logging.getLogger("acore.worker.whisper")

WINDOW_S = 30.0  # Whisper's input window
MAX_AUDIO_S = 4 * 3600.0
DEFAULT_MAX_NEW_TOKENS = 128


class WhisperBackend(Backend):
    provider = "whisper"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._model: Any = None
        self._processor: Any = None
        self._torch: Any = None
        self.max_new_tokens = options.get("max_new_tokens")  # else the checkpoint's generation config says

    def load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        directory = Path(self.model).expanduser()
        if not directory.is_dir():
            raise ModelLoadError(f"whisper model directory {self.model} does not exist (pass a directory with "
                                 "config.json, the weights and the processor files)")
        try:
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
        except ImportError as exc:
            raise ModelLoadError(f"the whisper worker needs torch and transformers: {exc}") from None
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            self._processor = WhisperProcessor.from_pretrained(str(directory), local_files_only=True)
            self._model = WhisperForConditionalGeneration.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a Whisper model from {directory}: {exc}") from None
        self._model.eval()
        self._torch = torch

    def unload(self) -> None:
        self._model = self._processor = None
        gc.collect()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def info(self) -> BackendInfo:
        return BackendInfo(capabilities=Capabilities(transcription=True))

    def _generate_kwargs(self, request: Transcribe) -> dict[str, Any]:
        config = self._model.generation_config
        # The start tokens count against the decoder's positions (448 on real checkpoints).
        room = int(self._model.config.max_target_positions) - 8
        wanted = self.max_new_tokens or getattr(config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
        kwargs: dict[str, Any] = {"max_new_tokens": max(1, min(int(wanted), room))}
        # A multilingual checkpoint knows its tasks and languages; a bare one (the tiny test model) does not.
        if getattr(config, "task_to_id", None):
            kwargs["task"] = request.task
        if request.language and getattr(config, "lang_to_id", None):
            kwargs["language"] = request.language
        if request.temperature:
            kwargs.update(do_sample=True, temperature=float(request.temperature))
        return kwargs

    def transcribe(self, request: Transcribe, audio: bytes) -> dict[str, Any]:
        samples, rate = decode_audio(audio)
        duration = len(samples) / rate
        if duration > MAX_AUDIO_S:
            raise WorkerError(ErrorCode.TOO_LARGE, f"audio longer than {MAX_AUDIO_S / 3600:.0f} hours", param="file")
        target = int(self._processor.feature_extractor.sampling_rate)
        samples = resample(samples, rate, target)
        window = int(WINDOW_S * target)
        kwargs = self._generate_kwargs(request)
        segments: list[dict[str, Any]] = []
        for start in range(0, max(1, len(samples)), window):
            piece = samples[start:start + window]
            features = self._processor(piece, sampling_rate=target, return_tensors="pt").input_features
            with self._torch.inference_mode():
                ids = self._model.generate(features, **kwargs)
            text = self._processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
            segments.append({"id": len(segments), "start": round(start / target, 3),
                             "end": round(min(len(samples), start + window) / target, 3), "text": text,
                             "tokens": [int(t) for t in ids[0].tolist()]})
        return {"text": " ".join(s["text"] for s in segments if s["text"]), "language": request.language or "english",
                "duration": round(duration, 3), "segments": segments}
