"""Issue 21: the gateway under attack and load. Each test is one finding of the attack suite.

Real gateway processes and fake upstreams on 127.0.0.1; raw sockets where a client library would
not misbehave the way an attacker does. Load and slowloris parts are small and bounded.
"""

from __future__ import annotations

import base64
import http.server as http_server
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import http
from tests import media_files as files
from tests.http import clear_records, records
from tests.procs import Proc, free_port, start_fake_openai, start_gateway

GATEWAY_KEY = "gw-key-hardening-0123456789"
USER = [{"role": "user", "content": "hi"}]
SECRET = "INTERNAL-ADMIN-TOKEN-7f3a9c"


@pytest.fixture(scope="module")
def upstream(log_dir: Path) -> Iterator[Proc]:
    proc = start_fake_openai(log_dir)
    yield proc
    proc.stop()


def env_for(upstream: Proc, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.url + "/v1", "OPENAI_API_KEY": "sk-server-key-hardening", **extra}


@pytest.fixture(scope="module")
def local_gw(log_dir: Path, upstream: Proc) -> Iterator[Proc]:
    """One local user: listens on 127.0.0.1 only, no gateway key."""
    proc = start_gateway(log_dir, env_for(upstream))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyed_gw(log_dir: Path, upstream: Proc) -> Iterator[Proc]:
    proc = start_gateway(log_dir, env_for(upstream, ACORE_API_KEY=GATEWAY_KEY))
    yield proc
    proc.stop()


def chat(gw: Proc, body: dict[str, Any], key: str | None = None, timeout: float = 30) -> http.Reply:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return http.post(gw.url + "/v1/chat/completions", body, headers=headers, timeout=timeout)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics answer (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def error_of(reply: http.Reply) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["type"], body
    error: dict[str, Any] = body["error"]
    return error


# ---------------------------------------------------------------- 1. loopback SSRF


def loopback_spellings(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/v1", f"http://127.8.9.10:{port}/v1", f"http://[::1]:{port}/v1",
            f"http://2130706433:{port}/v1", f"http://0x7f000001:{port}/v1", f"http://0177.0.0.1:{port}/v1",
            f"http://[::ffff:127.0.0.1]:{port}/v1", f"http://localhost:{port}/v1", f"http://localhost.:{port}/v1",
            f"http://LOCALHOST:{port}/v1"]


def test_loopback_base_url_refused_on_a_gateway_with_a_key(keyed_gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    port = urlsplit(upstream.url).port
    assert port is not None
    for url in loopback_spellings(port):
        reply = chat(keyed_gw, {"model": "openai/echo", "messages": USER, "base_url": url, "api_key": "sk-client"},
                     key=GATEWAY_KEY)
        assert reply.status == 403, (url, reply.text)
        error = error_of(reply)
        assert error["param"] == "base_url" and "ACORE_BASE_URL_ALLOWLIST" in error["message"], url
    assert records(upstream) == []  # no spelling reached the loopback service


def test_loopback_base_url_allowed_for_one_local_user(local_gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    port = urlsplit(upstream.url).port
    reachable = [f"http://127.0.0.1:{port}/v1", f"http://2130706433:{port}/v1", f"http://0x7f000001:{port}/v1",
                 f"http://[::ffff:127.0.0.1]:{port}/v1"]
    for url in reachable:
        reply = chat(local_gw, {"model": "openai/echo", "messages": USER, "base_url": url, "api_key": "sk-client"})
        assert reply.status == 200, (url, reply.text)
    assert len(records(upstream)) == len(reachable)
    assert all(r["headers"].get("Authorization") == "Bearer sk-client" for r in records(upstream))


@pytest.fixture(scope="module")
def internal_service() -> Iterator[str]:
    """A loopback service that is not OpenAI-compatible and puts a secret in its error page."""

    class Handler(http_server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            page = f"<html><body><h1>Admin console</h1><p>session token {SECRET}</p></body></html>".encode()
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

    server = http_server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_non_openai_service_body_is_never_reflected(local_gw: Proc, internal_service: str) -> None:
    for stream in (False, True):
        reply = chat(local_gw, {"model": "openai/echo", "messages": USER, "stream": stream,
                                "base_url": internal_service, "api_key": "sk-client"})
        assert reply.status == 404, reply.text
        assert SECRET not in reply.text and "Admin console" not in reply.text
        assert "not OpenAI-compatible" in error_of(reply)["message"]


# ---------------------------------------------------------------- 2. memory budget


@pytest.fixture(scope="module")
def budget_gw(log_dir: Path, upstream: Proc) -> Iterator[Proc]:
    proc = start_gateway(log_dir, env_for(upstream, ACORE_MAX_INFLIGHT_BYTES=str(96 << 20)))
    yield proc
    proc.stop()


def test_memory_budget_refuses_bodies_past_it(budget_gw: Proc, upstream: Proc) -> None:
    """20 concurrent 30 MB bodies: the budget (96 MB) takes a few, the rest get 503 + Retry-After before
    their body is read, and the gateway's memory stays bounded (it grew ~2.6 GB before)."""
    body = json.dumps({"model": "openai/tool", "messages": [{"role": "user", "content": "x" * (30 << 20)}]}).encode()
    process = psutil.Process(budget_gw.process.pid)
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    replies: list[http.Reply] = []

    def send() -> None:
        try:
            replies.append(http.post(budget_gw.url + "/v1/chat/completions", content=body, timeout=30))
        except OSError:  # refused early: the gateway answered while the body was still being sent
            replies.append(http.Reply(0, http.Headers(), b""))

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=send) for _ in range(20)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(30)
    done.set()
    sampler.join()
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) >= 1, statuses
    busy = [r for r in replies if r.status == 503]
    assert busy, statuses
    assert all(r.headers.get("Retry-After") for r in busy)
    assert error_of(busy[0])["code"] == "server_busy"
    assert set(statuses) <= {0, 200, 503}, statuses
    grown = peak[0] - baseline
    assert grown < 1 << 30, f"the gateway grew {grown >> 20} MB for 20 x 30 MB bodies"
    assert chat(budget_gw, {"model": "openai/echo", "messages": USER}).status == 200  # budget given back
    scraped = http.get(budget_gw.url + "/metrics").text
    assert metric(scraped, "acore_refused_total", reason="memory_budget") >= len(busy)
    assert metric(scraped, "acore_inflight_request_bytes") == 0  # every request gave its bytes back
    clear_records(upstream)


# ---------------------------------------------------------------- 3. connections


@pytest.fixture(scope="module")
def slow_gw(log_dir: Path, upstream: Proc) -> Iterator[Proc]:
    proc = start_gateway(log_dir, env_for(upstream), extra_args=["--header-timeout", "2"])
    yield proc
    proc.stop()


def port_of(gw: Proc) -> int:
    port = urlsplit(gw.url).port
    assert port is not None
    return port


def read_answer(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def parse_answer(data: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_slow_headers_get_408_while_normal_requests_work(slow_gw: Proc) -> None:
    port = port_of(slow_gw)
    slow = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # a byte every half second on every slow connection (slowloris)
        while not stop.is_set():
            for sock in slow:
                try:
                    sock.sendall(b"x")
                except OSError:
                    pass
            time.sleep(0.5)

    dripper = threading.Thread(target=trickle)
    dripper.start()
    try:
        for _ in range(10):  # meanwhile, ordinary requests are served
            assert http.get(slow_gw.url + "/health", timeout=10).status == 200
        answers = [read_answer(sock) for sock in slow]
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()
    for data in answers:
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        status, body = parse_answer(data)
        assert status == 408 and body["error"]["code"] == "request_timeout"
    assert metric(http.get(slow_gw.url + "/metrics").text, "acore_refused_total", reason="header_timeout") >= 30


def test_connections_past_the_cap_are_refused_at_once(log_dir: Path, upstream: Proc) -> None:
    gw = start_gateway(log_dir, env_for(upstream), extra_args=["--max-connections", "16"])
    held: list[socket.socket] = []
    try:
        established = HTTPConnection("127.0.0.1", port_of(gw), timeout=10)
        established.request("GET", "/health")
        first_answer = established.getresponse()
        assert first_answer.status == 200 and first_answer.read()
        refused = None
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port_of(gw)))
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # a request that has not finished its headers
            sock.settimeout(0.3)
            try:
                first = sock.recv(65536)
            except TimeoutError:
                held.append(sock)
                continue
            refused = first + read_answer(sock, 5)
            sock.close()
            break
        assert refused is not None, "no connection was refused"
        assert len(held) <= 16
        status, body = parse_answer(refused)
        assert status == 503 and body["error"]["code"] == "too_many_connections"
        assert b"Retry-After: 1" in refused
        established.request("GET", "/health")  # the established client keeps working
        again = established.getresponse()
        assert again.status == 200 and again.read()
        established.request("GET", "/metrics")  # and an operator sees the cap at work
        scraped = established.getresponse().read().decode()
        assert metric(scraped, "acore_refused_total", reason="max_connections") >= 1
        assert metric(scraped, "acore_open_connections") == len(held) + 1
        established.close()
    finally:
        for sock in held:
            sock.close()
        gw.stop()


# ---------------------------------------------------------------- 4. stall timeout


def test_stalled_stream_ends_at_the_request_timeout(local_gw: Proc) -> None:
    reply = chat(local_gw, {"model": "openai/stall-mid", "messages": USER, "stream": True, "timeout_s": 2},
                 timeout=25)
    assert reply.status == 200
    events = reply.sse_data()
    assert events[-1] == "[DONE]"
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert len(errors) == 1 and "timed out" in errors[0]["message"]


# ---------------------------------------------------------------- 5. no unsafe retries


def test_post_reaches_the_upstream_once_when_it_hangs_up(local_gw: Proc, upstream: Proc) -> None:
    clear_records(upstream)
    reply = chat(local_gw, {"model": "openai/hangup", "messages": USER})
    assert reply.status == 502, reply.text
    assert error_of(reply)["code"] == "upstream_unreachable"
    assert [r["body"]["model"] for r in records(upstream)] == ["hangup"]


# ---------------------------------------------------------------- 6. aiohttp's own errors as error objects


def raw_request(gw: Proc, data: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port_of(gw))) as sock:
        sock.sendall(data)
        return parse_answer(read_answer(sock, 10))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_low_level_errors_are_error_objects(local_gw: Proc, path: str) -> None:
    line = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    cases = {
        "64 KB header": line + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n",
        "200 headers": line + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        "duplicate Host": line + b"Host: other\r\nContent-Length: 0\r\n\r\n",
    }
    for name, data in cases.items():
        status, body = raw_request(local_gw, data)
        assert status in (400, 413, 431), (name, status)
        if path == "/v1/messages":
            assert body["type"] == "error" and body["error"]["message"], (name, body)
        else:
            assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error", (name, body)
    assert http.get(local_gw.url + "/health").status == 200


# ---------------------------------------------------------------- 7. ordinary files


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(("name", "make", "mime", "expected"), [
    ("owner.pdf", files.owner_password_pdf, "application/pdf", "Owner locked text"),
    ("Info.plist", files.doctype_plist, "application/xml", "<string>Zebra</string>"),
    ("page.xhtml", files.doctype_xhtml, "application/xhtml+xml", "Hello page"),
    ("export.csv", files.long_cell_csv, "text/csv", "| 2 | short note |"),
    ("dump.csv", lambda: files.long_cell_csv(9_000_000), "text/csv", "| 2 | short note |"),
])
def test_ordinary_documents_reach_upstream_as_text(local_gw: Proc, upstream: Proc, name: str, make: Any,
                                                   mime: str, expected: str) -> None:
    clear_records(upstream)
    part = {"type": "file", "file": {"file_data": data_url(make(), mime), "filename": name}}
    reply = chat(local_gw, {"model": "openai/echo", "messages": [{"role": "user", "content": [part]}]}, timeout=60)
    assert reply.status == 200, reply.text
    text = records(upstream)[-1]["body"]["messages"][-1]["content"][0]["text"]
    assert expected in text
    if name.endswith(".csv"):
        assert "were cut" in text and len(text) < 40_000


@pytest.mark.parametrize(("width", "height"), [(9000, 6800), (16384, 12288)])  # 61 MP and 201 MP
def test_large_photos_reach_upstream_reduced(local_gw: Proc, upstream: Proc, width: int, height: int) -> None:
    clear_records(upstream)
    part = {"type": "image_url", "image_url": {"url": data_url(files.gray_jpeg(width, height), "image/jpeg")}}
    reply = chat(local_gw, {"model": "openai/echo", "messages": [{"role": "user", "content": [part]}]}, timeout=60)
    assert reply.status == 200, reply.text
    url = records(upstream)[-1]["body"]["messages"][-1]["content"][0]["image_url"]["url"]
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        assert max(image.size) == 2048


def test_pixel_bombs_still_refused(local_gw: Proc) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(files.pixel_bomb_png(), "image/png")}}
    reply = chat(local_gw, {"model": "openai/echo", "messages": [{"role": "user", "content": [part]}]})
    assert reply.status == 413, reply.text


# ---------------------------------------------------------------- 8. worker socket cleanup


def test_worker_socket_and_directory_removed_even_after_a_crash(log_dir: Path, tmp_path: Path,
                                                                 upstream: Proc) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = env_for(upstream, XDG_RUNTIME_DIR=str(runtime))
    gw = start_gateway(log_dir, env)
    folder = next(runtime.glob("acore-*"))
    assert (folder / "workers.sock").exists()
    assert gw.stop() == 0
    assert list(runtime.iterdir()) == []
    # A crashed run left its socket behind: the next start detects it is dead and takes the place.
    port = free_port()
    stale = runtime / f"{folder.name.rsplit('-', 1)[0]}-{port}"
    stale.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale / "workers.sock"))  # bound, never listening, closed without unlink
    gw = start_gateway_on(log_dir, env, port)
    assert "left behind" in gw.log()
    assert gw.stop() == 0
    assert list(runtime.iterdir()) == []


def start_gateway_on(log_dir: Path, env: dict[str, str], port: int) -> Proc:
    from tests.procs import start

    return start(["-m", "gateway", "--port", str(port), "--no-default-embeddings"], port=port, log_dir=log_dir,
                 name="gateway", env={"ACORE_LOG_DIR": str(log_dir / f"gateway-{port}-logs"), **env})
