"""Audio on the worker side: uploaded files to samples, synthesised samples to a streamed body.

Reading: WAV (PCM 8/16/24/32-bit and float) here, with no dependency; flac, ogg (Vorbis, Opus) and
mp3 with ``soundfile`` (its wheels carry libsndfile with LAME and mpg123); what libsndfile cannot
read (m4a/mp4 with AAC, webm) with PyAV (``av``: ffmpeg's libraries in its wheels).

Speech leaves as it is made: a WAV header first (with the streaming "unknown length" sizes) then
16-bit samples; raw 16-bit PCM at OpenAI's 24 kHz; mp3 and opus (in ogg) at 24 kHz, encoded by
libsndfile block by block, each block's bytes sent once the encoder wrote them; aac in ADTS frames
by PyAV, the same way; flac whole at the end (its header, written last, holds the length).
"""

from __future__ import annotations

import importlib
import io
import struct
from typing import Any

import numpy as np

from protocol.messages import ErrorCode
from workers.backend import WorkerError

MAX_AUDIO_SECONDS = 3600  # decoded audio per request: a 25 MB upload at a low bitrate could hold hours
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
    """Mono float32 samples in [-1, 1] and their sample rate: WAV here, flac/ogg/mp3 with libsndfile,
    the containers it cannot read (m4a/mp4 AAC, webm) with PyAV's ffmpeg. At most MAX_AUDIO_SECONDS."""
    if data[:4] == b"RIFF":
        return _read_wav(data)
    try:
        import soundfile
    except ImportError:
        return _decode_with_av(data, None)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as source:
            # read to the end, not to the frame count the header states: a streamed flac or mp3 says
            # "unknown" (or a placeholder) there
            rate = source.samplerate
            blocks: list[np.ndarray] = []
            budget = MAX_AUDIO_SECONDS * rate
            while len(block := source.read(65536, dtype="float32", always_2d=True)):
                blocks.append(block.mean(axis=1))
                budget -= len(block)
                if budget < 0:
                    raise _too_long()
    except WorkerError:
        raise
    except Exception as exc:  # libsndfile's own errors: not a format it reads (or a broken file)
        return _decode_with_av(data, exc)
    if not blocks:
        return np.zeros(0, dtype=np.float32), int(rate)
    return np.concatenate(blocks).astype(np.float32), int(rate)


def _too_long() -> WorkerError:
    return WorkerError(ErrorCode.TOO_LARGE, f"the audio is longer than {MAX_AUDIO_SECONDS // 60} minutes",
                       param="file")


def _decode_with_av(data: bytes, earlier: Exception | None) -> tuple[np.ndarray, int]:
    """PyAV (ffmpeg's demuxers and decoders in its wheels) for what libsndfile does not read."""
    try:
        import av
    except ImportError:
        reason = f"cannot decode the audio: {earlier}" if earlier else "this worker reads WAV files only"
        raise _bad(f"{reason} (m4a, mp4 and webm need the av package: pip install 'acore[media]')") from None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise _bad("the file has no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or 16_000)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            pieces: list[np.ndarray] = []
            budget = MAX_AUDIO_SECONDS * rate
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    budget -= out.samples
                if budget < 0:
                    raise _too_long()
            for out in resampler.resample(None):  # what the resampler still holds
                pieces.append(out.to_ndarray().reshape(-1))
    except WorkerError:
        raise
    except Exception as exc:  # ffmpeg's own errors (av.FFmpegError and the like): not audio it knows
        raise _bad(f"cannot decode the audio: {exc}") from None
    if not pieces:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(pieces).astype(np.float32), rate


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


# response_format -> (content type, libsndfile format and subtype; None: written here without it)
SPEECH_ENCODINGS: dict[str, tuple[str, tuple[str, str] | None]] = {
    "wav": ("audio/wav", None),
    "pcm": ("audio/pcm", None),
    "mp3": ("audio/mpeg", ("MP3", "MPEG_LAYER_III")),
    "opus": ("audio/ogg", ("OGG", "OPUS")),
    "flac": ("audio/flac", ("FLAC", "PCM_16")),
    "aac": ("audio/aac", ("ADTS", "AAC")),  # libsndfile has no AAC: PyAV's encoder (_AdtsWriter)
}


class _Tap(io.RawIOBase):
    """A seekable in-memory file for libsndfile's writer: ``take()`` returns what was appended since the
    last take. What an encoder rewrites at close before that point (mp3's header frame) stays as it
    was sent: mp3 is written at a constant bitrate so that its length needs no header."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = io.BytesIO()
        self._sent = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._buffer.write(data)

    def readinto(self, target: Any) -> int:
        return self._buffer.readinto(target)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._buffer.seek(offset, whence)

    def tell(self) -> int:
        return self._buffer.tell()

    def whole(self) -> bytes:
        return self._buffer.getvalue()

    def take(self) -> bytes:
        data = self._buffer.getbuffer()[self._sent:].tobytes()
        self._sent += len(data)
        return data


class _AdtsWriter:
    """AAC in ADTS frames (a stream that needs no header) through PyAV's encoder, written into ``tap`` as
    each frame is encoded; the same ``write``/``close`` as a soundfile.SoundFile."""

    def __init__(self, tap: _Tap, rate: int) -> None:
        import av

        self._av = av
        self._rate = rate
        self._muxer = av.open(tap, mode="w", format="adts")
        self._stream = self._muxer.add_stream("aac", rate=rate)
        self._stream.layout = "mono"  # type: ignore[union-attr]
        self._pts = 0

    def write(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        frame = self._av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.rate, frame.pts = self._rate, self._pts
        self._pts += len(samples)
        for packet in self._stream.encode(frame):  # type: ignore[union-attr]
            self._muxer.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode(None):  # type: ignore[union-attr]
            self._muxer.mux(packet)
        self._muxer.close()


class SpeechEncoder:
    """Turns synthesised sample blocks into the response body's bytes as they come."""

    def __init__(self, response_format: str) -> None:
        encoding = SPEECH_ENCODINGS.get(response_format)
        if encoding is None:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"response_format {response_format} is not made here: use "
                                                     f"{', '.join(SPEECH_ENCODINGS)}", param="response_format")
        self.response_format = response_format
        self.content_type, self._libsndfile = encoding
        self._started = False
        # pcm and the encoded formats are resampled to 24 kHz block by block: the input position
        # carried over keeps blocks seamless
        self._carry = np.zeros(0, dtype=np.float32)
        self._offset = 0.0
        self._tap: _Tap | None = None
        self._file: Any = None
        self._whole = False
        if self._libsndfile is not None:
            container, subtype = self._libsndfile
            package = "av" if container == "ADTS" else "soundfile"
            try:
                encoder_module = importlib.import_module(package)
            except ImportError:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"response_format {response_format} needs the {package} "
                                                         "package on the worker (the media extra); wav and pcm "
                                                         "need nothing", param="response_format") from None
            self._tap = _Tap()
            if container == "ADTS":
                self._file = _AdtsWriter(self._tap, PCM_RATE)
                return
            # mp3 at a constant bitrate: the header frame a streamed copy carries is the placeholder (its
            # frame count is filled in at close), so decoders take the length from size and bitrate
            self._file = encoder_module.SoundFile(self._tap, mode="w", samplerate=PCM_RATE, channels=1,
                                             format=container, subtype=subtype,
                                             compression_level=0.5 if container == "MP3" else None,
                                             bitrate_mode="CONSTANT" if container == "MP3" else None)
            # flac goes out whole at the end: its header (total length) is written last, and libsndfile
            # itself cannot read a flac whose header says "unknown" to its end
            self._whole = container == "FLAC"

    def finish(self) -> bytes:
        """The encoder's last bytes (its buffered frames, the stream's end): sent after the last block."""
        if self._file is None or self._tap is None:
            return b""
        self._file.close()
        self._file = None
        return self._tap.whole() if self._whole else self._tap.take()

    def close(self) -> None:
        """Give the encoder back without sending anything more (a cancelled or failed request)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def encode(self, block: np.ndarray, rate: int) -> bytes:
        samples = block.astype(np.float32) / 32768.0 if block.dtype == np.int16 else block.astype(np.float32)
        head = b""
        if not self._started:
            self._started = True
            if self.response_format == "wav":
                head = wav_header(rate)
        if self.response_format == "wav":
            return head + to_int16(samples)
        resampled = self._resample_block(samples, rate)
        if self._file is None or self._tap is None:
            return head + to_int16(resampled)
        self._file.write(resampled)
        if self._whole:
            return b""
        return self._tap.take()  # what the encoder has made of it so far (mp3 frames wait for 1,152 samples)

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
