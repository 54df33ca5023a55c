"""The media routes end to end through the openai SDK: relayed to an OpenAI-compatible upstream
(tests/fakes/openai_upstream.py) and answered by local workers (tts/espeak-ng, whisper/, diffusers/)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, OpenAI

from tests import http
from tests.media_files import png_bytes, wav_bytes
from tests.procs import Proc, start_gateway


@pytest.fixture(scope="module")
def client(gateway: Proc) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------------- relayed to an OpenAI-compatible API


def test_transcription_relayed_with_the_upload(client: OpenAI, fake_openai: Proc) -> None:
    http.clear_records(fake_openai)
    audio = wav_bytes(0.5)
    result = client.audio.transcriptions.create(model="openai/whisper-1", file=("hello.wav", audio, "audio/wav"),
                                                language="en")
    assert result.text == f"heard hello.wav ({len(audio)} bytes)"
    sent = http.records(fake_openai)[-1]
    assert sent["path"] == "/v1/audio/transcriptions"
    assert sent["body"]["model"] == "whisper-1" and sent["body"]["language"] == "en"
    assert sent["body"]["file"]["size"] == len(audio)
    assert sent["headers"]["Authorization"] == "Bearer sk-test-server-key-123456"  # the server key, to its own URL


@pytest.mark.parametrize("kind", ["text", "srt", "vtt", "verbose_json"])
def test_transcription_response_formats_pass_through(client: OpenAI, kind: str) -> None:
    result = client.audio.transcriptions.create(model="openai/whisper-1", file=("a.wav", wav_bytes(0.2), "audio/wav"),
                                                response_format=kind)  # type: ignore[call-overload]
    text = result if isinstance(result, str) else result.text
    assert "heard a.wav" in text
    if kind == "vtt":
        assert text.startswith("WEBVTT")


def test_translation_and_streamed_transcription(client: OpenAI, gateway: Proc) -> None:
    result = client.audio.translations.create(model="openai/whisper-1", file=("fr.wav", wav_bytes(0.2), "audio/wav"))
    assert result.text.startswith("heard fr.wav")
    events = list(client.audio.transcriptions.create(model="openai/gpt-4o-transcribe", stream=True,
                                                     file=("s.wav", wav_bytes(0.2), "audio/wav")))
    assert events[-1].type == "transcript.text.done" and events[-1].text.startswith("heard s.wav")


def test_speech_streams_through_with_the_upstream_type(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(model="openai/tts-1", voice="alloy", input="Hello there",
                                                            response_format="mp3") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        pieces = list(response.iter_bytes())
    body = b"".join(pieces)
    assert body.count(b"chunk") == 8 and b"Hello there" in body


def test_images_generate_and_edit_relayed(client: OpenAI, fake_openai: Proc) -> None:
    result = client.images.generate(model="openai/gpt-image-1", prompt="a red square", n=2)
    assert len(result.data) == 2 and base64.b64decode(result.data[0].b64_json or "").startswith(b"\x89PNG")
    http.clear_records(fake_openai)
    image, mask = png_bytes(8, 8), png_bytes(8, 8, (0, 0, 0))
    edited = client.images.edit(model="openai/gpt-image-1", prompt="make it blue", image=("in.png", image, "image/png"),
                                mask=("mask.png", mask, "image/png"))
    assert edited.data and edited.data[0].b64_json
    sent = http.records(fake_openai)[-1]["body"]
    assert sent["prompt"] == "make it blue" and sent["image"]["size"] == len(image) and sent["mask"]["size"] == len(mask)


def test_client_key_and_upstream_errors(gateway: Proc, fake_openai: Proc) -> None:
    http.clear_records(fake_openai)
    reply = http.post(gateway.url + "/v1/audio/speech", {"model": "openai/tts-1", "input": "hi", "voice": "alloy"},
                      headers={"X-Provider-API-Key": "sk-client-own"})
    assert reply.status == 200
    assert http.records(fake_openai)[-1]["headers"]["Authorization"] == "Bearer sk-client-own"
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError) as caught:
        client.audio.transcriptions.create(model="openai/error-400", file=("a.wav", wav_bytes(0.1), "audio/wav"))
    assert "fake upstream error 400" in str(caught.value)


# ---------------------------------------------------------------------- checked before any provider sees it


def test_wrong_type_and_oversized_uploads_are_refused(client: OpenAI, gateway: Proc, fake_openai: Proc) -> None:
    http.clear_records(fake_openai)
    with pytest.raises(BadRequestError) as caught:
        client.audio.transcriptions.create(model="openai/whisper-1", file=("notes.txt", b"just text", "text/plain"))
    assert caught.value.body["code"] == "invalid_file_format"  # type: ignore[index]
    with pytest.raises(BadRequestError):  # a text file renamed .wav: known by its bytes
        client.audio.transcriptions.create(model="openai/whisper-1", file=("fake.wav", b"x" * 100, "audio/wav"))
    big = b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * (25 * 1024 * 1024)
    reply = http.post(gateway.url + "/v1/audio/transcriptions", content=_form({"model": "openai/whisper-1"},
                                                                             ("file", "big.wav", big)),
                      headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert reply.status == 413 and reply.json()["error"]["code"] == "file_too_large"
    assert not [r for r in http.records(fake_openai) if r["path"].startswith("/v1/audio")]


def test_field_checks_and_providers_without_the_api(gateway: Proc) -> None:
    for body, param in (({"model": "openai/tts-1", "voice": "alloy"}, "input"),
                        ({"model": "openai/tts-1", "input": "x", "speed": 9}, "speed"),
                        ({"model": "openai/tts-1", "input": "x", "response_format": "ogg"}, "response_format"),
                        ({"model": "openrouter/tts", "input": "x"}, "model"),
                        ({"model": "anthropic/claude", "input": "x"}, "model")):
        reply = http.post(gateway.url + "/v1/audio/speech", body)
        assert reply.status == 400, (body, reply.text)
        assert reply.json()["error"]["param"] == param
    reply = http.post(gateway.url + "/v1/images/generations", {"model": "nobody/x", "prompt": "p"})
    assert reply.status == 404 and reply.json()["error"]["code"] == "model_not_found"
    reply = http.post(gateway.url + "/v1/audio/transcriptions", {"model": "openai/whisper-1"})
    assert reply.status == 400 and "multipart" in reply.json()["error"]["message"]


BOUNDARY = "acoretestboundary"


def _form(fields: dict[str, str], *files: tuple[str, str, bytes]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, filename, data in files:
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: audio/wav\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_json_reply_is_valid(gateway: Proc) -> None:
    reply = http.post(gateway.url + "/v1/images/generations", {"model": "openai/dall-e-2", "prompt": "p",
                                                               "response_format": "url"})
    assert reply.status == 200 and json.loads(reply.raw)["data"][0]["url"].startswith("http")


# ---------------------------------------------------------------------- audio in chat: native and reject


def _audio_chat(gw: Proc, model: str, part: dict[str, Any]) -> http.Reply:
    return http.post(gw.url + "/v1/chat/completions",
                     {"model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, part]}]})


CLIP = wav_bytes(0.2)
INPUT_AUDIO = {"type": "input_audio", "input_audio": {"data": base64.b64encode(CLIP).decode(), "format": "wav"}}
AUDIO_FILE = {"type": "file", "file": {"file_data": "data:audio/wav;base64," + base64.b64encode(CLIP).decode(),
                                       "filename": "clip.wav"}}


@pytest.fixture(scope="module")
def strict_gateways(log_dir: Path, fake_openai: Proc) -> Iterator[dict[str, Proc]]:
    started = {}
    try:
        for strategy in ("native", "reject"):
            started[strategy] = start_gateway(log_dir, {"OPENAI_BASE_URL": fake_openai.url + "/v1",
                                                        "OPENAI_API_KEY": "sk-test", "ACORE_AUDIO_STRATEGY": strategy})
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def test_audio_goes_natively_to_models_that_take_it(gateway: Proc, fake_openai: Proc) -> None:
    """The default (auto) and native: input_audio parts and audio files reach openai/ as input_audio."""
    for part in (INPUT_AUDIO, AUDIO_FILE):
        http.clear_records(fake_openai)
        reply = _audio_chat(gateway, "openai/echo", part)
        assert reply.status == 200, reply.text
        sent = http.records(fake_openai)[-1]["body"]["messages"][-1]["content"]
        assert sent[1] == {"type": "input_audio", "input_audio": {"data": INPUT_AUDIO["input_audio"]["data"],
                                                                  "format": "wav"}}


def test_native_to_a_model_without_audio_and_reject(strict_gateways: dict[str, Proc], fake_openai: Proc) -> None:
    assert _audio_chat(strict_gateways["native"], "openai/echo", AUDIO_FILE).status == 200
    reply = _audio_chat(strict_gateways["native"], "anthropic/claude-x", INPUT_AUDIO)
    assert reply.status == 400 and "does not take audio input" in reply.json()["error"]["message"]
    http.clear_records(fake_openai)
    for part in (INPUT_AUDIO, AUDIO_FILE):
        reply = _audio_chat(strict_gateways["reject"], "openai/echo", part)
        assert reply.status == 400
        assert "[audio] strategy (ACORE_AUDIO_STRATEGY)" in reply.json()["error"]["message"]
    assert http.records(fake_openai) == []  # refused before any upstream call
