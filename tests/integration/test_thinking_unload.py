"""`thinking` mapped per provider, and `unload_after` (opt-in for Ollama, reference-counted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.http import clear_records, records
from tests.native import (
    Fakes,
    client,
    native_env,
    wait_for,
)
from tests.procs import Proc, start_gateway

# The fake upstreams and gateways (fixtures: fakes, fresh, native_gateway).
pytest_plugins = ["tests.native_fixtures"]

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def unload_gateway(log_dir: Path, fakes: Fakes, fake_openai: Proc) -> Iterator[Proc]:
    env = native_env(fakes, {"ABSTRACTCORE_ALLOW_UNSAFE_UNLOAD_AFTER": "1", "OPENAI_API_KEY": "sk-openai-test-key-1",
                             "OPENAI_BASE_URL": fake_openai.url + "/v1", "VLLM_BASE_URL": fake_openai.url + "/v1"})
    proc = start_gateway(log_dir, env)
    yield proc
    proc.stop()


def unloads(fakes: Fakes) -> list[dict]:
    return [r["body"] for r in records(fakes.ollama) if r["path"] == "/api/generate"]


def test_unload_after_refused_for_ollama_by_default(native_gateway: Proc, fresh: Fakes) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(native_gateway).chat.completions.create(model="ollama/llama-text", messages=MESSAGES,
                                                        extra_body={"unload_after": True})
    assert "ABSTRACTCORE_ALLOW_UNSAFE_UNLOAD_AFTER" in refused.value.message
    assert records(fresh.ollama) == []


def test_unload_after_non_streaming(unload_gateway: Proc, fresh: Fakes) -> None:
    client(unload_gateway).chat.completions.create(model="ollama/llama-text", messages=MESSAGES,
                                                   extra_body={"unload_after": True})
    assert wait_for(lambda: unloads(fresh)) == [{"model": "llama-text", "keep_alive": 0}]


def test_unload_after_stream_waits_for_stream_end(unload_gateway: Proc, fresh: Fakes) -> None:
    stream = client(unload_gateway).chat.completions.create(
        model="ollama/llama-slow", messages=MESSAGES, stream=True, max_tokens=8, extra_body={"unload_after": True})
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 2:
            assert unloads(fresh) == [], "unloaded while the stream was still running"
    assert wait_for(lambda: unloads(fresh)) == [{"model": "llama-slow", "keep_alive": 0}]


def test_unload_waits_for_last_in_flight_request(unload_gateway: Proc, fresh: Fakes) -> None:
    api = client(unload_gateway)
    done = threading.Event()

    def long_request() -> None:
        api.chat.completions.create(model="ollama/llama-slow", messages=MESSAGES, max_tokens=15,
                                    extra_body={"unload_after": True})
        done.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        assert wait_for(lambda: [r for r in records(fresh.ollama) if r["path"] == "/api/chat"])
        # A short request on the same model finishes first: the long one still needs the model.
        api.chat.completions.create(model="ollama/llama-slow", messages=MESSAGES, max_tokens=1,
                                    extra_body={"unload_after": True})
        time.sleep(0.3)
        assert not done.is_set() and unloads(fresh) == []
    finally:
        worker.join(30)
    assert wait_for(lambda: unloads(fresh)) == [{"model": "llama-slow", "keep_alive": 0}]
    time.sleep(0.3)
    assert len(unloads(fresh)) == 1


def test_unload_after_on_hosted_api_is_a_notice(unload_gateway: Proc, fresh: Fakes) -> None:
    raw = client(unload_gateway).chat.completions.with_raw_response.create(
        model="anthropic/claude-text", messages=MESSAGES, extra_body={"unload_after": True})
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert "unload_after ignored" in raw.headers.get("x-acore-notice", "")


def test_thinking_for_openai_compatible_presets(unload_gateway: Proc, fake_openai: Proc) -> None:
    clear_records(fake_openai)
    api = client(unload_gateway)
    raw = api.chat.completions.with_raw_response.create(model="openai/echo", messages=MESSAGES,
                                                         extra_body={"thinking": "on"})
    assert "reasoning_effort=medium" in raw.headers.get("x-acore-notice", "")
    api.chat.completions.create(model="openai/echo", messages=MESSAGES, extra_body={"thinking": "high"})
    api.chat.completions.create(model="vllm/echo", messages=MESSAGES, extra_body={"thinking": "off"})
    bodies = [r["body"] for r in records(fake_openai) if r["path"] == "/v1/chat/completions"]
    assert bodies[0]["reasoning_effort"] == "medium" and bodies[1]["reasoning_effort"] == "high"
    assert bodies[2]["chat_template_kwargs"] == {"enable_thinking": False}
    assert all("thinking" not in b for b in bodies)


def test_invalid_thinking_value_is_400(unload_gateway: Proc) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client(unload_gateway).chat.completions.create(model="ollama/llama-text", messages=MESSAGES,
                                                        extra_body={"thinking": "extreme"})
    assert bad.value.body["param"] == "thinking"
