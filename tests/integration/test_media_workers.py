"""Local media workers behind the media routes, through the openai SDK: tts/espeak-ng (model-free),
whisper/ and diffusers/ on tiny random models built in the test (workers/tiny_media.py), and audio
in chat transcribed by the whisper worker."""

from __future__ import annotations

import base64
import io
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from openai import BadRequestError, OpenAI

from tests import http
from tests.media_files import png_bytes, wav_bytes
from tests.procs import Proc, start_gateway
from workers.audio import decode_audio

WANTED = {"tts/espeak-ng", "tts/tiny-voice", "whisper/tiny-whisper", "diffusers/tiny-sd"}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio-root")
    (root / "memo.wav").write_bytes(wav_bytes(0.5))
    return root


@pytest.fixture(scope="module")
def media_gw(log_dir: Path, fake_openai: Proc, media_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    from workers.tiny_media import write_tiny_diffusers, write_tiny_piper_voice, write_tiny_whisper

    models = tmp_path_factory.mktemp("models")
    voice = write_tiny_piper_voice(models / "piper", speakers=("amy", "bob"))
    whisper = write_tiny_whisper(models / "tiny-whisper")
    diffusers = write_tiny_diffusers(models / "tiny-sd")
    env = {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": "sk-test-server-key-123456",
           "ACORE_MEDIA_ROOTS": str(media_root), "ACORE_AUDIO_STRATEGY": "stt"}
    proc = start_gateway(log_dir, env, extra_args=["--worker", "tts:espeak-ng", "--worker", f"tts:{voice}",
                                                   "--worker", f"whisper:{whisper}",
                                                       "--worker", f"diffusers:{diffusers}"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = {m["id"] for m in http.get_json(proc.url + "/v1/models", timeout=5)["data"]
                     if m.get("state") == "ready"}
            if WANTED <= ready:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the media workers did not join:\n" + proc.log()[-3000:])
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(media_gw: Proc) -> OpenAI:
    return OpenAI(base_url=media_gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_listed_with_their_types(media_gw: Proc) -> None:
    models = {m["id"]: m["type"] for m in http.get_json(media_gw.url + "/v1/models")["data"]}
    assert models["tts/espeak-ng"] == "audio-speech"
    assert models["whisper/tiny-whisper"] == "audio-transcription"
    only = http.get_json(media_gw.url + "/v1/models?type=audio-speech")["data"]
    assert sorted(m["id"] for m in only) == ["tts/espeak-ng", "tts/tiny-voice"]
    assert models["diffusers/tiny-sd"] == "image-generation"


def test_speech_streams_a_wav_as_it_is_synthesised(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(model="tts/espeak-ng", voice="alloy",
                                                            input="Hello from the gateway. " * 6,
                                                            response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        pieces = list(response.iter_bytes())
    body = b"".join(pieces)
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt "
    channels, rate, bits = struct.unpack_from("<H", body, 22)[0], struct.unpack_from("<I", body, 24)[0], \
        struct.unpack_from("<H", body, 34)[0]
    assert (channels, rate, bits) == (1, 22050, 16)
    samples = (len(body) - 44) // 2
    assert samples > rate  # more than a second of speech
    assert len(pieces) > 1  # it came in several pieces, not one blob


def test_speech_pcm_and_errors(client: OpenAI, media_gw: Proc) -> None:
    pcm = client.audio.speech.create(model="tts/espeak-ng", voice="nova", input="Testing pcm output.",
                                     response_format="pcm", speed=1.5)
    assert len(pcm.content) > 24_000 * 2 // 4 and len(pcm.content) % 2 == 0  # 16-bit samples at 24 kHz
    reply = http.post(media_gw.url + "/v1/audio/speech", {"model": "tts/espeak-ng", "input": "x",
                                                           "response_format": "ogg"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "response_format"
    with pytest.raises(BadRequestError) as caught:
        client.audio.speech.create(model="tts/espeak-ng", voice="no-such-voice", input="x", response_format="wav")
    assert caught.value.body["param"] == "voice"  # type: ignore[index]
    with pytest.raises(BadRequestError):  # a speech model cannot transcribe
        client.audio.transcriptions.create(model="tts/espeak-ng", file=("a.wav", wav_bytes(0.1), "audio/wav"))
    chat = http.post(media_gw.url + "/v1/chat/completions", {"model": "tts/espeak-ng",
                                                            "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 400 and "audio-speech model" in chat.json()["error"]["message"]
    missing = http.post(media_gw.url + "/v1/audio/speech", {"model": "tts/nobody", "input": "hi"})
    assert missing.status == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_speech_default_is_mp3_and_every_openai_format(client: OpenAI, media_gw: Proc) -> None:
    reply = http.post(media_gw.url + "/v1/audio/speech", {"model": "tts/espeak-ng", "input": "default format"})
    assert reply.status == 200 and reply.headers["content-type"] == "audio/mpeg"  # OpenAI's default
    assert "x-acore-notice" not in reply.headers
    audio, rate = soundfile.read(io.BytesIO(reply.raw))
    assert rate == 24_000 and len(audio) > rate // 4
    for kind, content_type, magic in (("opus", "audio/ogg", b"OggS"), ("flac", "audio/flac", b"fLaC"),
                                      ("aac", "audio/aac", b"\xff\xf1")):
        body = client.audio.speech.create(model="tts/espeak-ng", voice="alloy", input="Several formats.",
                                          response_format=kind)  # type: ignore[arg-type]
        assert body.response.headers["content-type"] == content_type and body.content.startswith(magic)
        assert decode_audio(body.content)[1] == 24_000


def test_piper_voice_speaks_sentence_by_sentence(client: OpenAI) -> None:
    """A Piper voice (tiny, random, built in the test) behind tts/: each sentence leaves when it is made,
    speed is Piper's length scale, and a multi-speaker voice takes its speaker names."""
    from workers.tiny_media import TINY_VOICE_HOP

    text = "First sentence here. And a second one follows. Then a third."
    with client.audio.speech.with_streaming_response.create(model="tts/tiny-voice", voice="alloy", input=text,
                                                            response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        pieces = [piece for piece in response.iter_bytes() if piece]
    assert len(pieces) >= 2  # not one blob at the end
    normal = sum(len(piece) for piece in pieces) // 2  # 16-bit samples at 24 kHz
    fast = len(client.audio.speech.create(model="tts/tiny-voice", voice="alloy", input=text, speed=2.0,
                                          response_format="pcm").content) // 2
    assert fast == pytest.approx(normal / 2, rel=0.05)
    assert normal > 10 * TINY_VOICE_HOP * 24_000 // 16_000  # every phoneme made samples
    spoken = client.audio.speech.create(model="tts/tiny-voice", voice="bob", input="Hello.")  # mp3, the default
    assert soundfile.info(io.BytesIO(spoken.content)).samplerate == 24_000
    with pytest.raises(BadRequestError) as caught:
        client.audio.speech.create(model="tts/tiny-voice", voice="zed", input="x", response_format="wav")
    assert caught.value.body["param"] == "voice" and "amy, bob" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(("name", "container", "codec", "mime"), [("memo.m4a", "mp4", "aac", "audio/mp4"),
                                                                ("clip.webm", "webm", "libopus", "audio/webm")])
def test_phone_and_browser_recordings_are_transcribed(client: OpenAI, name: str, container: str, codec: str,
                                                      mime: str) -> None:
    from tests.media_files import encoded_audio

    result = client.audio.transcriptions.create(model="whisper/tiny-whisper", response_format="verbose_json",
                                                file=(name, encoded_audio(container, codec, 2.0), mime))
    assert result.duration == pytest.approx(2.0, abs=0.1)


def test_mp3_speech_round_trip_into_whisper(client: OpenAI) -> None:
    """The gateway's own mp3 goes back in as an upload: the worker decodes it with libsndfile."""
    audio = client.audio.speech.create(model="tts/espeak-ng", voice="alloy", input="One two three four.").content
    expected = soundfile.info(io.BytesIO(audio)).duration
    result = client.audio.transcriptions.create(model="whisper/tiny-whisper", response_format="verbose_json",
                                                file=("speech.mp3", audio, "audio/mpeg"))
    assert result.duration == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("kind", ["json", "text", "srt", "vtt", "verbose_json"])
def test_transcription_on_the_whisper_worker(client: OpenAI, kind: str) -> None:
    result = client.audio.transcriptions.create(model="whisper/tiny-whisper", response_format=kind,  # type: ignore[call-overload]
                                                file=("tone.wav", wav_bytes(1.0), "audio/wav"))
    if kind == "verbose_json":
        assert result.duration == pytest.approx(1.0) and len(result.segments) == 1
        assert result.segments[0].end == pytest.approx(1.0)
    elif kind == "srt":
        assert result.startswith("1\n00:00:00,000 --> 00:00:01,000\n")
    elif kind == "vtt":
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")
    elif kind == "json":
        assert isinstance(result.text, str)


def test_streamed_transcription_on_the_worker(client: OpenAI) -> None:
    events = list(client.audio.transcriptions.create(model="whisper/tiny-whisper", stream=True,
                                                     file=("tone.wav", wav_bytes(0.5), "audio/wav")))
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]


def test_speech_round_trip_into_whisper(client: OpenAI) -> None:
    """What tts/ says, whisper/ takes: the worker decodes the gateway's own WAV (random weights: no words)."""
    audio = client.audio.speech.create(model="tts/espeak-ng", voice="alloy", input="One two three.",
                                       response_format="wav").content
    # a streamed WAV has "unknown length" sizes; the whisper worker reads it up to the end of the bytes
    result = client.audio.transcriptions.create(model="whisper/tiny-whisper", response_format="verbose_json",
                                                file=("speech.wav", audio, "audio/wav"))
    assert result.duration == pytest.approx((len(audio) - 44) / 2 / 22050, abs=0.01)


def test_audio_in_chat_is_transcribed_by_the_worker(media_gw: Proc, fake_openai: Proc) -> None:
    clip = wav_bytes(0.5)
    http.clear_records(fake_openai)
    parts = [{"type": "text", "text": "What is said here? @memo.wav"},
             {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}]
    reply = http.post(media_gw.url + "/v1/chat/completions",
                      {"model": "openai/echo", "messages": [{"role": "user", "content": parts}]}, timeout=120)
    assert reply.status == 200, reply.text
    assert "transcribed by whisper/tiny-whisper" in reply.headers["x-acore-notice"]
    sent = [r for r in http.records(fake_openai) if r["path"] == "/v1/chat/completions"][-1]["body"]
    texts = [p["text"] for p in sent["messages"][-1]["content"]]
    assert texts[0].startswith("What is said here?")
    assert texts[1].startswith("[Transcript of memo.wav]\n") and texts[2].startswith("[Transcript of audio.wav]\n")
    assert not any(p.get("type") == "input_audio" for p in sent["messages"][-1]["content"])


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_masked_edit_repaints_only_the_transparent_pixels(client: OpenAI) -> None:
    """OpenAI's mask: fully transparent pixels are repainted (the inpainting twin of the pipeline), every
    other pixel of the answer is the input's own."""
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(3).random((16, 16, 3)) * 255).astype("uint8")
    alpha = np.full((16, 16), 255, dtype="uint8")
    alpha[:, 8:] = 0  # repaint the right half
    mask = Image.fromarray(np.dstack([np.zeros((16, 16, 3), dtype="uint8"), alpha]), "RGBA")
    edited = client.images.edit(model="diffusers/tiny-sd", prompt="a blue sky", n=1, size="16x16",
                                image=("in.png", _png(Image.fromarray(pixels)), "image/png"),
                                mask=("mask.png", _png(mask), "image/png"), extra_body={"num_inference_steps": 2})
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or ""))).convert("RGB"))
    assert result.shape == (16, 16, 3)
    assert (result[:, :8] == pixels[:, :8]).all()  # kept exactly
    assert (result[:, 8:] != pixels[:, 8:]).any()  # repainted
    with pytest.raises(BadRequestError) as caught:
        client.images.edit(model="diffusers/tiny-sd", prompt="x", image=("in.png", _png(Image.fromarray(pixels)),
                                                                         "image/png"),
                           mask=("m.png", _png(mask.resize((8, 8))), "image/png"))
    assert caught.value.body["param"] == "mask" and "same size" in caught.value.body["message"]  # type: ignore[index]


def test_images_on_the_diffusers_worker(client: OpenAI, media_gw: Proc) -> None:
    from PIL import Image

    result = client.images.generate(model="diffusers/tiny-sd", prompt="a red square", n=2, size="16x16",
                                    extra_body={"num_inference_steps": 2, "seed": 7})
    assert len(result.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) for item in result.data]
    assert all(image.format == "PNG" and image.size == (16, 16) for image in images)
    edited = client.images.edit(model="diffusers/tiny-sd", prompt="bluer", image=("in.png", png_bytes(16, 16), "image/png"),
                                extra_body={"num_inference_steps": 2})
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or ""))).format == "PNG"
    with pytest.raises(BadRequestError) as caught:  # a mask without transparency marks nothing
        client.images.edit(model="diffusers/tiny-sd", prompt="x", image=("in.png", png_bytes(16, 16), "image/png"),
                           mask=("m.png", png_bytes(16, 16), "image/png"))
    assert caught.value.body["param"] == "mask" and "alpha" in caught.value.body["message"]  # type: ignore[index]
    reply = http.post(media_gw.url + "/v1/images/generations", {"model": "diffusers/tiny-sd", "prompt": "p",
                                                                 "response_format": "url"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "response_format"
    reply = http.post(media_gw.url + "/v1/images/generations", {"model": "tts/espeak-ng", "prompt": "p"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "model"
