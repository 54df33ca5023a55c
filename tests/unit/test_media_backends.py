"""The media parts that need no server: audio decoding and encoding, transcript renderings, the tts
backend in-process, the entry-point loader, the Files store's TTL."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import wave
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from gateway.doors.files import DiskIndex, FileStore
from gateway.doors.media import MediaBackends
from gateway.errors import GatewayError
from gateway.media_backends import GROUP, register_entry_point
from gateway.providers.media import encode_multipart, render_transcript
from media.audio import sniff_audio, sniff_image
from protocol.messages import Speak
from tests.media_files import png_bytes, wav_bytes
from workers.audio import PCM_RATE, SpeechEncoder, decode_audio, wav_header
from workers.backend import WorkerError
from workers.tts_backend import TTSBackend

TRANSCRIPT = {"text": "hello world", "language": "english", "duration": 62.5,
              "segments": [{"start": 0.0, "end": 30.0, "text": " hello"}, {"start": 30.0, "end": 62.5, "text": "world"}]}


def test_transcript_renderings() -> None:
    assert render_transcript(TRANSCRIPT, "json", "transcribe") == (b'{"text":"hello world"}', "application/json")
    assert render_transcript(TRANSCRIPT, "text", "transcribe")[0] == b"hello world\n"
    srt = render_transcript(TRANSCRIPT, "srt", "transcribe")[0].decode()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\nhello\n\n2\n00:00:30,000 --> 00:01:02,500\nworld\n")
    vtt = render_transcript(TRANSCRIPT, "vtt", "transcribe")[0].decode()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\nhello")
    verbose = json.loads(render_transcript(TRANSCRIPT, "verbose_json", "translate")[0])
    assert verbose["task"] == "translate" and verbose["duration"] == 62.5 and len(verbose["segments"]) == 2


def _wav(samples: bytes, width: int, rate: int = 8000, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(samples)
    return out.getvalue()


def test_decode_wav_widths_channels_and_streaming_header() -> None:
    audio, rate = decode_audio(wav_bytes(0.25, rate=16000))
    assert rate == 16000 and len(audio) == 4000 and 0.3 < float(np.abs(audio).max()) < 0.4
    assert decode_audio(_wav(bytes([128, 255, 0]), 1))[0].tolist() == pytest.approx([0.0, 127 / 128, -1.0])
    stereo = decode_audio(_wav(struct.pack("<4h", 16384, -16384, 8192, 8192), 2, channels=2))[0]
    assert stereo.tolist() == pytest.approx([0.0, 0.25])
    three = decode_audio(_wav(b"\x00\x00\x40" + b"\x00\x00\xc0", 3))[0]
    assert three.tolist() == pytest.approx([0.5, -0.5])
    streamed = wav_header(8000) + struct.pack("<3h", 0, 16384, -16384)  # sizes 0xFFFFFFFF: read to the end
    assert decode_audio(streamed)[0].tolist() == pytest.approx([0.0, 0.5, -0.5])
    with pytest.raises(WorkerError):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunk")


def test_speech_encoder_wav_and_seamless_pcm() -> None:
    wav = SpeechEncoder("wav")
    first = wav.encode(np.zeros(100, dtype=np.int16), 22050)
    assert first[:4] == b"RIFF" and struct.unpack_from("<I", first, 24)[0] == 22050 and len(first) == 44 + 200
    assert len(wav.encode(np.zeros(10, dtype=np.int16), 22050)) == 20  # the header only once
    pcm = SpeechEncoder("pcm")
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 10000).astype(np.int16)
    out = b"".join(pcm.encode(block, 22050) for block in np.array_split(tone, 37))
    assert abs(len(out) // 2 - PCM_RATE) <= 2  # one second at 24 kHz, however the blocks fell
    joined = np.frombuffer(out, dtype="<i2").astype(float)
    assert np.abs(np.diff(joined)).max() < 1500  # no clicks at block edges (a 440 Hz tone at this amplitude)
    with pytest.raises(WorkerError):
        SpeechEncoder("ogg-vorbis")  # not one of OpenAI's response formats


@pytest.mark.parametrize(("kind", "streams"), [("mp3", True), ("opus", True), ("aac", True), ("flac", False)])
def test_speech_encoder_compressed_formats_decode_back(kind: str, streams: bool) -> None:
    """What the worker streams, concatenated as a client receives it, is a file libsndfile reads back whole."""
    encoder = SpeechEncoder(kind)
    tone = (np.sin(np.arange(22050 * 2) * 2 * np.pi * 440 / 22050) * 0.3).astype(np.float32)
    pieces = [encoder.encode(block, 22050) for block in np.array_split(tone, 40)]
    tail = encoder.finish()
    assert any(pieces) is streams  # mp3 and opus leave as they are encoded, flac whole at the end
    audio, rate = decode_audio(b"".join(pieces) + tail)
    assert rate == PCM_RATE
    assert len(audio) / rate == pytest.approx(2.0, abs=0.15)  # mp3 and aac add their encoder delay and padding
    level = float(np.sqrt(np.mean(audio[rate // 2: rate] ** 2)))
    assert level == pytest.approx(0.3 / np.sqrt(2), rel=0.15)  # the tone, not silence or noise
    encoder.close()  # after finish: nothing left to give back


def test_decode_reads_compressed_uploads_to_the_end() -> None:
    for container, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        out = io.BytesIO()
        soundfile.write(out, np.full(16000, 0.25, dtype=np.float32), 16000, format=container, subtype=subtype)
        audio, rate = decode_audio(out.getvalue())
        assert rate == 16000 and len(audio) / rate == pytest.approx(1.0, abs=0.1), container
    with pytest.raises(WorkerError):
        decode_audio(b"fLaC" + b"\x00" * 100)


def test_sniffing_by_bytes() -> None:
    assert sniff_audio(wav_bytes(0.01)) == "wav" and sniff_audio(b"fLaC....") == "flac"
    assert sniff_audio(b"OggS....") == "ogg" and sniff_audio(b"ID3\x04") == "mp3" and sniff_audio(b"hello") is None
    assert sniff_image(png_bytes()) == "png" and sniff_image(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_image(wav_bytes(0.01)) is None


def test_multipart_encoding_keeps_fields_and_files() -> None:
    from email.parser import BytesParser
    from email.policy import HTTP

    from gateway.providers.media import Upload

    body, content_type = encode_multipart({"model": "m", "n": 2, "tags": ["a", "b"]},
                                          [Upload("file", 'we"ird.wav', "audio/wav", b"RIFF\x00\r\n--x")])
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = list(message.iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["model", "n", "tags", "tags", "file"]
    assert parts[1].get_content() == "2" and parts[-1].get_payload(decode=True) == b"RIFF\x00\r\n--x"


def test_espeak_backend_streams_blocks() -> None:
    backend = TTSBackend("espeak-ng", "espeak-ng", {})
    backend.load()
    blocks: list[tuple[int, int]] = []
    backend.speak(Speak(request_id="r", input="Streaming speech comes out in blocks. " * 3),
                  lambda samples, rate: blocks.append((len(samples), rate)), lambda: False)
    assert len(blocks) > 3 and {rate for _, rate in blocks} == {backend.sample_rate}
    assert sum(n for n, _ in blocks) > backend.sample_rate  # seconds of audio
    stopped: list[int] = []
    backend.speak(Speak(request_id="r", input="This one is cancelled. " * 20),
                  lambda samples, rate: stopped.append(len(samples)), lambda: len(stopped) >= 2)
    assert len(stopped) == 2
    with pytest.raises(WorkerError):
        backend.speak(Speak(request_id="r", input="x", voice="klingon-prime"), lambda s, r: None, lambda: False)


def register_fake(backends: MediaBackends, config: Any) -> None:
    async def handler(request: Any) -> Any:
        raise NotImplementedError

    backends.register("/v1/audio/speech", handler)


def register_broken(backends: MediaBackends, config: Any) -> None:
    backends.register("/v1/no/such/route", register_broken)  # type: ignore[arg-type]


def test_entry_points_register_and_broken_ones_are_skipped() -> None:
    backends = MediaBackends()
    good = EntryPoint("fake", f"{__name__}:register_fake", GROUP)
    assert register_entry_point(good, backends, None)  # type: ignore[arg-type]
    assert list(backends.handlers) == ["/v1/audio/speech"]
    assert not register_entry_point(EntryPoint("broken", f"{__name__}:register_broken", GROUP), backends, None)  # type: ignore[arg-type]
    assert not register_entry_point(EntryPoint("gone", "no_such_module:register", GROUP), backends, None)  # type: ignore[arg-type]


def test_file_store_expires_and_checks_ids(tmp_path: Path) -> None:
    store = FileStore(tmp_path, DiskIndex(tmp_path), max_total_bytes=1000, ttl_s=-1, max_file_bytes=100)

    async def add_then_get() -> int:
        meta = await store.add(b"short lived", "a.txt", "user_data")
        try:
            await store.get(meta["id"])  # already past its TTL: gone, and deleted
        except GatewayError as exc:
            return exc.status
        return 200

    assert asyncio.run(add_then_get()) == 404
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    for bad in ("../x", "file-ZZZ", "file-" + "a" * 23):
        with pytest.raises(GatewayError):
            store.path(bad)


def test_upstream_model_ids_listed_by_type() -> None:
    from gateway.providers.base import ModelType
    from gateway.providers.openai_compat import model_type_of

    assert model_type_of("whisper-1") is ModelType.AUDIO_TRANSCRIPTION
    assert model_type_of("gpt-4o-mini-transcribe") is ModelType.AUDIO_TRANSCRIPTION
    assert model_type_of("tts-1-hd") is ModelType.AUDIO_SPEECH
    assert model_type_of("dall-e-3") is ModelType.IMAGE_GENERATION and model_type_of("gpt-image-1") is ModelType.IMAGE_GENERATION
    assert model_type_of("text-embedding-3-small") is ModelType.EMBEDDING and model_type_of("gpt-4o") is ModelType.TEXT


def test_piper_voice_files_and_load_errors(tmp_path: Path) -> None:
    from protocol.local import default_name
    from workers.backend import ModelLoadError
    from workers.piper_voice import piper_voice_file
    from workers.tiny_media import write_tiny_piper_voice

    voice = write_tiny_piper_voice(tmp_path / "voice")
    assert piper_voice_file(str(tmp_path / "voice")) == voice  # a directory holding one voice
    assert piper_voice_file("espeak-ng") is None
    assert default_name("tts", str(voice)) == "tiny-voice"
    backend = TTSBackend(str(voice), "tiny-voice", {"threads": 1})
    backend.load()
    assert backend.loaded
    backend.unload()
    assert not backend.loaded
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(voice.read_bytes())  # no lonely.onnx.json beside it
    with pytest.raises(ModelLoadError, match=r"lonely\.onnx\.json"):
        TTSBackend(str(lonely), "lonely", {}).load()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    (tmp_path / "broken.onnx.json").write_text((tmp_path / "voice" / "tiny-voice.onnx.json").read_text())
    with pytest.raises(ModelLoadError, match="cannot load Piper voice"):
        TTSBackend(str(broken), "broken", {}).load()
    with pytest.raises(ModelLoadError, match="Piper voice"):
        TTSBackend("no-such-engine", "x", {})


@pytest.mark.parametrize(("container", "codec"), [("mp4", "aac"), ("webm", "libopus")])
def test_decode_reads_phone_and_browser_recordings(container: str, codec: str) -> None:
    """m4a (AAC in MP4) and webm (Opus) are not libsndfile's: PyAV's ffmpeg decodes them."""
    from tests.media_files import encoded_audio

    audio, rate = decode_audio(encoded_audio(container, codec, 1.5))
    assert rate == 48_000 and len(audio) / rate == pytest.approx(1.5, abs=0.05)
    level = float(np.sqrt(np.mean(audio[rate // 4: rate] ** 2)))
    assert level == pytest.approx(0.3 / np.sqrt(2), rel=0.15)


def test_decoded_audio_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.audio as audio_module
    from tests.media_files import encoded_audio

    monkeypatch.setattr(audio_module, "MAX_AUDIO_SECONDS", 1)
    for data in (encoded_audio("mp4", "aac", 2.0), encoded_audio("webm", "libopus", 2.0)):
        with pytest.raises(WorkerError) as caught:
            decode_audio(data)
        assert caught.value.code == "too_large" and caught.value.param == "file"
    out = io.BytesIO()
    soundfile.write(out, np.zeros(48_000 * 2, dtype=np.float32), 48_000, format="FLAC")
    with pytest.raises(WorkerError):
        decode_audio(out.getvalue())
    with pytest.raises(WorkerError) as caught:
        decode_audio(b"\x00\x01 not audio in any container")
    assert caught.value.code == "bad_request"
