"""Text-to-speech worker (``acore-worker --provider tts --model espeak-ng``, listed as ``tts/espeak-ng``;
``--model VOICE.onnx``: a Piper voice, workers/piper_voice.py).

The model-free default is eSpeak NG through its C library (the ``espeakng-loader`` wheel ships
libespeak-ng and its data; no system package needed), called with ctypes in synchronous mode:
the library calls back with a block of samples every ~50 ms of audio, and each block leaves for
the gateway at once, so a client hears the start before the rest is synthesised. The library
keeps global state: one worker process holds one instance, used from the model thread only.
OpenAI's voice names map to eSpeak voices; any eSpeak voice name (``de``, ``en-gb+f3``) works too.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

from protocol.messages import Capabilities, ErrorCode, Speak
from workers.backend import Backend, BackendInfo, Cancelled, EmitAudio, ModelLoadError, WorkerError
from workers.piper_voice import PiperSpeaker, piper_voice_file

log = logging.getLogger("acore.worker.tts")

ENGINES = ("espeak-ng",)
# OpenAI's voices -> an eSpeak voice (+ variant) of roughly that character.
OPENAI_VOICES = {"alloy": "en-us", "ash": "en-us+m3", "ballad": "en-gb+m2", "coral": "en-us+f2",
                 "echo": "en-us+m3", "fable": "en-gb", "onyx": "en-us+m7", "nova": "en-us+f3",
                 "sage": "en-us+f4", "shimmer": "en-us+f4", "verse": "en-us+m1", "marin": "en-us+f1",
                 "cedar": "en-us+m2"}
DEFAULT_VOICE = "en-us"
DEFAULT_RATE_WPM = 175  # eSpeak's own default; speed 1.0
BUFFER_MS = 50  # audio per callback: how soon the first block is ready

# espeak-ng's C constants (speak_lib.h)
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAMETER_RATE = 1

_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _load_library() -> tuple[Any, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise ModelLoadError("the tts worker needs the espeakng-loader package (pip install espeakng-loader)") from None
    try:
        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path()
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load libespeak-ng: {exc}") from None


class TTSBackend(Backend):
    provider = "tts"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._piper: PiperSpeaker | None = None
        if model not in ENGINES:
            voice_file = piper_voice_file(model)
            if voice_file is None:
                raise ModelLoadError(f"tts model {model!r} is not available: this worker speaks with "
                                     f"{', '.join(ENGINES)} (--model espeak-ng) or a Piper voice (--model "
                                     "VOICE.onnx, with VOICE.onnx.json beside it)")
            self._piper = PiperSpeaker(voice_file, frozenset(OPENAI_VOICES))
        self._lib: Any = None
        self.sample_rate = 0
        self._sink: EmitAudio | None = None
        self._cancelled: Cancelled | None = None
        self._callback = _Callback(self._on_audio)  # kept referenced for as long as the library may call it

    def load(self) -> None:
        if self._piper is not None:
            threads = self.options.get("threads")
            self._piper.load(int(threads) if threads else None)
            return
        if self._lib is not None:
            return
        lib, data_path = _load_library()
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path.encode(), INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise ModelLoadError(f"espeak-ng failed to initialise (status {rate})")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.sample_rate = lib, int(rate)

    # The eSpeak library stays loaded (it is small and global to the process): unload keeps it.
    def unload(self) -> None:
        if self._piper is not None:
            self._piper.unload()

    @property
    def loaded(self) -> bool:
        return self._piper.loaded if self._piper is not None else self._lib is not None

    def info(self) -> BackendInfo:
        return BackendInfo(capabilities=Capabilities(speech=True))

    def _on_audio(self, wav: Any, count: int, _events: Any) -> int:
        if self._cancelled is not None and self._cancelled():
            return 1  # non-zero: stop synthesising
        if wav and count > 0 and self._sink is not None:
            self._sink(np.ctypeslib.as_array(wav, shape=(count,)).copy(), self.sample_rate)
        return 0

    def speak(self, request: Speak, emit: EmitAudio, cancelled: Cancelled) -> None:
        if self._piper is not None:
            self._piper.speak(request, emit, cancelled)
            return
        lib = self._lib
        voice = OPENAI_VOICES.get((request.voice or "").lower(), request.voice or DEFAULT_VOICE)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"voice {request.voice!r} is not known to espeak-ng: use an "
                                                     "OpenAI voice name or an eSpeak voice such as en-us, de, fr",
                              param="voice")
        speed = request.speed or 1.0
        lib.espeak_SetParameter(PARAMETER_RATE, max(80, min(450, round(DEFAULT_RATE_WPM * speed))), 0)
        text = request.input.encode("utf-8")
        self._sink, self._cancelled = emit, cancelled
        try:
            status = lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        finally:
            self._sink, self._cancelled = None, None
        if status != 0 and not cancelled():
            raise WorkerError(ErrorCode.INTERNAL, f"espeak-ng failed to synthesise (status {status})")
