"""POST /v1/embeddings through a real gateway.

Two halves:
- route behaviour against the fake OpenAI upstream (`openai/text-embedding-3-small`): validation,
  encodings, `dimensions`, token-id pass-through, base_url policy;
- the embedded default: a gateway started *with* default embeddings runs a real
  sentence-transformers worker on the packaged all-MiniLM-L6-v2 (skipped until the worker
  pool and loop exist, or when the embeddings extra is not installed).
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import psutil
import pytest

from tests import http
from tests.http import Headers, Reply, clear_records, records
from tests.procs import Proc, free_port, start

FAKE_MODEL = "openai/text-embedding-3-small"
LOCAL_MODEL = "huggingface/sentence-transformers/all-MiniLM-L6-v2"


def post(url: str, body: Any) -> Reply:
    """A raw POST /v1/embeddings (no client library to trust)."""
    return http.post(url + "/v1/embeddings", body, timeout=60)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def assert_error(response: Reply, status: int, param: str | None = None, contains: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    assert contains in error["message"], error
    return error


def decode_base64(item: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(item), dtype="<f4")


# --------------------------------------------------------------------------- route, fake upstream


def test_float_default_shape_usage_and_model_echo(gateway: Proc) -> None:
    response = post(gateway.url, {"model": FAKE_MODEL, "input": ["alpha", "beta", "gamma"]})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "list" and data["model"] == FAKE_MODEL
    assert [item["index"] for item in data["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 8 for item in data["data"])
    assert data["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_float_and_base64_decode_to_the_same_vectors(gateway: Proc) -> None:
    texts = ["one", "two words", "three little words"]
    floats = post(gateway.url, {"model": FAKE_MODEL, "input": texts, "encoding_format": "float"}).json()
    encoded = post(gateway.url, {"model": FAKE_MODEL, "input": texts, "encoding_format": "base64"}).json()
    for f_item, b_item in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(b_item["embedding"], str)
        np.testing.assert_array_equal(np.asarray(f_item["embedding"], dtype=np.float32), decode_base64(b_item["embedding"]))
    # The SDK asks for base64 by default and decodes it itself.
    result = sdk(gateway.url).embeddings.create(model=FAKE_MODEL, input=texts)
    for f_item, s_item in zip(floats["data"], result.data, strict=True):
        np.testing.assert_array_equal(np.asarray(f_item["embedding"], np.float32), np.asarray(s_item.embedding, np.float32))


def test_dimensions_passed_upstream_and_enforced(gateway: Proc, fake_openai: Proc) -> None:
    clear_records(fake_openai)
    result = sdk(gateway.url).embeddings.create(model=FAKE_MODEL, input="hello", dimensions=4)
    assert records(fake_openai)[-1]["body"]["dimensions"] == 4
    # The fake ignores `dimensions` (as some servers do): the gateway truncates and re-normalises.
    vector = np.asarray(result.data[0].embedding)
    assert vector.shape == (4,)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)


def test_token_ids_pass_through_to_openai_compatible(gateway: Proc, fake_openai: Proc) -> None:
    clear_records(fake_openai)
    response = post(gateway.url, {"model": FAKE_MODEL, "input": [[1, 2, 3], [4, 5]]})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert records(fake_openai)[-1]["body"]["input"] == [[1, 2, 3], [4, 5]]
    single = post(gateway.url, {"model": FAKE_MODEL, "input": [7, 8, 9]})
    assert single.status_code == 200 and len(single.json()["data"]) == 1


@pytest.mark.parametrize(
    ("body", "param", "contains"),
    [
        ({"model": FAKE_MODEL, "input": ""}, "input", "empty string"),
        ({"model": FAKE_MODEL, "input": []}, "input", "empty list"),
        ({"model": FAKE_MODEL, "input": ["ok", ""]}, "input", "input[1]"),
        ({"model": FAKE_MODEL, "input": ["x"] * 2049}, "input", "2048"),
        ({"model": FAKE_MODEL, "input": ["x", 1]}, "input", "mixture"),
        ({"model": FAKE_MODEL, "input": [[]]}, "input", "empty list of token ids"),
        ({"model": FAKE_MODEL, "input": None}, "input", ""),
        ({"model": FAKE_MODEL}, "input", ""),
        ({"model": FAKE_MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", ""),
        ({"model": FAKE_MODEL, "input": "x", "dimensions": 0}, "dimensions", ""),
    ],
)
def test_bad_input_is_400_with_param(gateway: Proc, body: dict[str, Any], param: str, contains: str) -> None:
    assert_error(post(gateway.url, body), 400, param, contains)


def test_2048_inputs_are_accepted(gateway: Proc) -> None:
    response = post(gateway.url, {"model": FAKE_MODEL, "input": ["x"] * 2048, "encoding_format": "base64"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2048


def test_unknown_provider_is_404(gateway: Proc) -> None:
    error = assert_error(post(gateway.url, {"model": "nope/model", "input": "x"}), 404, "model")
    assert error["code"] == "model_not_found"


def test_provider_without_embeddings_is_400_naming_the_model(gateway: Proc) -> None:
    providers = http.get(gateway.url + "/providers", timeout=60).json()["providers"]
    assert "anthropic" in {p["name"] for p in providers}
    error = assert_error(post(gateway.url, {"model": "anthropic/claude-x", "input": "x"}), 400, "model")
    assert "anthropic/claude-x" in error["message"]


def test_base_url_policy(gateway: Proc, fake_openai: Proc) -> None:
    assert_error(post(gateway.url, {"model": FAKE_MODEL, "input": "x", "base_url": "http://169.254.169.254/v1"}),
                 403, "base_url")
    assert_error(post(gateway.url, {"model": FAKE_MODEL, "input": "x", "base_url": "https://example.com/v1"}),
                 403, "base_url", "ACORE_BASE_URL_ALLOWLIST")
    assert_error(post(gateway.url, {"model": FAKE_MODEL, "input": "x", "base_url": "file:///etc/passwd"}), 400, "base_url")
    # Loopback is allowed with the client's own key; the server's key never goes to a client-chosen URL.
    clear_records(fake_openai)
    assert_error(post(gateway.url, {"model": FAKE_MODEL, "input": "x", "base_url": fake_openai.url + "/v1"}),
                 400, "api_key", "own api_key")
    assert records(fake_openai) == []
    ok = post(gateway.url, {"model": FAKE_MODEL, "input": "x", "base_url": fake_openai.url + "/v1",
                            "api_key": "sk-client-own-key"})
    assert ok.status_code == 200, ok.text
    headers = {k.lower(): v for k, v in records(fake_openai)[-1]["headers"].items()}
    assert headers.get("authorization") == "Bearer sk-client-own-key"
    assert "api_key" not in records(fake_openai)[-1]["body"]


# --------------------------------------------------------------------------- the embedded default


def _embed_once(url: str) -> Reply | None:
    try:
        return http.post(url + "/v1/embeddings", {"model": LOCAL_MODEL, "input": "ready?"}, timeout=30)
    except (OSError, ValueError):  # connection refused/reset while the gateway restarts a worker
        return None


def wait_embeddings(url: str, timeout: float = 120.0) -> float:
    """Seconds until the local model answers an embeddings request."""
    start_time = time.monotonic()
    last = None
    while time.monotonic() - start_time < timeout:
        last = _embed_once(url)
        if last is not None and last.status_code == 200:
            return time.monotonic() - start_time
        time.sleep(0.25)
    raise TimeoutError(f"{LOCAL_MODEL} did not answer within {timeout}s: {last.text if last is not None else None}")


@pytest.fixture(scope="session")
def st_gateway(log_dir: Path) -> Iterator[tuple[Proc, float, float]]:
    """A gateway with its default embeddings worker: (proc, seconds to /health, seconds to first embedding)."""
    port = free_port()
    began = time.monotonic()
    proc = start(["-m", "gateway", "--port", str(port)], port=port, log_dir=log_dir, name="gateway-embeddings")
    health_s = time.monotonic() - began
    try:
        ready_s = health_s + wait_embeddings(proc.url)
    except BaseException:
        proc.stop()
        raise
    yield proc, health_s, ready_s
    proc.stop()


@pytest.fixture(scope="session")
def local(st_gateway: tuple[Proc, float, float]) -> Proc:
    return st_gateway[0]


def test_health_answers_while_the_model_loads(st_gateway: tuple[Proc, float, float]) -> None:
    _, health_s, ready_s = st_gateway
    # torch alone takes seconds to import; /health must not wait for it.
    assert health_s < ready_s
    assert health_s < 10


def test_models_lists_the_default_embeddings_model(local: Proc) -> None:
    data = http.get(local.url + "/v1/models?type=text-embedding", timeout=60).json()["data"]
    assert LOCAL_MODEL in [item["id"] for item in data]
    assert all(item.get("type") == "text-embedding" for item in data)


def test_known_similarity_pairs_rank_correctly(local: Proc) -> None:
    result = sdk(local.url).embeddings.create(
        model=LOCAL_MODEL, input=["A man is eating food.", "A man eats a meal.", "The new movie is awesome."]
    )
    assert result.model == LOCAL_MODEL
    vectors = np.asarray([item.embedding for item in result.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.8 > 0.3 > vectors[0] @ vectors[2]
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 2


def test_local_float_and_base64_identical(local: Proc) -> None:
    client = sdk(local.url)
    texts = ["first sentence", "second, longer sentence about something else"]
    as_float = client.embeddings.create(model=LOCAL_MODEL, input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model=LOCAL_MODEL, input=texts)  # the SDK default
    raw = post(local.url, {"model": LOCAL_MODEL, "input": texts, "encoding_format": "base64"}).json()
    for f_item, b_item, r_item in zip(as_float.data, as_base64.data, raw["data"], strict=True):
        f_vec = np.asarray(f_item.embedding, np.float32)
        np.testing.assert_allclose(f_vec, np.asarray(b_item.embedding, np.float32), atol=1e-6)
        np.testing.assert_allclose(f_vec, decode_base64(r_item["embedding"]), atol=1e-6)


def test_local_dimensions(local: Proc) -> None:
    client = sdk(local.url)
    full = np.asarray(client.embeddings.create(model=LOCAL_MODEL, input="dimension test").data[0].embedding)
    cut = np.asarray(client.embeddings.create(model=LOCAL_MODEL, input="dimension test", dimensions=64).data[0].embedding)
    assert cut.shape == (64,)
    np.testing.assert_allclose(cut, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)
    assert_error(post(local.url, {"model": LOCAL_MODEL, "input": "x", "dimensions": 385}), 400, "dimensions", "384")


def test_local_too_long_input(local: Proc) -> None:
    long_text = "word " * 400
    assert_error(post(local.url, {"model": LOCAL_MODEL, "input": ["fine", long_text]}), 400, "input",
                 "input 1 has 402 tokens; the model's limit is 256")
    ok = post(local.url, {"model": LOCAL_MODEL, "input": long_text, "truncate": True})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] == 256


def test_local_token_ids_are_refused(local: Proc) -> None:
    assert_error(post(local.url, {"model": LOCAL_MODEL, "input": [[101, 2023, 102]]}), 400, "input", "token ids")


def test_concurrent_requests_get_their_own_vectors_in_order(local: Proc) -> None:
    topics = ["cats", "rain", "football", "pasta", "physics", "trains", "music", "gardening"]
    requests = [[f"Request {i} item {j} talks about {topics[(i + j) % len(topics)]}." for j in range(1 + i % 3)]
                for i in range(32)]
    client = sdk(local.url)
    # One at a time first: the reference each batched answer must match.
    expected = [np.asarray([d.embedding for d in client.embeddings.create(model=LOCAL_MODEL, input=texts).data])
                for texts in requests]

    async def run() -> list[np.ndarray]:
        async with openai.AsyncOpenAI(base_url=local.url + "/v1", api_key="unused", max_retries=0, timeout=60) as aclient:
            results = await asyncio.gather(*(aclient.embeddings.create(model=LOCAL_MODEL, input=texts) for texts in requests))
        return [np.asarray([d.embedding for d in r.data]) for r in results]

    got = asyncio.run(run())
    for texts, want, have in zip(requests, expected, got, strict=True):
        assert have.shape == (len(texts), 384)
        np.testing.assert_allclose(have, want, atol=1e-4)


def _worker_processes(gateway: Proc) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(gateway.process.pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "sentence-transformers" in cmdline or "sentence_transformers" in cmdline:
            found.append(child)
    return found


def test_worker_kill_gives_a_clean_error_then_recovers(local: Proc) -> None:
    workers = _worker_processes(local)
    assert workers, "no sentence-transformers worker process under the gateway"
    # Enough work to be in the worker when it dies (seconds), little enough to finish within the
    # pool's idle timeout when the request fails over to the restarted worker on a loaded box.
    big = {"model": LOCAL_MODEL, "input": [f"sentence {i} " * 10 for i in range(512)], "encoding_format": "base64"}

    async def send(session: aiohttp.ClientSession) -> Reply:
        async with session.post(local.url + "/v1/embeddings", json=big) as answer:
            return Reply(answer.status, Headers(answer.headers), await answer.read())

    async def run() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            pending = asyncio.ensure_future(send(session))
            await asyncio.sleep(1.0)  # by now the worker is encoding the 512 inputs
            for worker in workers:
                worker.send_signal(signal.SIGKILL)
            return await pending

    response = asyncio.run(run())
    # A clean OpenAI error, or (the pool fails over to the restarted worker) real vectors: never zeros.
    if response.status_code == 200:
        items = response.json()["data"]
        assert len(items) == 512
        assert all(np.any(decode_base64(item["embedding"])) for item in items)
    else:
        assert response.status_code in (500, 502, 503), response.text
        error = response.json()["error"]
        assert error["message"] and error["type"] in ("server_error", "api_error", "service_unavailable_error")
    failed = _embed_once(local.url)
    if failed is not None and failed.status_code != 200:
        assert "error" in failed.json()
    assert wait_embeddings(local.url, timeout=120) < 120
    ok = sdk(local.url).embeddings.create(model=LOCAL_MODEL, input="back again")
    assert len(ok.data[0].embedding) == 384 and any(v != 0 for v in ok.data[0].embedding)
    assert _worker_processes(local) and {p.pid for p in _worker_processes(local)} != {p.pid for p in workers}
