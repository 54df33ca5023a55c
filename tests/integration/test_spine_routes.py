"""The gateway's other routes and habits: models, providers, health, auth, logs, docs, media, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.http import Headers
from tests.procs import REPO, Proc, base_env, free_port, start_gateway

USER = [{"role": "user", "content": "x"}]


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, Headers, bytes]:
    reply = http.request(method, url, body, headers=headers, timeout=timeout)
    return reply.status, reply.headers, reply.raw


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    reply = http.get(url, headers=headers)
    return reply.status, reply.json()


# ---------------------------------------------------------------- models, providers, health


@pytest.fixture(scope="module")
def mixed(log_dir: Path, fake_openai: Proc) -> Iterator[Proc]:
    """openai reachable, vllm at a closed port, openrouter without a key."""
    proc = start_gateway(log_dir, {
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_API_KEY": "sk-test-server-key-123456",
        "VLLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "OPENROUTER_BASE_URL": fake_openai.url + "/v1",
        "LMSTUDIO_BASE_URL": fake_openai.url + "/v1",
    })
    yield proc
    proc.stop()


def test_health(gateway: Proc) -> None:
    assert get_json(gateway.url + "/health") == (200, {"status": "healthy"})


def test_models_aggregated_and_filtered(mixed: Proc) -> None:
    status, listing = get_json(mixed.url + "/v1/models")
    assert status == 200 and listing["object"] == "list"
    ids = {m["id"] for m in listing["data"]}
    assert {"openai/echo", "openai/tool", "lmstudio/echo", "openai/text-embedding-3-small"} <= ids
    assert not any(i.startswith(("vllm/", "openrouter/")) for i in ids)  # unreachable / no key
    assert all(m["object"] == "model" for m in listing["data"])

    _, only = get_json(mixed.url + "/v1/models?provider=lmstudio")
    assert {m["id"] for m in only["data"]} == {"lmstudio/echo", "lmstudio/tool", "lmstudio/text-embedding-3-small"}
    _, embeddings = get_json(mixed.url + "/v1/models?type=text-embedding")
    assert embeddings["data"] and all(m["type"] == "text-embedding" for m in embeddings["data"])
    assert "openai/text-embedding-3-small" in {m["id"] for m in embeddings["data"]}
    _, text = get_json(mixed.url + "/v1/models?type=text-generation&provider=openai")
    assert {m["id"] for m in text["data"]} == {"openai/echo", "openai/tool"}

    status, bad = get_json(mixed.url + "/v1/models?type=images")
    assert status == 400 and bad["error"]["param"] == "type"
    status, bad = get_json(mixed.url + "/v1/models?provider=nosuch")
    assert status == 400 and bad["error"]["param"] == "provider"


def test_models_through_sdk(mixed: Proc) -> None:
    client = openai.OpenAI(base_url=mixed.url + "/v1", api_key="x", max_retries=0)
    assert "openai/echo" in {m.id for m in client.models.list()}


def test_providers_states(mixed: Proc) -> None:
    status, listing = get_json(mixed.url + "/providers")
    assert status == 200
    by_name = {p["name"]: p for p in listing["providers"]}
    assert by_name["openai"]["status"] == "available" and by_name["openai"]["model_count"] == 3
    assert by_name["vllm"]["status"] == "unreachable" and by_name["vllm"]["model_count"] == 0
    assert by_name["openrouter"]["status"] == "no_api_key"
    assert "OPENROUTER_API_KEY" in by_name["openrouter"]["detail"]
    assert listing["total_providers"] == len(listing["providers"])


# ---------------------------------------------------------------- docs, media, websocket probe


def test_docs_and_redoc_assets_served_locally(gateway: Proc) -> None:
    for page in ("/docs", "/redoc"):
        status, headers, html = call("GET", gateway.url + page)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.decode())
        assert assets, html
        for asset in assets:
            assert asset.startswith("/"), f"{page} references a non-local asset {asset}"
            status, _, content = call("GET", gateway.url + asset)
            assert status == 200 and len(content) > 1000, asset


def test_openapi_document(gateway: Proc) -> None:
    status, document = get_json(gateway.url + "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in schema["properties"] and "messages" in schema["required"]
    assert "/v1/chat/completions" in document["paths"]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions",
                                  "/v1/audio/speech"])
def test_media_routes_answer_error_objects(gateway: Proc, path: str) -> None:
    # The routes are served (tests/integration/test_media_routes.py); a model without a provider is a 404.
    status, _, payload = call("POST", gateway.url + path, {"model": "x", "prompt": "y"})
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert status in (400, 404), payload


def test_websocket_responses_probe_426(gateway: Proc) -> None:
    status, headers, payload = call("GET", gateway.url + "/v1/responses", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "OpenAI-Beta": "responses_websockets=2026-02-06"},
        timeout=5)
    assert status == 426
    assert headers.get("Upgrade") == "websocket"
    assert json.loads(payload)["error"]["code"] == "websocket_not_supported"


# ---------------------------------------------------------------- gateway auth


@pytest.mark.parametrize("variable", ["ACORE_API_KEY", "ABSTRACTCORE_API_KEY", "ABSTRACTCORE_AUTH_TOKEN"])
def test_gateway_key_required(fake_openai: Proc, tmp_path: Path, variable: str) -> None:
    proc = start_gateway(tmp_path, {variable: "gw-secret-key-42", "OPENAI_BASE_URL": fake_openai.url + "/v1",
                                    "OPENAI_API_KEY": "sk-test-server-key-123456"})
    try:
        assert get_json(proc.url + "/health")[0] == 200
        body = {"model": "openai/echo", "messages": USER}
        for path, method, payload in [("/v1/models", "GET", None), ("/providers", "GET", None),
                                      ("/v1/chat/completions", "POST", body), ("/openapi.json", "GET", None),
                                      ("/v1/images/generations", "POST", {})]:
            status, headers, answer = call(method, proc.url + path, payload)
            assert status == 401, path
            assert headers.get("WWW-Authenticate") == "Bearer"
            assert json.loads(answer)["error"]["type"] == "authentication_error"
            status, _, _ = call(method, proc.url + path, payload, headers={"Authorization": "Bearer wrong-key"})
            assert status == 401, path
        status, _, answer = call("POST", proc.url + "/v1/chat/completions", body,
                                 headers={"Authorization": "Bearer gw-secret-key-42"})
        assert status == 200, answer
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="gw-secret-key-42", max_retries=0)
        assert client.chat.completions.create(model="openai/echo", messages=USER).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.stop()


# ---------------------------------------------------------------- debug logs


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_debug_log_line_per_request_with_secrets_redacted(fake_openai: Proc, tmp_path: Path) -> None:
    proc = start_gateway(tmp_path, {"OPENAI_BASE_URL": fake_openai.url + "/v1",
                                    "OPENAI_API_KEY": "sk-server-secret-abcdef123456"}, extra_args=["--debug"])
    try:
        ok = call("POST", proc.url + "/v1/chat/completions", {"model": "openai/echo", "messages": USER},
                  headers={"x-request-id": "log-req-1", "X-Provider-API-Key": "sk-client-provided-zyx987654"})
        assert ok[0] == 200
        bad = call("POST", proc.url + "/v1/chat/completions",
                   {"model": "openai/echo", "messages": USER, "api_key": "sk-body-key-qwerty123456", "n": 10**9},
                   headers={"x-request-id": "log-req-2", "Authorization": "Bearer client-bearer-secret-55555"})
        assert bad[0] == 400
        streamed = call("POST", proc.url + "/v1/chat/completions",
                        {"model": "openai/echo", "messages": USER, "stream": True},
                        headers={"x-request-id": "log-req-3"})
        assert streamed[0] == 200
    finally:
        assert proc.stop() == 0
    text = proc.log()
    for secret in ("sk-server-secret-abcdef123456", "sk-client-provided-zyx987654", "sk-body-key-qwerty123456",
                   "client-bearer-secret-55555"):
        assert secret not in text
    entries = {e["request_id"]: e for e in log_lines(proc) if e.get("request_id")}
    first = entries["log-req-1"]
    assert first["provider"] == "openai" and first["model"] == "echo" and first["status"] == 200
    assert isinstance(first["duration_ms"], float | int)
    assert entries["log-req-2"]["status"] == 400
    assert entries["log-req-3"]["status"] == 200 and entries["log-req-3"]["stream"] is True


def test_abstractcore_debug_env(gateway: Proc) -> None:
    call("POST", gateway.url + "/v1/chat/completions", {"model": "openai/echo", "messages": USER},
         headers={"x-request-id": "env-debug-1"})
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(e.get("request_id") == "env-debug-1" for e in log_lines(gateway)):
            break
        time.sleep(0.05)
    else:
        pytest.fail("no log line for the request with ABSTRACTCORE_DEBUG=1")
    assert "sk-test-server-key-123456" not in gateway.log()


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", [["-m", "gateway", "--help"], ["-m", "gateway.cli.gateway", "--help"]])
def test_help(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=base_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--debug", "--config"):
        assert flag in result.stdout


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "acore-gateway"
    assert script.exists(), "acore-gateway is not installed in .venv (scripts/setup installs it)"
    result = subprocess.run([str(script), "--help"], env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--port" in result.stdout


def test_bad_config_file_is_a_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nno_such_limit = 1\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "--port", str(free_port())],
                            cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no_such_limit" in result.stderr and "Traceback" not in result.stderr
