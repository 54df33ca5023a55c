"""An MLX worker through a real gateway (`--worker mlx:DIR`), driven with the official openai SDK.

The model is the tiny random llama built by workers/mlx_tiny.py in a temporary directory; it runs
on mlx[cpu] on Linux. Its text is gibberish, so the tests compare outputs with each other and with
mlx-lm itself, never with expected words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx_lm
import openai
import pytest
from mlx_lm.sample_utils import make_sampler

from tests import http
from tests.procs import Proc, start_gateway
from workers.mlx_tiny import write_tiny_mlx_model

NAME = "tiny-mlx"
MODEL = f"mlx/{NAME}"
SYSTEM = "You are a helpful assistant. Please write a short story about a cat and a dog. " * 10
CHAT: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello world, how are you?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mlx_model(tmp_path_factory.mktemp("mlx") / NAME)


@pytest.fixture(scope="module")
def mlx_gateway(log_dir: Path, model_dir: Path) -> Iterator[Proc]:
    proc = start_gateway(log_dir, extra_args=["--worker", f"mlx:{model_dir}"], timeout=60)
    try:
        wait_for_model(proc.url, MODEL, timeout=90)
        yield proc
    finally:
        proc.stop()


def models(url: str) -> dict[str, Any]:
    return {m["id"]: m for m in http.get_json(url + "/v1/models", timeout=5)["data"]}


def wait_for_model(url: str, model: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if models(url).get(model, {}).get("workers"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{model} did not appear in /v1/models within {timeout}s")


@pytest.fixture(scope="module")
def client(mlx_gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=mlx_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def stream_text(client: openai.OpenAI, messages: list[Any], **kwargs: Any) -> tuple[str, list[str], Any, str]:
    """Joined text, the content deltas, the usage and the finish_reason of one streamed completion."""
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("temperature", 0.0)
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **kwargs)
    deltas, usage, finish = [], None, ""
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return "".join(deltas), deltas, usage, finish


def reference(model_dir: Path, messages: list[Any], max_tokens: int) -> str:
    """Greedy text of mlx-lm's own stream_generate, in this process, with no prompt cache."""
    model, tokenizer = mlx_lm.load(str(model_dir))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return "".join(r.text for r in mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=max_tokens,
                                                          sampler=make_sampler(temp=0.0)))


def test_listed_with_context_length(mlx_gateway: Proc) -> None:
    entry = models(mlx_gateway.url)[MODEL]
    assert entry["context_length"] == 4096


def test_streaming_equals_mlx_lm_and_non_streaming(client: openai.OpenAI, model_dir: Path) -> None:
    text, deltas, usage, finish = stream_text(client, CHAT, max_tokens=40)
    assert finish == "length"
    assert len(deltas) > 1  # streamed in pieces, not one final blob
    assert usage.completion_tokens == 40

    reference_text = reference(model_dir, CHAT, 40)
    assert text == reference_text
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=40, temperature=0.0)
    assert whole.choices[0].message.content == reference_text
    assert whole.usage.prompt_tokens == usage.prompt_tokens
    assert whole.choices[0].finish_reason == "length"


def test_parameters(client: openai.OpenAI) -> None:
    seeded = {"temperature": 1.0, "top_p": 0.9, "seed": 11, "max_tokens": 30}
    a = stream_text(client, CHAT, **seeded)[0]
    b = stream_text(client, CHAT, **seeded)[0]
    c = stream_text(client, CHAT, **{**seeded, "seed": 12})[0]
    greedy = stream_text(client, CHAT, max_tokens=30)[0]
    assert a == b and a != c and a != greedy
    assert stream_text(client, CHAT, max_tokens=30, extra_body={"repeat_penalty": 5.0})[0] != greedy
    assert stream_text(client, CHAT, **{**seeded, "extra_body": {"min_p": 0.5}})[0] != a

    _, _, usage, finish = stream_text(client, CHAT, max_tokens=5)
    assert (usage.completion_tokens, finish) == (5, "length")

    stop = a[12:15]
    cut = a.find(stop)
    text, _, _, finish = stream_text(client, CHAT, **seeded, stop=["never", stop])
    assert (text, finish) == (a[:cut], "stop")


def test_abort_frees_the_worker(client: openai.OpenAI, mlx_gateway: Proc, model_dir: Path) -> None:
    eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    # EOS biased off: the random model must not end this generation by itself
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                                            max_tokens=4000, temperature=0.0, logit_bias={str(eos): -100})
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 3:
            break
    stream.close()  # the HTTP connection closes: the gateway must send Abort to the worker
    # The worker has one slot: had the 4,000-token generation gone on (over 8 s at this model's
    # best speed here), this short request would wait for it.
    started = time.monotonic()
    assert stream_text(client, CHAT, max_tokens=3)[3] == "length"
    assert time.monotonic() - started < 3.0
    assert models(mlx_gateway.url)[MODEL]["active"] == 0


def test_prompt_cache_reuse_identical_output(client: openai.OpenAI, model_dir: Path) -> None:
    cold, _, first, _ = stream_text(client, CHAT, max_tokens=30, extra_body={"prompt_cache_key": "it-s1"})
    warm, _, second, _ = stream_text(client, CHAT, max_tokens=30, extra_body={"prompt_cache_key": "it-s1"})
    assert warm == cold
    assert second.prompt_tokens_details.cached_tokens == second.prompt_tokens - 1

    turn2 = [*CHAT, {"role": "assistant", "content": cold}, {"role": "user", "content": "And then?"}]
    cached, _, third, _ = stream_text(client, turn2, max_tokens=30, extra_body={"prompt_cache_key": "it-s1"})
    assert third.prompt_tokens_details.cached_tokens >= first.prompt_tokens
    assert cached == reference(model_dir, turn2, 30)  # mlx-lm from scratch, no cache at all


def call(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A plain HTTP call to the control plane (AbstractCore's routes are not in the SDK): the status and
    the JSON body (None when empty)."""
    reply = http.request("POST" if body is not None else "GET", url + path, body, timeout=60)
    return reply.status, reply.body


def test_control_plane_through_the_gateway(client: openai.OpenAI, mlx_gateway: Proc, model_dir: Path) -> None:
    url = mlx_gateway.url
    assert call(url, "/acore/prompt_cache/update", {"model": MODEL, "key": "cp-base", "system_prompt": SYSTEM})[0] == 200
    assert call(url, "/acore/prompt_cache/fork", {"model": MODEL, "from_key": "cp-base", "to_key": "cp-a"})[0] == 200
    status, body = call(url, "/acore/prompt_cache/fork", {"model": MODEL, "from_key": "cp-base", "to_key": "cp-a"})
    assert status == 409, body
    assert call(url, "/acore/prompt_cache/fork", {"model": MODEL, "from_key": "cp-nope", "to_key": "cp-b"})[0] == 404

    status, stats = call(url, f"/acore/prompt_cache/stats?model={MODEL}")
    assert status == 200 and stats["supported"]
    meta = stats["stats"]["meta_by_key"]
    assert meta["cp-a"]["forked_from"] == "cp-base"
    base_tokens = meta["cp-base"]["token_count"]

    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about the king."}]
    text, _, usage, _ = stream_text(client, msgs, max_tokens=20, extra_body={"prompt_cache_key": "cp-a"})
    assert usage.prompt_tokens_details.cached_tokens >= base_tokens
    assert text == reference(model_dir, msgs, 20)

    before = call(url, f"/acore/prompt_cache/stats?model={MODEL}")[1]["stats"]
    freed = before["meta_by_key"]["cp-a"]["bytes"]
    assert call(url, "/acore/prompt_cache/clear", {"model": MODEL, "key": "cp-a"})[0] == 200
    after = call(url, f"/acore/prompt_cache/stats?model={MODEL}")[1]["stats"]
    assert "cp-a" not in after["keys"]
    assert after["bytes"] <= before["bytes"] - freed
    assert call(url, "/acore/prompt_cache/clear", {"model": MODEL, "key": "cp-a"})[0] == 404
