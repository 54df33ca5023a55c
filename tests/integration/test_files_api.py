"""The Files API through the openai SDK, and ``file_id`` in chat and Responses parts, against a real
gateway whose files live in a temporary directory (with a small quota)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import APIStatusError, BadRequestError, NotFoundError, OpenAI

from tests import http
from tests.integration.test_service import Redis, redis_server  # noqa: F401 - the redis-server fixture
from tests.media_files import png_bytes, wav_bytes
from tests.procs import Proc, start_gateway

QUOTA = 400_000


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def gw(log_dir: Path, fake_openai: Proc, files_dir: Path) -> Iterator[Proc]:
    env = {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": "sk-test-server-key-123456",
           "LMSTUDIO_BASE_URL": fake_openai.url + "/v1",
           "ACORE_FILES_DIR": str(files_dir), "ACORE_FILES_MAX_BYTES": str(QUOTA),
           "ACORE_AUDIO_STRATEGY": "stt", "ACORE_AUDIO_STT_MODEL": "openai/whisper-1"}
    proc = start_gateway(log_dir, env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gw: Proc) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def stored(files_dir: Path) -> list[str]:
    return sorted(p.name for p in files_dir.iterdir()) if files_dir.exists() else []


def last_chat_content(fake: Proc) -> object:
    chats = [r for r in http.records(fake) if r["path"] == "/v1/chat/completions"]
    return chats[-1]["body"]["messages"][-1]["content"]


def test_create_list_retrieve_content_delete(client: OpenAI, files_dir: Path) -> None:
    created = client.files.create(file=("notes.txt", b"The zebra code is 7731.", "text/plain"), purpose="user_data")
    assert created.id.startswith("file-") and created.bytes == 23 and created.filename == "notes.txt"
    assert created.purpose == "user_data" and created.status == "processed"
    assert any(f.id == created.id for f in client.files.list())
    assert [f.id for f in client.files.list(purpose="user_data")] == [created.id]
    assert client.files.retrieve(created.id).filename == "notes.txt"
    assert client.files.content(created.id).read() == b"The zebra code is 7731."
    assert f"{created.id}.bin" in stored(files_dir)
    assert client.files.delete(created.id).deleted is True
    with pytest.raises(NotFoundError):
        client.files.retrieve(created.id)
    assert f"{created.id}.bin" not in stored(files_dir)


def test_bad_uploads_store_nothing(client: OpenAI, gw: Proc, files_dir: Path) -> None:
    before = stored(files_dir)
    with pytest.raises(BadRequestError):
        client.files.create(file=("tool.exe", b"MZ\x90\x00", "application/octet-stream"), purpose="user_data")
    with pytest.raises(BadRequestError):  # vision files are known by their bytes
        client.files.create(file=("pic.png", b"not an image", "image/png"), purpose="vision")
    with pytest.raises(BadRequestError):
        client.files.create(file=("data.txt", b"x", "text/plain"), purpose="nonsense")  # type: ignore[arg-type]
    with pytest.raises(APIStatusError) as caught:  # over the 25 MB upload cap
        client.files.create(file=("big.txt", b"a" * (25 * 1024 * 1024 + 1), "text/plain"), purpose="user_data")
    assert caught.value.status_code == 413
    with pytest.raises(APIStatusError) as caught:  # over the store's quota
        client.files.create(file=("half.txt", b"b" * (QUOTA + 1), "text/plain"), purpose="user_data")
    assert caught.value.status_code == 413 and "ACORE_FILES_MAX_BYTES" in caught.value.message
    assert stored(files_dir) == before
    for bad_id in ("../../etc/passwd", "file-nothere", "file-" + "0" * 24):
        assert http.get(f"{gw.url}/v1/files/{bad_id}").status == 404


def test_file_id_in_chat_and_responses(client: OpenAI, fake_openai: Proc) -> None:
    text = client.files.create(file=("memo.txt", b"Remember the flamingo budget.", "text/plain"), purpose="user_data")
    image = client.files.create(file=("pic.png", png_bytes(), "image/png"), purpose="vision")
    http.clear_records(fake_openai)
    client.chat.completions.create(model="openai/echo", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Read this."}, {"type": "file", "file": {"file_id": text.id}}]}])
    content = last_chat_content(fake_openai)
    assert isinstance(content, list) and "Remember the flamingo budget." in content[1]["text"]
    http.clear_records(fake_openai)
    # lmstudio/ has no /v1/responses of its own: the Responses door converts to chat, and the ids resolve here.
    client.responses.create(model="lmstudio/echo", store=False, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is here?"}, {"type": "input_file", "file_id": text.id},
        {"type": "input_image", "file_id": image.id, "detail": "auto"}]}])
    content = last_chat_content(fake_openai)
    assert isinstance(content, list) and "Remember the flamingo budget." in content[1]["text"]
    assert content[2]["image_url"]["url"].startswith("data:image/png;base64,")
    http.clear_records(fake_openai)
    # openai/ serves /v1/responses itself: acore's ids go up inline, another id (OpenAI's own) as it is
    client.responses.create(model="openai/echo", store=False, input=[{"role": "user", "content": [
        {"type": "input_file", "file_id": text.id}, {"type": "input_image", "file_id": image.id},
        {"type": "input_file", "file_id": "file-openai-own"}]}])
    sent = http.records(fake_openai)[-1]
    assert sent["path"] == "/v1/responses"
    parts = sent["body"]["input"][0]["content"]
    assert parts[0]["filename"] == "memo.txt" and base64.b64decode(parts[0]["file_data"].split(",", 1)[1]) == \
        b"Remember the flamingo budget."
    assert parts[1]["image_url"].startswith("data:image/png;base64,") and "file_id" not in parts[1]
    assert parts[2] == {"type": "input_file", "file_id": "file-openai-own"}
    missing = http.post(client.base_url.__str__().rstrip("/") + "/chat/completions",
                        {"model": "openai/echo", "messages": [{"role": "user", "content": [
                            {"type": "file", "file": {"file_id": "file-" + "1" * 24}}]}]})
    assert missing.status == 404


def test_audio_file_id_and_input_audio_are_transcribed(client: OpenAI, gw: Proc, fake_openai: Proc) -> None:
    clip = wav_bytes(0.3)
    stored_clip = client.files.create(file=("memo.wav", clip, "audio/wav"), purpose="user_data")
    http.clear_records(fake_openai)
    reply = http.post(gw.url + "/v1/chat/completions", {"model": "openai/echo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarise"}, {"type": "file", "file": {"file_id": stored_clip.id}}]}]})
    assert reply.status == 200, reply.text
    assert "memo.wav was transcribed by openai/whisper-1" in reply.headers["x-acore-notice"]
    content = last_chat_content(fake_openai)
    assert content[1] == {"type": "text", "text": f"[Transcript of memo.wav]\nheard memo.wav ({len(clip)} bytes)"}
    http.clear_records(fake_openai)
    reply = http.post(gw.url + "/v1/chat/completions", {"model": "openai/echo", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}]}]})
    assert reply.status == 200, reply.text
    assert [r["path"] for r in http.records(fake_openai)] == ["/v1/audio/transcriptions", "/v1/chat/completions"]
    assert last_chat_content(fake_openai)[0]["text"].startswith("[Transcript of audio.wav]")


def test_two_gateways_share_files_through_redis(log_dir: Path, fake_openai: Proc,
                                                redis_server: Redis,  # noqa: F811 - the fixture imported above
                                                tmp_path: Path) -> None:
    """With ACORE_REDIS_URL the metadata is Redis's: a file uploaded through one gateway is listed,
    read and deleted through another that shares the directory."""
    env = {"ACORE_FILES_DIR": str(tmp_path / "shared"), "ACORE_REDIS_URL": redis_server.url}
    first, second = start_gateway(log_dir, env), start_gateway(log_dir, env)
    try:
        one = OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
        two = OpenAI(base_url=second.url + "/v1", api_key="unused", max_retries=0)
        created = one.files.create(file=("shared.txt", b"seen by both", "text/plain"), purpose="assistants")
        assert [f.id for f in two.files.list()] == [created.id]
        assert two.files.content(created.id).read() == b"seen by both"
        assert two.files.delete(created.id).deleted
        with pytest.raises(NotFoundError):
            one.files.retrieve(created.id)
    finally:
        first.stop()
        second.stop()
