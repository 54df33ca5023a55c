"""Attachments through a real gateway process to a fake upstream that records what it received.

Every attack from security.md tables D and E is answered 4xx with zero hits on the fake
server (whose /v1/models records every GET, so a fetch of it would show), and the gateway
keeps serving. Files are produced here by the libraries themselves.
"""

from __future__ import annotations

import base64
import http.server as http_server
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import http
from tests import media_files as files
from tests.http import clear_records, records
from tests.procs import Proc, free_port, start_fake_openai, start_gateway

FILES_HOST = "127.0.0.2"  # allowlisted in the gateway; 127.0.0.1 (the fake upstream) is not


class _Files(http_server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", urllib.parse.parse_qs(parsed.query)["to"][0])
            self.end_headers()
        elif parsed.path == "/sales.csv":
            body = b"city,units\nOslo,77\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif parsed.path == "/forever":
            self.send_response(200)
            self.end_headers()
            block = b"x" * 65536
            try:
                while True:
                    self.wfile.write(block)
            except OSError:
                pass
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def files_server() -> Iterator[str]:
    server = http_server.ThreadingHTTPServer((FILES_HOST, free_port()), _Files)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{FILES_HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media-root")
    (path / "report.docx").write_bytes(files.docx_bytes("Turnover rose to 9.1 million."))
    (path / "deck.pptx").write_bytes(files.pptx_bytes("Roadmap", "Mention the flamingo."))
    (path / "book.xlsx").write_bytes(files.xlsx_bytes(rows=3, sheet="Ledger"))
    (path / "paper.pdf").write_bytes(files.pdf_bytes(pages=2, prefix="Abstract line"))
    (path / "pic.png").write_bytes(files.png_bytes())
    (path / "escape.txt").symlink_to("/etc/passwd")
    (path / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(path / "pipe.txt")
    return path


@pytest.fixture(scope="module")
def upstream(log_dir: Path) -> Iterator[Proc]:
    proc = start_fake_openai(log_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstream: Proc, root: Path) -> Iterator[Proc]:
    env = {
        "OPENAI_BASE_URL": upstream.url + "/v1",
        "OPENAI_API_KEY": "sk-test-server-key-123456",
        "ACORE_MEDIA_ROOTS": str(root),
        "ACORE_MEDIA_URL_ALLOWLIST": f"{FILES_HOST}/32",
    }
    proc = start_gateway(log_dir, env)
    yield proc
    proc.stop()


def chat(gw: Proc, content: Any, stream: bool = False) -> tuple[int, Any]:
    """POST one user message; the status and the JSON body (the text of a stream)."""
    reply = http.post(gw.url + "/v1/chat/completions",
                      {"model": "openai/echo", "stream": stream, "messages": [{"role": "user", "content": content}]},
                      timeout=60)
    return reply.status, reply.json_or_text()


def forwarded_content(upstream: Proc) -> Any:
    chats = [r for r in records(upstream) if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 1
    return chats[0]["body"]["messages"][-1]["content"]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def file_part(data: bytes, name: str, mime: str = "application/octet-stream") -> dict[str, Any]:
    return {"type": "file", "file": {"file_data": data_url(data, mime), "filename": name}}


# ---------------------------------------------------------------- what works


@pytest.mark.parametrize(("part", "expected"), [
    (lambda: file_part(files.docx_bytes("Cash flow doubled."), "q.docx"), "Cash flow doubled."),
    (lambda: file_part(files.xlsx_bytes(rows=2, sheet="Stock"), "s.xlsx"), "| region-1 | 10 |"),
    (lambda: file_part(files.pptx_bytes("Kickoff", "bring snacks"), "k.pptx"), "Notes: bring snacks"),
    (lambda: file_part(files.pdf_bytes(pages=2, prefix="Chapter"), "c.pdf", "application/pdf"), "Chapter number 2"),
    (lambda: file_part(b"name,qty\nbolts,12\n", "parts.csv", "text/csv"), "| bolts | 12 |"),
    (lambda: file_part(b"<inventory><item>anvil</item></inventory>", "i.xml"), "<item>anvil</item>"),
])
def test_documents_reach_upstream_as_text(gw: Proc, upstream: Proc, part: Any, expected: str) -> None:
    clear_records(upstream)
    status, body = chat(gw, [{"type": "text", "text": "summarise"}, part()])
    assert status == 200, body
    content = forwarded_content(upstream)
    assert content[0] == {"type": "text", "text": "summarise"}
    assert content[1]["type"] == "text" and expected in content[1]["text"]
    assert content[1]["text"].startswith("--- File: ")


def test_image_reaches_upstream_as_normalised_data_url(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    status, body = chat(gw, [{"type": "image_url", "image_url": {"url": data_url(files.png_bytes(4000, 100), "image/png")}}])
    assert status == 200, body
    url = forwarded_content(upstream)[0]["image_url"]["url"]
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (2048, 51)  # downscaled to the default max side


def test_at_paths_and_local_file_url(gw: Proc, upstream: Proc, root: Path) -> None:
    clear_records(upstream)
    text = "Compare @report.docx with @deck.pptx and @book.xlsx, @paper.pdf; ping @app.get or ops@example.com"
    status, body = chat(gw, text)
    assert status == 200, body
    content = forwarded_content(upstream)
    assert content[0] == {"type": "text", "text": text}  # the text itself byte-for-byte
    joined = "\n".join(p["text"] for p in content[1:])
    for needle in ("Turnover rose to 9.1 million.", "Mention the flamingo.", "## Sheet: Ledger", "Abstract line number 2"):
        assert needle in joined
    assert len(content) == 5

    clear_records(upstream)
    status, body = chat(gw, [{"type": "file", "file_url": {"url": str(root / "paper.pdf")}},
                             {"type": "image_url", "image_url": {"url": "pic.png"}}])
    assert status == 200, body
    content = forwarded_content(upstream)
    assert "Abstract line number 1" in content[0]["text"] and content[1]["type"] == "image_url"


def test_decorators_and_emails_untouched(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    text = "@app.get('/x')\ndef f():  # mail admin@corp.example or @someone\n    return  @/etc/passwd  @../../x.txt"
    status, _ = chat(gw, text)
    assert status == 200
    assert forwarded_content(upstream) == text


def test_url_fetch_from_allowlisted_host(gw: Proc, upstream: Proc, files_server: str) -> None:
    clear_records(upstream)
    status, body = chat(gw, [{"type": "file", "file_url": {"url": files_server + "/sales.csv"}}])
    assert status == 200, body
    assert "| Oslo | 77 |" in forwarded_content(upstream)[0]["text"]


def test_streaming_chat_with_attachment(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    status, body = chat(gw, [{"type": "text", "text": "go"}, file_part(b"alpha beta", "a.txt")], stream=True)
    assert status == 200 and "data: [DONE]" in body
    assert "alpha beta" in forwarded_content(upstream)[1]["text"]


def test_streaming_refusal_keeps_http_status(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    status, body = chat(gw, [{"type": "file", "file_url": {"url": "/etc/passwd"}}], stream=True)
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert records(upstream) == []


# ---------------------------------------------------------------- attacks (tables D and E)


def attacks(upstream_url: str, files_server: str, root: Path) -> list[tuple[str, Any, tuple[int, ...]]]:
    port = urllib.parse.urlsplit(upstream_url).port
    target = "/v1/models"  # the fake records every GET here: a fetch would show as a hit
    urls = [f"http://127.0.0.1:{port}{target}", f"http://[::1]:{port}{target}", f"http://0.0.0.0:{port}{target}",
            f"http://[::ffff:127.0.0.1]:{port}{target}", "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/", f"http://2130706433:{port}{target}",
            f"http://0177.0.0.1:{port}{target}", f"http://localhost:{port}{target}",
            "file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://127.0.0.1/x"]
    cases: list[tuple[str, Any, tuple[int, ...]]] = []
    for url in urls:
        cases.append((f"image_url {url}", [{"type": "image_url", "image_url": {"url": url}}], (400, 403)))
        cases.append((f"file_url {url}", [{"type": "file", "file_url": {"url": url}}], (400, 403)))
    redirect = f"{files_server}/redirect?to=" + urllib.parse.quote(f"http://127.0.0.1:{port}{target}")
    cases += [
        ("redirect to loopback", [{"type": "file", "file_url": {"url": redirect}}], (403,)),
        ("stream forever", [{"type": "file", "file_url": {"url": files_server + "/forever"}}], (413,)),
        ("data wrong mime", [{"type": "image_url", "image_url": {"url": data_url(b"%PDF-1.4 x", "image/png")}}], (400,)),
        ("data bad padding", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,abc"}}], (400,)),
        ("/etc/passwd", [{"type": "file", "file_url": {"url": "/etc/passwd"}}], (403,)),
        ("traversal", [{"type": "file", "file_url": {"url": "../../../../etc/passwd"}}], (403,)),
        ("/proc environ", [{"type": "file", "file_url": {"url": "/proc/self/environ"}}], (403,)),
        ("symlink escape", [{"type": "file", "file_url": {"url": str(root / "escape.txt")}}], (403,)),
        ("/dev/zero", [{"type": "file", "file_url": {"url": "/dev/zero"}}], (403,)),
        ("symlink /dev/zero", [{"type": "image_url", "image_url": {"url": "zero.txt"}}], (403,)),
        ("fifo", [{"type": "file", "file_url": {"url": str(root / "pipe.txt")}}], (403,)),
        ("pixel bomb", [{"type": "image_url", "image_url": {"url": data_url(files.pixel_bomb_png(), "image/png")}}],
         (413,)),
        ("docx zip bomb", [file_part(files.zip_bomb_docx(), "b.docx")], (413,)),
        ("xlsx 10k entries", [file_part(files.many_entries_xlsx(), "m.xlsx")], (413,)),
        ("pptx zip slip", [file_part(files.slip_pptx(), "s.pptx")], (422,)),
        ("xlsx billion laughs", [file_part(files.billion_laughs_xlsx(), "l.xlsx")], (422,)),
        ("docx external entity", [file_part(files.xxe_docx(f"http://127.0.0.1:{port}{target}"), "x.docx")], (422,)),
        ("xml billion laughs", [file_part(files.LAUGHS.encode(), "l.xml")], (422,)),
        ("pdf flate bomb", [file_part(files.pdf_flate_bomb(), "b.pdf")], (413,)),
        # A CSV with a 9 MB field is an ordinary export: cut with a notice (test_hardening.py), not refused.
        ("11 MB data url", [file_part(b"x" * (11 * 1024 * 1024), "big.txt")], (413,)),
        ("file_id", [{"type": "file", "file": {"file_id": "file-abc"}}], (404,)),  # no such stored file
    ]
    return cases


def test_every_attack_is_refused_without_outbound_hits(gw: Proc, upstream: Proc, files_server: str, root: Path) -> None:
    process = psutil.Process(gw.process.pid)
    failures = []
    for name, content, statuses in attacks(upstream.url, files_server, root):
        clear_records(upstream)
        started = time.monotonic()
        status, body = chat(gw, content)
        elapsed = time.monotonic() - started
        hits = records(upstream)
        if status not in statuses or hits or elapsed > 15:
            failures.append((name, status, body, len(hits), round(elapsed, 2)))
        assert http.get(gw.url + "/health", timeout=5).status == 200, name
    assert failures == []
    assert process.memory_info().rss < 600 * 1024 * 1024  # bombs went off in children, not here


def test_40mb_body_refused_and_still_serving(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    payload = "A" * (40 * 1024 * 1024)
    status, _ = chat(gw, [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + payload}}])
    assert status == 413 and records(upstream) == []
    assert http.get(gw.url + "/health", timeout=60).status == 200


def test_pdf_with_circular_xref_terminates(gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    status, body = chat(gw, [file_part(files.pdf_circular_xref(), "loop.pdf")])
    assert status in (200, 422), body
