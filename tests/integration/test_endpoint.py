"""acore-endpoint: one real llama.cpp worker on the tiny GGUF behind the gateway's HTTP layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.procs import Proc, free_port, start


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.tiny_models import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", context_length=4096)


def get(url: str) -> Any:
    return http.get_json(url, timeout=30)


def wait_worker(proc: Proc) -> None:
    # /v1/models lists the model while it loads (state "loading"); a test reading its details
    # waits for the worker to join.
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(m.get("state") == "ready" for m in get(proc.url + "/v1/models")["data"]):
            return
        time.sleep(0.1)
    raise AssertionError("the endpoint's worker did not join:\n" + proc.log()[-3000:])


@pytest.fixture(scope="module")
def endpoint(log_dir: Path, gguf_path: Path) -> Iterator[Proc]:
    port = free_port()
    # A cloud key in the environment must not make cloud models appear on the endpoint.
    proc = start(["-m", "gateway.cli.endpoint", "--provider", "llamacpp", "--model", str(gguf_path), "--name", "solo",
                  "--port", str(port), "--threads", "1"], port=port, log_dir=log_dir, name="endpoint",
                 env={"OPENAI_API_KEY": "sk-test-not-used-123456"})
    try:
        wait_worker(proc)
        yield proc
    finally:
        proc.stop()


def test_serves_any_model_name_and_echoes_it(endpoint: Proc) -> None:
    client = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    for name in ("whatever-you-like", "openai/gpt-4o"):
        answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=4, temperature=0)
        assert answer.model == name
        assert answer.usage is not None and answer.usage.completion_tokens == 4
    stream = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=4, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks and all(c.model == "x" for c in chunks)


def test_lists_its_one_model_and_health(endpoint: Proc) -> None:
    data = get(endpoint.url + "/v1/models")["data"]
    assert [m["id"] for m in data] == ["llamacpp/solo"]
    assert get(endpoint.url + "/health")["status"] == "healthy"
    port = endpoint.url.rsplit(":", 1)[1]
    # The worker socket is derived from the endpoint's own port, never the gateway's 8000.
    assert f"-{port}/workers.sock" in endpoint.log()


def test_prompt_cache_plane_without_a_model(endpoint: Proc) -> None:
    body = {"key": "ep", "prompt": "the weather in the city is good today " * 20}
    response = http.post(endpoint.url + "/acore/prompt_cache/update", body, timeout=30)
    assert response.status == 200, response.raw
    assert response.json()["ok"] is True
    stats = get(endpoint.url + "/acore/prompt_cache/stats")
    assert stats["supported"] is True and "ep" in stats["stats"]["keys"]
    assert stats["stats"]["meta_by_key"]["ep"]["token_count"] > 100


def test_environment_form(log_dir: Path, gguf_path: Path) -> None:
    port = free_port()
    env = {"ABSTRACTENDPOINT_PROVIDER": "llamacpp", "ABSTRACTENDPOINT_MODEL": str(gguf_path),
           "ABSTRACTENDPOINT_HOST": "127.0.0.1", "ABSTRACTENDPOINT_PORT": str(port)}
    proc = start(["-m", "gateway.cli.endpoint"], port=port, log_dir=log_dir, name="endpoint-env", env=env)
    try:
        wait_worker(proc)
        assert [m["id"] for m in get(proc.url + "/v1/models")["data"]] == ["llamacpp/tiny"]
    finally:
        proc.stop()
