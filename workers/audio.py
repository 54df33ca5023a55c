"""Audio on the worker side: uploaded files to samples, synthesised samples to a streamed WAV or PCM body.

WAV (PCM 8/16/24/32-bit and float) is read here with no dependency; other containers (flac, ogg,
mp3) need ``soundfile`` (libsndfile), used when it is installed. Speech leaves as it is made: a
WAV header first (with the streaming "unknown length" sizes) then 16-bit samples, or raw 16-bit
PCM at OpenAI's 24 kHz.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from protocol.messages import ErrorCode
from workers.backend import WorkerError

PCM_RATE = 24_000  # OpenAI's response_format=pcm: 24 kHz, 16-bit signed little-endian, mono
STREAMING_SIZE = 0xFFFFFFFF  # a WAV header's size fields when the length is not known yet


def _bad(message: str) -> WorkerError:
    return WorkerError(ErrorCode.BAD_REQUEST, message, param="file")


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _bad("not a WAV file")
    position, fmt, samples, sub_format = 12, None, None, None
    while position + 8 <= len(data):
        chunk_id, size = data[position:position + 4], struct.unpack_from("<I", data, position + 4)[0]
        body = data[position + 8:position + 8 + min(size, len(data))]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise _bad("WAV fmt chunk is too short")
            fmt = struct.unpack_from("<HHIIHH", body)
            if len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the real tag
                sub_format = struct.unpack_from("<H", body, 24)[0]
        elif chunk_id == b"data":
            samples = body
            break
        position += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise _bad("WAV file without fmt or data chunk")
    format_tag, channels, rate, _byte_rate, _align, bits = fmt
    if format_tag == 0xFFFE and sub_format is not None:
        format_tag = sub_format
    if channels < 1 or rate < 1000:
        raise _bad("WAV file with no channels or an implausible sample rate")
    width = bits // 8
    usable = len(samples) - len(samples) % (width * channels)
    raw = samples[:usable]
    if format_tag == 3 and bits == 32:
        audio = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif format_tag == 1 and bits == 16:
        audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif format_tag == 1 and bits == 8:
        audio = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif format_tag == 1 and bits == 32:
        audio = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    elif format_tag == 1 and bits == 24:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        audio = (np.where(values & 0x800000, values - (1 << 24), values)).astype(np.float32) / 8388608.0
    else:
        raise _bad(f"WAV encoding {format_tag} with {bits} bits is not supported (send PCM or float WAV)")
    return audio.reshape(-1, channels).mean(axis=1), int(rate)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and their sample rate."""
    if data[:4] == b"RIFF":
        return _read_wav(data)
    try:
        import soundfile
    except ImportError:
        raise _bad("this worker reads WAV files; other formats (flac, ogg, mp3) need the soundfile package") from None
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's own errors: the file is not what it claims
        raise _bad(f"cannot decode the audio: {exc}") from None
    return np.asarray(audio, dtype=np.float32).mean(axis=1), int(rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear interpolation: enough for speech models that take 16 kHz, and for 24 kHz PCM out."""
    if rate == target or not len(audio):
        return audio.astype(np.float32, copy=False)
    count = max(1, round(len(audio) * target / rate))
    positions = np.arange(count, dtype=np.float64) * (rate / target)
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)


def to_int16(audio: np.ndarray) -> bytes:
    if audio.dtype == np.int16:
        return audio.astype("<i2", copy=False).tobytes()
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int | None = None, channels: int = 1, bits: int = 16) -> bytes:
    """A RIFF/WAVE header; without ``data_bytes`` the sizes say "streaming, length unknown"."""
    size = STREAMING_SIZE if data_bytes is None else data_bytes
    riff = STREAMING_SIZE if data_bytes is None else 36 + data_bytes
    align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                                                            rate * align, align, bits)
            + b"data" + struct.pack("<I", size))


class SpeechEncoder:
    """Turns synthesised sample blocks into the response body's bytes as they come (wav or pcm)."""

    def __init__(self, response_format: str) -> None:
        if response_format not in ("wav", "pcm"):
            raise WorkerError(ErrorCode.BAD_REQUEST, f"response_format {response_format} is not supported here: "
                                                     "use wav or pcm", param="response_format")
        self.response_format = response_format
        self.content_type = "audio/wav" if response_format == "wav" else "audio/pcm"
        self._started = False
        # pcm is resampled to 24 kHz block by block: the input position carried over keeps blocks seamless
        self._carry = np.zeros(0, dtype=np.float32)
        self._offset = 0.0

    def encode(self, block: np.ndarray, rate: int) -> bytes:
        samples = block.astype(np.float32) / 32768.0 if block.dtype == np.int16 else block.astype(np.float32)
        head = b""
        if not self._started:
            self._started = True
            if self.response_format == "wav":
                head = wav_header(rate)
        if self.response_format == "wav":
            return head + to_int16(samples)
        return head + to_int16(self._resample_block(samples, rate))

    def _resample_block(self, samples: np.ndarray, rate: int) -> np.ndarray:
        if rate == PCM_RATE:
            return samples
        joined = np.concatenate([self._carry, samples])
        step = rate / PCM_RATE
        positions = np.arange(self._offset, len(joined) - 1, step)
        out = np.interp(positions, np.arange(len(joined)), joined).astype(np.float32)
        next_position = (positions[-1] + step) if len(positions) else self._offset
        keep = int(next_position)  # samples before this are never needed again
        self._carry = joined[keep:]
        self._offset = next_position - keep
        return out
