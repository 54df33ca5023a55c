"""Piper voices for the tts worker: ``acore-worker --provider tts --model VOICE.onnx`` (listed as ``tts/VOICE``).

A Piper voice is a VITS model exported to ONNX beside its ``VOICE.onnx.json`` (sample rate, eSpeak
voice, phoneme ids, speakers), as published in rhasspy/piper-voices. ``piper-tts`` phonemizes the
text with its own embedded eSpeak NG and runs the model on onnxruntime, one sentence at a time: each
sentence's audio leaves for the gateway as soon as it is made. ``speed`` scales the phoneme lengths
(Piper's ``length_scale``); OpenAI's voice names take the voice's default speaker, and a
multi-speaker voice takes its own speaker names too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.messages import ErrorCode, Speak
from workers.backend import Cancelled, EmitAudio, ModelLoadError, WorkerError

CONFIG_SUFFIX = ".json"  # VOICE.onnx -> VOICE.onnx.json, Piper's own convention


def piper_voice_file(model: str) -> Path | None:
    """The voice's .onnx file when ``model`` names one (the file, or a directory holding exactly one), else None."""
    path = Path(model).expanduser()
    if path.suffix == ".onnx":
        return path
    if path.is_dir():
        voices = sorted(path.glob("*.onnx"))
        if len(voices) == 1:
            return voices[0]
    return None


class PiperSpeaker:
    """One loaded Piper voice (its onnxruntime session), used from the model thread only."""

    def __init__(self, voice_file: Path, openai_voices: frozenset[str]) -> None:
        self.voice_file = voice_file
        self.config_file = voice_file.with_name(voice_file.name + CONFIG_SUFFIX)
        self._openai_voices = openai_voices
        self._voice: Any = None

    def load(self, threads: int | None) -> None:
        try:
            from piper import PiperVoice
        except ImportError:
            raise ModelLoadError("Piper voices need the piper-tts package (pip install 'acore[media]')") from None
        if not self.voice_file.is_file():
            raise ModelLoadError(f"Piper voice {self.voice_file} does not exist")
        if not self.config_file.is_file():
            raise ModelLoadError(f"Piper voice {self.voice_file} has no {self.config_file.name} beside it (the "
                                 "voice's config, published with it)")
        try:
            import onnxruntime
            from piper import PiperConfig

            config = PiperConfig.from_dict(json.loads(self.config_file.read_text(encoding="utf-8")))
            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(self.voice_file), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
        except (OSError, ValueError, KeyError) as exc:  # includes a malformed config (JSONDecodeError)
            raise ModelLoadError(f"cannot load Piper voice {self.voice_file}: {exc}") from None
        except Exception as exc:  # onnxruntime's own errors: not an ONNX model, or not one Piper can run
            raise ModelLoadError(f"cannot load Piper voice {self.voice_file}: {exc}") from None
        voice = PiperVoice(session=session, config=config)
        self._voice = voice

    def unload(self) -> None:
        self._voice = None

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    def _speaker_id(self, voice: str | None) -> int | None:
        config = self._voice.config
        if not voice or voice.lower() in self._openai_voices:
            return None  # the voice's default speaker
        if voice in config.speaker_id_map:
            return int(config.speaker_id_map[voice])
        named = ", ".join(sorted(config.speaker_id_map)[:10])
        raise WorkerError(ErrorCode.BAD_REQUEST, f"voice {voice!r} is not a speaker of this Piper voice: use an "
                                                 f"OpenAI voice name{' or one of ' + named if named else ''}",
                          param="voice")

    def speak(self, request: Speak, emit: EmitAudio, cancelled: Cancelled) -> None:
        from piper import SynthesisConfig

        voice = self._voice
        speaker = self._speaker_id(request.voice)
        speed = request.speed or 1.0
        settings = SynthesisConfig(speaker_id=speaker, length_scale=voice.config.length_scale / speed)
        for chunk in voice.synthesize(request.input, syn_config=settings):
            if cancelled():
                return
            emit(chunk.audio_float_array, chunk.sample_rate)
