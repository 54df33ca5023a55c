"""The attachment router: parts, @path tokens (and what must stay untouched), budgets, Responses parts."""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from media.attachments import needs_work, resolve_messages, responses_parts_to_chat
from media.errors import MediaError
from media.fetch import Fetcher
from media.policy import MediaPolicy
from media.sandbox import ParseExecutor
from tests import media_files as files


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("root")
    (path / "report.docx").write_bytes(files.docx_bytes("Margins improved in Q3."))
    (path / "pic.png").write_bytes(files.png_bytes())
    (path / "notes.txt").write_text("plain notes")
    (path / "app.get").write_text("not a supported type")
    return path


@pytest.fixture
async def executor() -> AsyncIterator[ParseExecutor]:
    pool = ParseExecutor(workers=2, timeout_s=20)
    yield pool
    await pool.close()


async def run(messages: list[dict[str, Any]], policy: MediaPolicy, executor: ParseExecutor) -> list[dict[str, Any]]:
    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("no DNS in these tests")

    return await resolve_messages(messages, policy, Fetcher(policy, resolver=no_dns), executor)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_fast_path() -> None:
    policy = MediaPolicy(roots=("/tmp",))
    assert not needs_work([{"role": "user", "content": "hello"}], policy)
    assert not needs_work([{"role": "user", "content": "mail me@x.org"}], MediaPolicy())  # no roots: '@' is text
    assert needs_work([{"role": "user", "content": "see @a.pdf"}], policy)
    assert needs_work([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], MediaPolicy())


async def test_at_path_attaches_and_leaves_text_untouched(root: Path, executor: ParseExecutor) -> None:
    text = "Summarise @report.docx, and @app.get(\"/\") or mail bob@example.com; @missing.pdf @/etc/passwd @../x.txt"
    out = await run([{"role": "user", "content": text}], MediaPolicy(roots=(str(root),)), executor)
    parts = out[0]["content"]
    assert parts[0] == {"type": "text", "text": text}  # byte-for-byte
    assert len(parts) == 2 and "Margins improved in Q3." in parts[1]["text"]
    assert parts[1]["text"].startswith("--- File: report.docx (DOCX) ---")


async def test_text_without_files_is_the_same_object(root: Path, executor: ParseExecutor) -> None:
    messages = [{"role": "user", "content": "@app.get and @decorator and x@y.z"},
                {"role": "assistant", "content": "@notes.txt in an assistant turn is not read"}]
    before = copy.deepcopy(messages)
    out = await run(messages, MediaPolicy(roots=(str(root),)), executor)
    assert out == before


async def test_at_path_image_and_text_part(root: Path, executor: ParseExecutor) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "look at @pic.png"}]}]
    out = await run(messages, MediaPolicy(roots=(str(root),)), executor)
    assert out[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


async def test_parts_image_data_url_file_data_and_local_path(root: Path, executor: ParseExecutor) -> None:
    policy = MediaPolicy(roots=(str(root),))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": data_url(files.png_bytes(), "image/png"), "detail": "low"}},
        {"type": "file", "file": {"file_data": data_url(files.xlsx_bytes(), "application/octet-stream"),
                                  "filename": "../../sales.xlsx"}},
        {"type": "file", "file": {"file_data": base64.b64encode(files.pdf_bytes(2)).decode(), "filename": "a.pdf"}},
        {"type": "file", "file_url": {"url": str(root / "notes.txt")}},
        {"type": "image_url", "image_url": {"url": "pic.png"}},
    ]}]
    parts = (await run(messages, policy, executor))[0]["content"]
    assert parts[0] == {"type": "text", "text": "hi"}
    assert parts[1]["image_url"]["detail"] == "low" and parts[1]["image_url"]["url"].startswith("data:image/png")
    assert parts[2]["text"].startswith("--- File: sales.xlsx (XLSX) ---")  # the name is only a display name
    assert "Page text number 2" in parts[3]["text"]
    assert "plain notes" in parts[4]["text"]
    assert parts[5]["type"] == "image_url"


@pytest.mark.parametrize(("part", "status"), [
    ({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, 403),
    ({"type": "file", "file_url": {"url": "../../etc/passwd"}}, 403),
    ({"type": "file", "file_url": {"url": "file:///etc/passwd"}}, 400),
    ({"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}, 403),
    ({"type": "image_url", "image_url": {"url": data_url(b"%PDF-1.4 not an image", "image/png")}}, 400),
    ({"type": "image_url", "image_url": {"url": data_url(files.pixel_bomb_png(), "image/png")}}, 413),
    ({"type": "file", "file": {"file_id": "file-123"}}, 501),
    ({"type": "file", "file": {"file_data": "@@@not base64", "filename": "x.txt"}}, 400),
])
async def test_refusals(root: Path, executor: ParseExecutor, part: dict[str, Any], status: int) -> None:
    with pytest.raises(MediaError) as info:
        await run([{"role": "user", "content": [part]}], MediaPolicy(roots=(str(root),)), executor)
    assert info.value.status == status, info.value.message


async def test_local_paths_off_by_default(root: Path, executor: ParseExecutor) -> None:
    with pytest.raises(MediaError) as info:
        await run([{"role": "user", "content": [{"type": "file", "file_url": {"url": str(root / "notes.txt")}}]}],
                  MediaPolicy(), executor)
    assert info.value.status == 403


async def test_request_budget(root: Path, executor: ParseExecutor) -> None:
    part = {"type": "file", "file": {"file_data": data_url(b"x" * 600, "text/plain"), "filename": "a.txt"}}
    policy = MediaPolicy(max_file_bytes=1000, max_request_bytes=1000)
    assert len((await run([{"role": "user", "content": [part]}], policy, executor))[0]["content"]) == 1
    with pytest.raises(MediaError) as info:
        await run([{"role": "user", "content": [part, part]}], policy, executor)
    assert info.value.status == 413


def test_responses_parts() -> None:
    converted = responses_parts_to_chat([
        {"type": "input_text", "text": "hi"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "high"},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"},
    ])
    assert converted == [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
        {"type": "file", "file_url": {"url": "https://example.com/a.pdf"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}},
    ]
    # stored files keep their id: the gateway's audio hook reads them through the Files API
    assert responses_parts_to_chat([{"type": "input_image", "file_id": "file-1"}, {"type": "input_file",
                                                                                    "file_id": "file-2"}]) == [
        {"type": "image_url", "image_url": {"file_id": "file-1", "detail": None}},
        {"type": "file", "file": {"file_id": "file-2"}}]


async def test_many_at_tokens_are_bounded(root: Path, executor: ParseExecutor) -> None:
    # 10 000 distinct path-like tokens: only the first MAX_AT_TOKENS are looked up, the text stays as is.
    from media.attachments import MAX_AT_TOKENS

    text = " ".join(f"@f{i}.txt" for i in range(10_000)) + " @notes.txt"
    out = await run([{"role": "user", "content": text}], MediaPolicy(roots=(str(root),)), executor)
    assert out == [{"role": "user", "content": text}]
    early = " ".join(f"@f{i}.txt" for i in range(MAX_AT_TOKENS - 1)) + " @notes.txt"
    out = await run([{"role": "user", "content": early}], MediaPolicy(roots=(str(root),)), executor)
    assert "plain notes" in out[0]["content"][1]["text"]


async def test_audio_parts_are_charged_to_the_memory_budget() -> None:
    """Decoded audio counts against the caller's in-flight budget, as other attachments do."""
    from media.audio_parts import resolve_audio

    clip = files.wav_bytes(0.25)
    charged: list[int] = []

    def charge(size: int) -> None:
        charged.append(size)
        if sum(charged) > len(clip):
            raise RuntimeError("over budget")

    async def transcribed(data: bytes, fmt: str | None, name: str) -> dict[str, Any]:
        return {"type": "text", "text": f"[{name}: {len(data)} bytes]"}

    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("no DNS in these tests")

    policy = MediaPolicy()
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}
    out = await resolve_audio([{"role": "user", "content": [part]}], policy, Fetcher(policy, resolver=no_dns), None,
                              transcribed, charge)
    assert charged == [len(clip)] and out[0]["content"][0]["type"] == "text"
    with pytest.raises(RuntimeError, match="over budget"):  # a second clip does not fit
        await resolve_audio([{"role": "user", "content": [part, part]}], policy, Fetcher(policy, resolver=no_dns),
                            None, transcribed, charge)
